"""Reading datasets (meta.pkl as plain data only: a downloaded one cannot run code), model checks, batches."""
import json
import math
import os
import pickle

import numpy as np
import torch

from helpers import DATA_ROOT, SCRIPTS_ROOT, UserError, files, shown, tokenizer
from helpers.prepare import PROGRESS

PLAIN_TYPES = ('dict', 'list', 'tuple', 'set', 'frozenset', 'str', 'bytes', 'int', 'float', 'bool', 'complex')
RESIDENT_BYTES = 2 << 30  # at most this much of int32 tokens is kept in device memory
RECREATE = "re-create it with the dataset's prepare.py"
TOOLS = ('char', 'bpe')  # data/char and data/bpe prepare your own text: no datasets of their own

class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == 'builtins' and name in PLAIN_TYPES:
            return super().find_class(module, name)
        raise UserError(f"{module}.{name} is not plain data")

def load_meta(path):
    """meta.pkl as a dict, or a UserError when it holds anything but plain data."""
    try:
        with open(path, 'rb') as f:
            meta = _PlainDataUnpickler(f).load()
    except UserError as e:
        raise UserError(f"{path} was refused ({e}); meta.pkl may hold only plain data "
                        f"(dict, list, tuple, str, int, float, bool, None): {RECREATE}")
    except Exception as e:  # anything else the unpickler trips over is a damaged file
        raise UserError(f"{path} is truncated or corrupt ({' '.join(str(e).split()) or type(e).__name__}); {RECREATE}")
    if not isinstance(meta, dict):
        raise UserError(f"{path} holds a {type(meta).__name__}, not a dict; {RECREATE}")
    return meta

def data_dir(dataset):
    """DATA_ROOT/<dataset>/, after finishing the swap of a prepare killed midway: every reader asks for it first."""
    if os.path.isfile(DATA_ROOT):
        raise UserError(f"NANOGPT_DATA_DIR={DATA_ROOT} is a file; point it at the folder that holds the datasets")
    path = os.path.join(DATA_ROOT, dataset)
    files.finish_swaps(path)
    return path

def read_meta(dataset):
    """The dataset's meta.pkl, checked, or None for datasets without one (GPT-2 BPE ones)."""
    path = os.path.join(data_dir(dataset), 'meta.pkl')
    if not os.path.exists(path):
        return None
    meta = load_meta(path)
    vocab_size, itos = meta.get('vocab_size'), meta.get('itos')
    if type(vocab_size) is not int or vocab_size <= 0:
        raise UserError(f"{path} has no valid vocab_size (it holds {vocab_size!r}, not a positive integer); {RECREATE}")
    if itos is not None and not (isinstance(itos, (dict, list)) and len(itos) == vocab_size and all(
            isinstance(itos[i] if isinstance(itos, list) else itos.get(i), str) for i in range(vocab_size))):
        raise UserError(f"{path} has an itos that does not map ids 0..{vocab_size - 1} to characters; {RECREATE}")
    return meta

def checkpoint_entry(checkpoint):
    """A checkpoint's tokenizer entry: its own or, for nanoGPT's (none), its dataset's meta.pkl's or GPT-2's BPE."""
    if checkpoint.get('tokenizer'):
        return checkpoint['tokenizer']
    name = (checkpoint.get('config') or {}).get('dataset')
    vocab_size, folder = checkpoint['model_args']['vocab_size'], shown(os.path.join(DATA_ROOT, str(name)))
    if name and (meta := read_meta(name)):
        print(f"Loading meta from {os.path.join('data', name, 'meta.pkl')}...")
        if meta['vocab_size'] != vocab_size:
            raise UserError(f"{folder}/meta.pkl has vocab_size {meta['vocab_size']} but the model was "
                            f"trained with {vocab_size}; the dataset was re-prepared since: restore its meta.pkl")
        if (entry := tokenizer.tokenizer_entry(meta)) is None:
            raise UserError(f"{folder}/meta.pkl has no character vocabulary (itos); {RECREATE}")
        return entry
    if vocab_size < tokenizer.BPE_VOCAB_SIZE:
        raise UserError(f"the model has a {vocab_size}-symbol vocabulary but {folder}/meta.pkl, which "
                        f"maps it to characters, is missing; prepare the dataset '{name}' again to recreate it")
    return {'kind': 'gpt2'}

def token_dtype(meta):
    """The dtype of the .bin files: uint16 (nanoGPT's, the default) or uint32 for large vocabularies."""
    name = (meta or {}).get('dtype', 'uint16')
    if name not in ('uint16', 'uint32'):
        raise UserError(f"meta.pkl names token dtype {name!r}, not uint16 or uint32; {RECREATE}")
    return np.dtype(name)

