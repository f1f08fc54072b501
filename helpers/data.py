"""Reading a prepared dataset: data/<name>/{train.bin, val.bin, meta.pkl} (helpers/prepare.py writes them),
under DATA_ROOT: the repository's data/ folder, or the one NANOGPT_DATA_DIR names.

The .bin files are flat arrays of token ids, uint16 as in nanoGPT unless meta.pkl says
'uint32' (character vocabularies above 65,535 symbols). meta.pkl is read with an unpickler
that accepts only plain data: a dataset folder downloaded from somewhere cannot run code.
"""
import os
import pickle

import numpy as np
import torch

from helpers import DATA_ROOT, SCRIPTS_ROOT, UserError, shown
PLAIN_TYPES = ('dict', 'list', 'tuple', 'set', 'frozenset', 'str', 'bytes', 'int', 'float', 'bool', 'complex')


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == 'builtins' and name in PLAIN_TYPES:
            return super().find_class(module, name)
        raise UserError(f"{module}.{name} is not plain data")


def load_meta(path):
    """meta.pkl as a dict, or a UserError when it holds anything but plain data."""
    fix = "re-create it with the dataset's prepare.py"
    try:
        with open(path, 'rb') as f:
            meta = _PlainDataUnpickler(f).load()
    except UserError as e:
        raise UserError(f"{path} was refused ({e}); meta.pkl may hold only plain data "
                        f"(dict, list, tuple, str, int, float, bool, None): {fix}")
    except Exception as e:  # anything else the unpickler trips over is a damaged file
        raise UserError(f"{path} is truncated or corrupt ({' '.join(str(e).split()) or type(e).__name__}); {fix}")
    if not isinstance(meta, dict):
        raise UserError(f"{path} holds a {type(meta).__name__}, not a dict; {fix}")
    return meta


def data_dir(dataset):
    return os.path.join(DATA_ROOT, dataset)


def read_meta(dataset):
    """The dataset's meta.pkl, checked, or None for datasets without one (GPT-2 BPE ones)."""
    path = os.path.join(data_dir(dataset), 'meta.pkl')
    if not os.path.exists(path):
        return None
    meta = load_meta(path)
    vocab_size, itos = meta.get('vocab_size'), meta.get('itos')
    if type(vocab_size) is not int or vocab_size <= 0:
        raise UserError(f"{path} has no valid vocab_size (it holds {vocab_size!r}, not a positive integer); "
                        "re-create it with the dataset's prepare.py")
    if itos is not None and not (isinstance(itos, (dict, list)) and len(itos) == vocab_size and all(
            isinstance(itos[i] if isinstance(itos, list) else itos.get(i), str) for i in range(vocab_size))):
        raise UserError(f"{path} has an itos that does not map ids 0..{vocab_size - 1} to characters; "
                        "re-create it with the dataset's prepare.py")
    return meta


def token_dtype(meta):
    """The dtype of the .bin files: uint16 (nanoGPT's, the default) or uint32 for large vocabularies."""
    name = (meta or {}).get('dtype', 'uint16')
    if name not in ('uint16', 'uint32'):
        raise UserError(f"meta.pkl names token dtype {name!r}; only uint16 and uint32 are written by the "
                        "prepare scripts: re-create the dataset with its prepare.py")
    return np.dtype(name)


def has_script(dataset):
    """Whether the repository has a data/<dataset>/prepare.py (the scripts stay there wherever DATA_ROOT is)."""
    return os.path.isfile(os.path.join(SCRIPTS_ROOT, dataset, 'prepare.py'))


def prepare_command(dataset):
    if has_script(dataset):
        return f"python data/{dataset}/prepare.py"
    return f"python data/char/prepare.py --input your_text.txt --name {dataset} --force"


def bin_path(dataset, split):
    """Path to <split>.bin, with an error naming the prepare command when it is missing."""
    path = os.path.join(data_dir(dataset), f'{split}.bin')
    # data/char holds the tool for your own text, never a dataset
    if dataset == 'char' or not (os.path.isdir(data_dir(dataset)) or has_script(dataset)):
        folders = set(os.listdir(DATA_ROOT)) if os.path.isdir(DATA_ROOT) else set()
        known = sorted(d for d in folders | set(os.listdir(SCRIPTS_ROOT))
                       if d != 'char' and (os.path.isdir(data_dir(d)) or has_script(d)))
        raise UserError(f"unknown dataset '{dataset}': there is no dataset {shown(data_dir(dataset))}/ (datasets "
                        f"here: {', '.join(known)}; to prepare your own text: python data/char/prepare.py --input "
                        "your_text.txt --name NAME, then --dataset=NAME)")
    if not os.path.exists(path) and split not in ('train', 'val'):
        raise UserError(f"{path} does not exist: the prepare scripts write train.bin and val.bin only; "
                        "use --splits=val or --splits=train,val")
    if not os.path.exists(path):
        raise UserError(f"{path} is missing; prepare the dataset first: {prepare_command(dataset)}")
    return path


def open_tokens(path, dtype):
    """A read-only memmap over a .bin file. Callers open a fresh one per batch: a long-lived
    memmap keeps every page it ever touched resident, and memory grows without bound."""
    return np.memmap(path, dtype=dtype, mode='r')


