"""Text <-> token ids: a character vocabulary (meta.pkl's itos), GPT-2's BPE (tiktoken) or a dataset's own byte-level
BPE (meta.pkl's bpe), and the prompts. Free of PyTorch and of helpers.data: sample_onnx.py runs without PyTorch."""
import codecs
import json
import os

from tqdm import tqdm

from helpers import UserError

BPE_VOCAB_SIZE = 50257
GPT2_EOT = 50256  # <|endoftext|>
CHUNK_BYTES = 1 << 20  # 2-3x faster (measured on the 2-core dev VM) to decode and encode than chunks of 2-8 MB
UTF8_FIX = ("convert the file to UTF-8 (e.g. iconv -f GBK -t UTF-8) or pass --replace_invalid_utf8 to replace "
            "undecodable bytes with U+FFFD")

class ByteTokenizer:
    """What every tokenizer here shares: each token id stands for bytes of UTF-8 text, its piece."""
    end_token = None  # the token that ends a document, if any

    def stream_decoder(self):
        """A function from one token id to the text it completes; part of a character waits for the rest."""
        utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')
        return lambda token: utf8.decode(self.pieces[token])

    def byte_lengths(self):
        """The UTF-8 bytes of each token id's text, for bits per byte."""
        return [len(piece) for piece in self.pieces]

class CharTokenizer(ByteTokenizer):
    def __init__(self, itos, separator=None):
        """itos: the character of each token id; separator: the character that ends a document, if any."""
        self.stoi = {c: i for i, c in enumerate(itos)}
        self.pieces = [c.encode('utf-8') for c in itos]
        self.end_token = self.stoi.get(separator) if separator else None

    def encode(self, text):
        unknown = sorted({c for c in text if c not in self.stoi})
        if unknown:
            raise UserError(f"the prompt has characters outside the model's vocabulary: "
                            f"{' '.join(repr(c) for c in unknown)}; remove or replace them")
        return [self.stoi[c] for c in text]

def gpt2_encoding():
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:  # no network and no cache
        raise UserError(f"could not load tiktoken's GPT-2 encoding ({type(e).__name__}: {e}); connect to the "
                        "internet once, or set TIKTOKEN_CACHE_DIR to a folder holding its cached files")

class BPETokenizer(ByteTokenizer):
    end_token = GPT2_EOT

    def __init__(self):
        self.enc = gpt2_encoding()
        self.pieces = self.enc.decode_tokens_bytes(range(BPE_VOCAB_SIZE))

    def encode(self, text):
        return self.enc.encode(text, allowed_special={'<|endoftext|>'})

    def byte_lengths(self):  # <|endoftext|> stands for no text: 0 bytes
        return [0 if t == GPT2_EOT else n for t, n in enumerate(super().byte_lengths())]

def byte_symbols():
    """The character that stands for each byte in a byte-level BPE's vocabulary (GPT-2's alphabet): printable
    Latin-1 bytes for themselves, the others for the characters from U+0100 on, in byte order."""
    kept = [b for b in range(256) if chr(b).isprintable() and chr(b) != ' ' and b != 0xad]
    moved = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + i) for i, b in enumerate(moved)}}

class TextBPETokenizer(ByteTokenizer):
    """A byte-level BPE trained on a dataset's own text (data/bpe/prepare.py): no text is ever unknown to it."""
    def __init__(self, spec):
        from tokenizers import Tokenizer
        self.tokens = Tokenizer.from_str(spec)
        byte_of, vocab = {symbol: b for b, symbol in byte_symbols().items()}, self.tokens.get_vocab()
        self.pieces = [bytes(byte_of[c] for c in symbols) for symbols in sorted(vocab, key=vocab.get)]

    def encode(self, text):
        return self.tokens.encode(text).ids

def learn_bpe(texts, vocab_size):
    """A byte-level BPE (GPT-2's pre-tokenizer, no special tokens) of up to vocab_size tokens learned from texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return bpe

def tokenizer_entry(meta):
    """What a checkpoint keeps of its tokenizer, lest a re-prepared dataset misread it; None: meta.pkl has neither."""
    if meta is None:
        return {'kind': 'gpt2'}
    if isinstance(meta.get('bpe'), str):
        return {'kind': 'bpe', 'bpe': meta['bpe']}
    if not isinstance(meta.get('itos'), (dict, list)):
        return None
    entry = {'kind': 'char', 'itos': [meta['itos'][i] for i in range(meta['vocab_size'])]}
    if meta.get('separator'):
        entry['separator'] = meta['separator']
    return entry

def from_entry(entry):
    """The tokenizer of a checkpoint's tokenizer entry (data.checkpoint_entry)."""
    if entry['kind'] == 'char':
        return CharTokenizer(entry['itos'], entry.get('separator'))
    return TextBPETokenizer(entry['bpe']) if entry['kind'] == 'bpe' else BPETokenizer()

