"""Text <-> token ids: a character vocabulary (meta.pkl's itos) or GPT-2's BPE (tiktoken).

A checkpoint written here carries its vocabulary (checkpoint['tokenizer'], see
tokenizer_entry), so that a dataset prepared again from another text can never make a model
read or write the wrong characters; nanoGPT's checkpoints, which lack it, use the dataset's
meta.pkl. Free of PyTorch, so that sample_onnx.py runs without it.
"""
import codecs
import json
import os

from helpers import DATA_ROOT, UserError, shown

BPE_VOCAB_SIZE = 50257
GPT2_EOT = 50256  # <|endoftext|>


class CharTokenizer:
    def __init__(self, itos, separator=None):
        """itos: the character of each token id, a list; separator: the character that ends a
        document (tinystories_char's '␃'), if the data has one."""
        self.itos = list(itos)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.end_token = self.stoi.get(separator) if separator else None

    def encode(self, text):
        unknown = sorted({c for c in text if c not in self.stoi})
        if unknown:
            raise UserError(f"the prompt has characters outside the model's vocabulary: "
                            f"{' '.join(repr(c) for c in unknown)}; remove or replace them")
        return [self.stoi[c] for c in text]

    def stream_decoder(self):
        """A function from one token id to the text it completes (every id is a whole character)."""
        return self.itos.__getitem__


def gpt2_encoding():
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:  # no network and no cache
        raise UserError(f"could not load tiktoken's GPT-2 encoding ({type(e).__name__}: {e}); connect to the "
                        "internet once, or set TIKTOKEN_CACHE_DIR to a folder holding its cached files")


class BPETokenizer:
    end_token = GPT2_EOT

    def __init__(self):
        self.enc = gpt2_encoding()

    def encode(self, text):
        return self.enc.encode(text, allowed_special={'<|endoftext|>'})

    def stream_decoder(self):
        """A function from one token id to the text it completes. A BPE token can hold part of a
        multi-byte character, so bytes wait in an incremental UTF-8 decoder until it is whole."""
        utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')
        return lambda token: utf8.decode(self.enc.decode_single_token_bytes(token))


def tokenizer_entry(meta):
    """What a checkpoint stores to name its tokenizer: a dataset's character vocabulary (meta.pkl),
    or GPT-2's BPE for datasets without meta.pkl; None for a meta.pkl without itos. Plain values
    only, as checkpoints hold."""
    if meta is None:
        return {'kind': 'gpt2'}
    if not isinstance(meta.get('itos'), (dict, list)):
        return None
    entry = {'kind': 'char', 'itos': [meta['itos'][i] for i in range(meta['vocab_size'])]}
    if meta.get('separator'):
        entry['separator'] = meta['separator']
    return entry


def _shown_folder(dataset):
    """data/<dataset> as messages write it (DATA_ROOT may be elsewhere); data/None for a checkpoint
    that names no dataset."""
    return shown(os.path.join(DATA_ROOT, str(dataset)))


def check_dataset(entry, meta, dataset):
    """A UserError unless data/<dataset> (its meta.pkl, or None) has the vocabulary of entry."""
    theirs = tokenizer_entry(meta)
    if entry is not None and (theirs or {}).get('itos') != entry.get('itos'):
        ours = 'GPT-2 BPE' if entry['kind'] == 'gpt2' else f"a {len(entry['itos'])}-character vocabulary"
        found = 'GPT-2 BPE (no meta.pkl)' if meta is None else f"another vocabulary ({meta['vocab_size']} symbols)"
        raise UserError(f"the model was trained with {ours} but {_shown_folder(dataset)} holds {found}; use the "
                        "dataset it was trained on, prepared again from the same text")


def from_entry(entry):
    if entry['kind'] == 'char':
        return CharTokenizer(entry['itos'], entry.get('separator'))
    return BPETokenizer()