def check_split(dataset, split, dtype, block_size, vocab_size=None):
    """The number of tokens in <split>.bin, after checking that the file is whole, holds more than
    block_size tokens and, given vocab_size (datasets with meta.pkl), only ids below it."""
    path = bin_path(dataset, split)
    size = os.path.getsize(path)
    again = f"prepare the dataset again: {prepare_command(dataset)}"
    if size % dtype.itemsize:
        raise UserError(f"{path} holds {size:,} bytes, not a whole number of {dtype.name} tokens: it is truncated "
                        f"or is no token file; {again}")
    n_tokens = size // dtype.itemsize
    if n_tokens < block_size + 1:
        raise UserError(f"{path} holds {n_tokens} tokens, fewer than block_size+1 = {block_size + 1}; "
                        f"use a smaller --block_size or more text")
    if vocab_size is not None:
        chunk = 1 << 26  # tokens read at a time: memory stays bounded for any file size
        largest = max(int(np.fromfile(path, dtype, count=chunk, offset=start * dtype.itemsize).max())
                      for start in range(0, n_tokens, chunk))
        if largest >= vocab_size:
            raise UserError(f"{path} holds token id {largest}, but meta.pkl's vocab_size is {vocab_size}: the "
                            f"files do not belong together; {again}")
    return n_tokens


def check_fits(dataset, meta, vocab_size, block_size, vocabulary=None, splits=('train', 'val')):
    """The one answer to "can a model of vocab_size tokens and block_size context use data/<dataset>
    (whose meta.pkl is meta, or None)?": the same number of symbols, the model's own vocabulary when
    it is known (vocabulary, a checkpoint's tokenizer entry), and whole token files longer than
    block_size. Returns {split: number of tokens}."""
    from helpers import tokenizer
    symbols = meta['vocab_size'] if meta else tokenizer.BPE_VOCAB_SIZE
    if (meta and symbols != vocab_size) or vocab_size < symbols:
        held = f"a {symbols}-character vocabulary" if meta else "GPT-2 BPE tokens (no meta.pkl)"
        kind = "GPT-2's BPE" if vocab_size >= tokenizer.BPE_VOCAB_SIZE else "a character vocabulary"
        raise UserError(f"{shown(data_dir(dataset))} holds {held} but the model has {vocab_size} tokens ({kind}); "
                        "use a dataset of the model's vocabulary (the one it was trained on; for GPT-2's weights a "
                        "BPE dataset such as shakespeare)")
    tokenizer.check_dataset(vocabulary, meta, dataset)
    return {split: check_split(dataset, split, token_dtype(meta), block_size, meta and symbols) for split in splits}


def get_batch(path, dtype, batch_size, block_size, device, generator=None):
    """batch_size random windows of block_size tokens (x) and the same windows shifted by one (y)."""
    tokens = open_tokens(path, dtype)
    ix = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator).numpy()
    chunk = torch.from_numpy(tokens[ix[:, None] + np.arange(block_size + 1)].astype(np.int64))
    x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
    if torch.device(device).type == 'cuda':
        # pinned host memory lets the copy run asynchronously with the GPU's work
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


RESIDENT_BYTES = 2 << 30  # at most this much of int32 tokens is kept in device memory


def fits_on_device(paths, dtype, device):
    """Whether the token files, as int32, take under 2 GiB and (on a GPU) a tenth of its memory. Only
    small models, bound by per-step overhead, gain from resident batches; they train on small data."""
    needed = sum(os.path.getsize(p) // dtype.itemsize * 4 for p in paths)
    if torch.device(device).type == 'cuda':
        return needed < min(RESIDENT_BYTES, 0.1 * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return needed < RESIDENT_BYTES


def load_to_device(path, dtype, device, chunk_tokens=1 << 24):
    """A whole .bin file as an int32 tensor on device (int32 holds every id the prepare scripts
    write), read a chunk at a time so that host memory stays bounded whatever the file's size."""
    tokens = torch.empty(os.path.getsize(path) // dtype.itemsize, dtype=torch.int32, device=device)
    for start in range(0, len(tokens), chunk_tokens):
        part = np.fromfile(path, dtype, count=chunk_tokens, offset=start * dtype.itemsize)
        tokens[start:start + len(part)] = torch.from_numpy(part.astype(np.int32))
    return tokens


def get_resident_batch(tokens, batch_size, block_size, generator):
    """get_batch for tokens already in device memory. The offsets come from the same CPU
    generator as get_batch's, so both draw the same batches for the same seed; on a GPU they are
    copied from pinned memory, so the copy does not wait for the GPU's queued work."""
    ix = torch.randint(len(tokens) - block_size, (batch_size, 1), generator=generator)
    if tokens.device.type == 'cuda':
        ix = ix.pin_memory().to(tokens.device, non_blocking=True)
    chunk = tokens[ix.to(tokens.device) + torch.arange(block_size + 1, device=tokens.device)].long()
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


def eval_batch_seed(seed, split):
    """Seed of the generator behind a split's fixed evaluation batches: train.py's evaluation and
    evaluate.py both use it, so they score the same tokens."""
    return (seed * 7919 + {'train': 0, 'val': 1}.get(split, 2)) % 2 ** 63