def for_pretrained(name, vocab_size):
    """The tokenizer of a transformers GPT-2 folder: the characters or own BPE export_hf.py wrote, else GPT-2's BPE."""
    path = os.path.join(name, 'tokenizer.json')
    text, spec = '', {}
    if os.path.isfile(path):
        try:
            with open(path, encoding='utf-8') as f:
                text = f.read()
            spec = json.loads(text).get('model') or {}
        except (ValueError, AttributeError) as e:
            raise UserError(f"{path} is not a tokenizer's JSON ({e}); export the model again with export_hf.py")
    vocab = spec.get('vocab') or {}
    chars = spec.get('type') == 'BPE' and not spec.get('merges') and vocab
    own_bpe = spec.get('merges') and len(vocab) != BPE_VOCAB_SIZE
    if not (chars or own_bpe):
        if vocab_size < BPE_VOCAB_SIZE:
            raise UserError(f"the model in {name} has {vocab_size} tokens, too few for GPT-2's BPE, and no "
                            "tokenizer.json of characters beside it: export it again with export_hf.py from a "
                            "checkpoint whose dataset still has its meta.pkl")
        return BPETokenizer()
    if len(vocab) > vocab_size:
        raise UserError(f"{path} has {len(vocab)} tokens but the model in {name} only {vocab_size}; "
                        "export the model again with export_hf.py")
    if own_bpe:
        return TextBPETokenizer(text)
    itos = sorted(vocab, key=vocab.get)
    with open(os.path.join(name, 'config.json'), encoding='utf-8') as f:
        eos = json.load(f).get('eos_token_id')
    return CharTokenizer(itos, itos[eos] if isinstance(eos, int) and 0 <= eos < len(itos) else None)

def read_text(path, errors='strict', chunk_bytes=CHUNK_BYTES, desc=None, fix=UTF8_FIX):
    """A file's UTF-8 text, chunk_bytes at a time (a progress bar if desc); a non-UTF-8 byte is a UserError naming
    its offset and fix, unless errors='replace'."""
    decoder, offset = codecs.getincrementaldecoder('utf-8')(errors), 0   # it keeps a character cut by a chunk's end
    with open(path, 'rb') as f, tqdm(total=os.path.getsize(path), unit='B', unit_scale=True, desc=desc,
                                     disable=None if desc else True) as bar:
        while True:
            raw = f.read(chunk_bytes)
            held = len(decoder.getstate()[0])   # bytes of a character begun in the chunk before
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise UserError(f"{path} is not valid UTF-8: byte 0x{e.object[e.start]:02x} at byte offset "
                                f"{offset - held + e.start} ({e.reason}); {fix}")
            offset += len(raw)
            bar.update(len(raw))
            if text:
                yield text
            if not raw:
                return

def read_text_file(path, what):
    """A UTF-8 file's text, newlines as text mode reads them; a binary file named by mistake stops at once."""
    if not os.path.isfile(path):
        raise UserError(f"{what} file '{path}' {'is a folder' if os.path.isdir(path) else 'not found'}; "
                        "name a UTF-8 text file")
    parts = []
    for part in read_text(path, fix=f'save the {what} file as UTF-8'):
        if '\0' in part:
            raise UserError(f"{what} file '{path}' holds NUL bytes: it is a binary file, not text; name a UTF-8 "
                            "text file")
        parts.append(part)
    return ''.join(parts).replace('\r\n', '\n').replace('\r', '\n')

def read_prompts(start, path=''):
    """The prompts: the file at path's, one a line (blank lines skipped), else start or the file named after 'FILE:'."""
    if path:
        prompts = [line for line in read_text_file(path, 'prompts').splitlines() if line.strip()]
        if not prompts:
            raise UserError(f"prompts file '{path}' holds no prompt; write one prompt per line")
        return prompts
    text = read_text_file(start[len('FILE:'):], 'prompt') if start.startswith('FILE:') else start
    if not text:
        raise UserError(f"the prompt is empty (--start={start}); pass some text, or a prompt file holding some as "
                        "--start=FILE:path (for GPT-2, --start='<|endoftext|>' starts from nothing)")
    return [text]
