"""Text <-> token ids for sampling: the dataset's character vocabulary from meta.pkl when
the model was trained on one, GPT-2's BPE (tiktoken) otherwise. Free of PyTorch, so that
sample_onnx.py can run without it."""
import codecs
import os

from helpers import UserError

BPE_VOCAB_SIZE = 50257


class CharTokenizer:
    def __init__(self, itos):
        """itos: token id -> character, as a dict (meta.pkl's) or a list."""
        self.itos = itos
        self.stoi = {c: i for i, c in (itos.items() if isinstance(itos, dict) else enumerate(itos))}

    def encode(self, text):
        unknown = sorted({c for c in text if c not in self.stoi})
        if unknown:
            raise UserError(f"the prompt has characters outside the model's vocabulary: "
                            f"{' '.join(repr(c) for c in unknown)}; remove or replace them")
        return [self.stoi[c] for c in text]

    def decode(self, ids):
        return ''.join(self.itos[i] for i in ids)

    def stream_decoder(self):
        """A function from one token id to the text it completes (every id is a whole character)."""
        return lambda token: self.itos[token]


class BPETokenizer:
    def __init__(self):
        import tiktoken
        self.enc = tiktoken.get_encoding('gpt2')
        self.eot_token = self.enc.eot_token

    def encode(self, text):
        return self.enc.encode(text, allowed_special={'<|endoftext|>'})

    def decode(self, ids):
        return self.enc.decode(ids)

    def stream_decoder(self):
        """A function from one token id to the text it completes. A BPE token can hold part of a
        multi-byte character, so bytes wait in an incremental UTF-8 decoder until it is whole."""
        utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')
        return lambda token: utf8.decode(self.enc.decode_single_token_bytes(token))


def for_checkpoint(checkpoint):
    """The tokenizer a checkpoint was trained with: its dataset's meta.pkl if there is one."""
    from helpers import data as dataset
    name = (checkpoint.get('config') or {}).get('dataset')
    vocab_size = checkpoint['model_args']['vocab_size']
    if name and os.path.exists(os.path.join(dataset.data_dir(name), 'meta.pkl')):
        print(f"Loading meta from {os.path.join('data', name, 'meta.pkl')}...")
        meta = dataset.read_meta(name)
        if not isinstance(meta.get('itos'), (dict, list)) or 'vocab_size' not in meta:
            raise UserError(f"data/{name}/meta.pkl has no character vocabulary (itos, vocab_size); "
                            "re-create it with the dataset's prepare.py")
        if meta['vocab_size'] != vocab_size:
            raise UserError(f"data/{name}/meta.pkl has vocab_size {meta['vocab_size']} but the model was trained "
                            f"with {vocab_size}; the dataset was re-prepared since: restore its meta.pkl")
        return CharTokenizer(meta['itos'])
    if vocab_size < BPE_VOCAB_SIZE:
        raise UserError(f"the model has a {vocab_size}-symbol vocabulary but data/{name}/meta.pkl, which maps it "
                        f"to characters, is missing; prepare the dataset '{name}' again to recreate it")
    return BPETokenizer()


def read_prompt(start):
    """The prompt text: start itself, or the contents of the file named after 'FILE:'."""
    if start.startswith('FILE:'):
        path = start[len('FILE:'):]
        if not os.path.isfile(path):
            raise UserError(f"prompt file '{path}' not found")
        with open(path, 'r', encoding='utf-8') as f:
            start = f.read()
        if not start:
            raise UserError(f"prompt file '{path}' is empty; put the text to continue in it")
    if not start:
        raise UserError("the prompt is empty; pass some text with --start=... "
                        "(for GPT-2, --start='<|endoftext|>' starts from nothing)")
    return start