def checkpoint_entry(checkpoint):
    """A checkpoint's tokenizer entry: its own, or for nanoGPT's checkpoints, which lack one, that
    of its dataset's meta.pkl, or GPT-2's BPE."""
    if checkpoint.get('tokenizer'):
        return checkpoint['tokenizer']
    from helpers import data
    name = (checkpoint.get('config') or {}).get('dataset')
    vocab_size = checkpoint['model_args']['vocab_size']
    if name and os.path.exists(os.path.join(data.data_dir(name), 'meta.pkl')):
        print(f"Loading meta from {os.path.join('data', name, 'meta.pkl')}...")
        meta = data.read_meta(name)
        if meta['vocab_size'] != vocab_size:
            raise UserError(f"{_shown_folder(name)}/meta.pkl has vocab_size {meta['vocab_size']} but the model was "
                            f"trained with {vocab_size}; the dataset was re-prepared since: restore its meta.pkl")
        entry = tokenizer_entry(meta)
        if entry is None:
            raise UserError(f"{_shown_folder(name)}/meta.pkl has no character vocabulary (itos); "
                            "re-create it with the dataset's prepare.py")
        return entry
    if vocab_size < BPE_VOCAB_SIZE:
        raise UserError(f"the model has a {vocab_size}-symbol vocabulary but {_shown_folder(name)}/meta.pkl, which "
                        f"maps it to characters, is missing; prepare the dataset '{name}' again to recreate it")
    return {'kind': 'gpt2'}


def for_checkpoint(checkpoint):
    """The tokenizer a checkpoint was trained with."""
    return from_entry(checkpoint_entry(checkpoint))


def for_pretrained(name, vocab_size=None):
    """The tokenizer of a transformers GPT-2 directory: the characters export_hf.py wrote beside a
    character model (a tokenizer.json without merges), else GPT-2's BPE; with the model's
    vocab_size, a UserError when it does not fit them."""
    path = os.path.join(name, 'tokenizer.json')
    spec = {}
    if os.path.isfile(path):
        try:
            with open(path, encoding='utf-8') as f:
                spec = json.load(f).get('model') or {}
        except (ValueError, AttributeError) as e:
            raise UserError(f"{path} is not a tokenizer's JSON ({e}); export the model again with export_hf.py")
    if spec.get('type') != 'BPE' or spec.get('merges') or not spec.get('vocab'):
        if vocab_size is not None and vocab_size < BPE_VOCAB_SIZE:
            raise UserError(f"the model in {name} has {vocab_size} tokens, too few for GPT-2's BPE, and no "
                            "tokenizer.json of characters beside it: export it again with export_hf.py from a "
                            "checkpoint whose dataset still has its meta.pkl")
        return BPETokenizer()
    itos = sorted(spec['vocab'], key=spec['vocab'].get)
    if vocab_size is not None and len(itos) > vocab_size:
        raise UserError(f"{path} has {len(itos)} characters but the model in {name} only {vocab_size} tokens; "
                        "export the model again with export_hf.py")
    with open(os.path.join(name, 'config.json'), encoding='utf-8') as f:
        eos = json.load(f).get('eos_token_id')
    return CharTokenizer(itos, itos[eos] if isinstance(eos, int) and 0 <= eos < len(itos) else None)


def read_text_file(path, what):
    """The text of a UTF-8 file, read 1 MiB at a time, so that a binary file named by mistake, however
    large, stops at its first byte that is no text."""
    if not os.path.isfile(path):
        raise UserError(f"{what} file '{path}' {'is a folder' if os.path.isdir(path) else 'not found'}; "
                        "name a UTF-8 text file")
    utf8, parts, offset = codecs.getincrementaldecoder('utf-8')(), [], 0
    with open(path, 'rb') as f:
        while True:
            chunk = f.read(1 << 20)
            pending = len(utf8.getstate()[0])
            try:
                parts.append(utf8.decode(chunk, final=not chunk))
            except UnicodeDecodeError as e:
                raise UserError(f"{what} file '{path}' is not UTF-8 text ({e.reason} at byte "
                                f"{offset - pending + e.start}); save it as UTF-8")
            if '\0' in parts[-1]:
                raise UserError(f"{what} file '{path}' holds NUL bytes: it is a binary file, not text; name a UTF-8 "
                                "text file")
            if not chunk:
                return ''.join(parts).replace('\r\n', '\n').replace('\r', '\n')  # as text mode reads it
            offset += len(chunk)


def read_prompt(start):
    """The prompt text: start itself, or the contents of the file named after 'FILE:'."""
    if start.startswith('FILE:'):
        path = start[len('FILE:'):]
        start = read_text_file(path, 'prompt')
        if not start:
            raise UserError(f"prompt file '{path}' is empty; put the text to continue in it")
    if not start:
        raise UserError("the prompt is empty; pass some text with --start=... "
                        "(for GPT-2, --start='<|endoftext|>' starts from nothing)")
    return start


def read_prompts(path):
    """The prompts of a file holding one per line (blank lines are skipped)."""
    prompts = [line for line in read_text_file(path, 'prompts').splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompts file '{path}' holds no prompt; write one prompt per line")
    return prompts