def has_script(dataset):
    return os.path.isfile(os.path.join(SCRIPTS_ROOT, dataset, 'prepare.py'))

def interrupted_prepare(dataset):
    """The command line of the dataset's unfinished resumable prepare, as its progress record keeps it, or None."""
    try:
        with open(os.path.join(data_dir(dataset), PROGRESS)) as f:
            return json.load(f)['command']
    except (OSError, ValueError, KeyError, TypeError):   # none, or one that cannot be read: no such advice
        return None

def prepare_command(dataset):
    """The command that prepares the dataset; for one whose resumable prepare is unfinished, that one's."""
    fresh = (f"python data/{dataset}/prepare.py" if has_script(dataset) else
             f"python data/char/prepare.py --input your_text.txt --name {dataset} --force")
    return interrupted_prepare(dataset) or fresh

def bin_path(dataset, split):
    """Path to <split>.bin, or a UserError naming the command that prepares it."""
    folder = data_dir(dataset)
    path = os.path.join(folder, f'{split}.bin')
    if dataset in TOOLS or not (os.path.isdir(folder) or has_script(dataset)):
        names = {d for root in (DATA_ROOT, SCRIPTS_ROOT) if os.path.isdir(root) for d in os.listdir(root)}
        known = sorted(d for d in names if d not in TOOLS and (has_script(d) or os.path.exists(
            os.path.join(DATA_ROOT, d, 'train.bin'))))   # not data/hellaswag, say: no dataset
        raise UserError(f"unknown dataset '{dataset}': there is no dataset {shown(folder)}/ (datasets "
                        f"here: {', '.join(known)}; to prepare your own text: python data/char/prepare.py --input "
                        "your_text.txt --name NAME, then --dataset=NAME)")
    if not os.path.exists(path):
        if split not in ('train', 'val'):
            raise UserError(f"{path} does not exist: the prepare scripts write train.bin and val.bin only; "
                            "use --splits=val or --splits=train,val")
        if resume := interrupted_prepare(dataset):
            raise UserError(f"{path} is missing; its prepare was interrupted: run `{resume}` again to resume")
        raise UserError(f"{path} is missing; prepare the dataset first: {prepare_command(dataset)}")
    return path

def check_split(dataset, split, dtype, block_size, vocab_size=None):
    """The number of tokens in <split>.bin, checked: whole, longer than block_size, ids below vocab_size if given."""
    path = bin_path(dataset, split)
    size = os.path.getsize(path)
    again = f"prepare the dataset again: {prepare_command(dataset)}"
    if size % dtype.itemsize:
        raise UserError(f"{path} holds {size:,} bytes, not a whole number of {dtype.name} tokens: it is truncated "
                        f"or is no token file; {again}")
    n_tokens = size // dtype.itemsize
    if n_tokens < block_size + 1:  # a window needs a token and the one after it: no block_size fits under 2
        fix = (f"the dataset needs more text (a longer input, or a larger --val_fraction for val.bin); {again}"
               if n_tokens < 2 else "use a smaller --block_size or more text")
        raise UserError(f"{path} holds {n_tokens} tokens, fewer than block_size+1 = {block_size + 1}; {fix}")
    if vocab_size is not None:
        chunk = 1 << 26  # tokens read at a time: memory stays bounded for any file size
        largest = max(int(np.fromfile(path, dtype, count=chunk, offset=start * dtype.itemsize).max())
                      for start in range(0, n_tokens, chunk))
        if largest >= vocab_size:
            raise UserError(f"{path} holds token id {largest}, but meta.pkl's vocab_size is {vocab_size}: the "
                            f"files do not belong together; {again}")
    return n_tokens

def check_fits(dataset, meta, vocab_size, block_size, vocabulary=None, splits=('train', 'val')):
    """{split: tokens} of data/<dataset> (meta: its meta.pkl), checked against the model's vocab_size, block_size and
    vocabulary (its checkpoint's tokenizer entry, if known)."""
    symbols = meta['vocab_size'] if meta else tokenizer.BPE_VOCAB_SIZE
    folder, own = shown(data_dir(dataset)), tokenizer.tokenizer_entry(meta) or {}
    if (meta and symbols != vocab_size) or vocab_size < symbols:
        held = f"a {symbols}-{'token BPE' if own.get('bpe') else 'character'} vocabulary" if meta else \
            "GPT-2 BPE tokens (no meta.pkl)"
        kind = "GPT-2's BPE" if vocab_size >= tokenizer.BPE_VOCAB_SIZE else "a vocabulary of the dataset's own"
        raise UserError(f"{folder} holds {held} but the model has {vocab_size} tokens ({kind}); use the dataset it "
                        "was trained on (for GPT-2's weights, a BPE one such as shakespeare)")
    if vocabulary is not None and [own.get(k) for k in ('itos', 'bpe')] != [vocabulary.get(k) for k in ('itos', 'bpe')]:
        ours = {'gpt2': 'GPT-2 BPE', 'bpe': 'a BPE of its own'}.get(vocabulary['kind']) or \
            f"a {len(vocabulary['itos'])}-character vocabulary"
        found = 'GPT-2 BPE (no meta.pkl)' if meta is None else f"another vocabulary ({meta['vocab_size']} symbols)"
        raise UserError(f"the model was trained with {ours} but {folder} holds {found}; use the dataset it was trained "
                        "on, prepared again from the same text")
    return {split: check_split(dataset, split, token_dtype(meta), block_size, meta and symbols) for split in splits}

def get_batch(path, dtype, batch_size, block_size, device, generator=None):
    """batch_size random windows of block_size tokens (x) and the same windows shifted by one (y)."""
    tokens = np.memmap(path, dtype=dtype, mode='r')  # one per batch: a long-lived memmap keeps every page it touched
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator).numpy()
    return get_windows(tokens, dtype, starts, block_size, device)

def get_windows(path, dtype, starts, length, device):
    """Windows of length tokens at starts (x) and the same shifted by one (y) on device; path: name, file or memmap."""
    tokens = path if isinstance(path, np.memmap) else np.memmap(path, dtype=dtype, mode='r')
    chunk = torch.from_numpy(tokens[np.asarray(starts)[:, None] + np.arange(length + 1)].astype(np.int64))
    x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
    if torch.device(device).type == 'cuda':  # from pinned host memory the copy runs alongside the GPU's work
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)

def fits_on_device(paths, dtype, device):
    """Whether the token files, as int32, take under 2 GiB and a tenth of a GPU's memory: small models gain from it."""
    needed = sum(os.path.getsize(p) // dtype.itemsize * 4 for p in paths)
    if torch.device(device).type == 'cuda':
        return needed < min(RESIDENT_BYTES, 0.1 * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return needed < RESIDENT_BYTES

def load_to_device(path, dtype, device, chunk_tokens=1 << 24):
    """A whole .bin file as an int32 tensor on device, read a chunk at a time to keep host memory bounded."""
    tokens = torch.empty(os.path.getsize(path) // dtype.itemsize, dtype=torch.int32, device=device)
    for start in range(0, len(tokens), chunk_tokens):
        part = np.fromfile(path, dtype, count=chunk_tokens, offset=start * dtype.itemsize)
        tokens[start:start + len(part)] = torch.from_numpy(part.astype(np.int32))
    return tokens

def get_resident_batch(tokens, batch_size, block_size, generator):
    """get_batch for tokens in device memory: the same CPU generator draws the same batches as get_batch's."""
    ix = torch.randint(len(tokens) - block_size, (batch_size, 1), generator=generator)
    if tokens.device.type == 'cuda':
        ix = ix.pin_memory().to(tokens.device, non_blocking=True)
    chunk = tokens[ix.to(tokens.device) + torch.arange(block_size + 1, device=tokens.device)].long()
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

def token_bytes(entry, vocab_size, device):
    """Each token id's UTF-8 bytes (0 for <|endoftext|>), for bits per byte; None where the tokenizer cannot load."""
    try:
        lengths = tokenizer.from_entry(entry).byte_lengths() if entry else None
    except UserError as e:
        print(f"bits per byte are left out: {e}")
        return None
    return None if lengths is None else torch.tensor(lengths + [0] * (vocab_size - len(lengths)), device=device)

def summed_loss(model, x, y, byte_counts=None):
    """A batch's cross-entropy summed (nats), then over the targets that stand for text, and their UTF-8 bytes."""
    losses = model(x, y, reduction='none')[1].float()
    text_bytes = byte_counts[y.flatten()] if byte_counts is not None else torch.zeros_like(losses)
    return torch.stack([losses.sum(), (losses * (text_bytes > 0)).sum(), text_bytes.sum().float()])

def bits_per_byte(sums):
    """summed_loss's sums, added over batches, as bits per byte; None without bytes."""
    return float(sums[1]) / math.log(2) / float(sums[2]) if sums[2] else None

def eval_batch_seed(seed, split):
    """Seed of a split's fixed evaluation batches: train.py and evaluate.py score the same tokens."""
    return (seed * 7919 + {'train': 0, 'val': 1}.get(split, 2)) % 2 ** 63
