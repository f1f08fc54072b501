"""Text to train and val token ids: by character, in GPT-2's BPE or a BPE of its own; read in chunks (flat memory)."""
import itertools

import numpy as np

from helpers import UserError
from helpers.prepare import Output, check_input_file
from helpers.tokenizer import GPT2_EOT, gpt2_encoding, learn_bpe, read_text

UNICODE_SIZE = 0x110000     # code points: the length of the lookup arrays
EOT = '<|endoftext|>'   # GPT-2's end of text (token GPT2_EOT)
SPREAD_PART = 10_000   # characters: --val_split=spread draws val in parts this long, far longer than a block
BPE_SAMPLE = 10_000_000   # characters a BPE is learned from at most: more add few merges but much time

def code_points(text):
    return np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)

def mark_characters(pieces, seen):
    """Pass 1: set seen[p] for every code point p in the pieces of text; return how many characters they hold."""
    n = 0
    for text in pieces:
        seen[code_points(text)] = True
        n += len(text)
    return n

def drawn_parts(pieces, size, fraction):
    """The pieces' text in parts of size characters, each with whether it is drawn: fraction of them, evenly spread."""
    done = 0
    for text in pieces:
        while text:
            part, take = done // size, size - done % size
            yield int((part + 1) * fraction) > int(part * fraction), text[:take]
            done += len(text[:take])
            text = text[take:]

def split_parts(pieces, n_train, spread=None):
    """(split, text) of pieces: val follows the first n_train characters or is drawn_parts(pieces, *spread)'s draw."""
    if spread:
        yield from ((('val' if drawn else 'train'), text) for drawn, text in drawn_parts(pieces, *spread))
        return
    done = 0
    for text in pieces:
        if done < n_train:
            yield 'train', text[:n_train - done]
        if done + len(text) > n_train:
            yield 'val', text[max(0, n_train - done):]
        done += len(text)

def write_chars(out_dir, seen, pieces, n_train, spread=None, **meta_extra):
    """Pass 2: the dataset of the pieces, split by split_parts; its vocabulary is seen's code points in order."""
    points = np.flatnonzero(seen)
    chars = [chr(p) for p in points]   # the same str objects in itos and stoi: pickled as nanoGPT's are
    dtype = np.uint16 if len(chars) <= 65535 else np.uint32
    print("all the unique characters:", ''.join(chars[:300]) + (' ...' if len(chars) > 300 else ''))
    print(f"vocab size: {len(chars):,}" + (" (stored as uint32)" if dtype == np.uint32 else ''))
    lookup = np.zeros(UNICODE_SIZE, dtype=dtype)
    lookup[points] = np.arange(len(points))
    meta = {'vocab_size': len(chars), 'itos': dict(enumerate(chars)), 'stoi': {ch: i for i, ch in enumerate(chars)}}
    with Output(out_dir, dtype) as out:
        for split, text in split_parts(pieces, n_train, spread):
            out.write(split, lookup[code_points(text)])
        out.commit(dict(meta, **meta_extra))

def plan_split(path, n, val_fraction, val_split):
    """(n_train, spread) for split_parts; with val_split 'spread', val is 10+ parts of up to SPREAD_PART characters."""
    if not 0 < val_fraction < 1:
        raise UserError(f"--val_fraction={val_fraction} must lie strictly between 0 and 1, e.g. 0.1")
    n_train = int(n * (1 - val_fraction))
    if not 0 < n_train < n:
        raise UserError(f"{path} has only {n:,} characters, too few for a train and a val split; "
                        "use a longer text or another --val_fraction")
    print(f"length of dataset in characters: {n:,}")
    spread = (max(1, min(SPREAD_PART, int(n * val_fraction) // 10)), val_fraction) if val_split == 'spread' else None
    return n_train, spread

def chars_from_file(path, out_dir, val_fraction=0.1, errors='strict', val_split='end'):
    """nanoGPT's shakespeare_char for any UTF-8 text, split as plan_split says."""
    seen = np.zeros(UNICODE_SIZE, dtype=bool)
    n = mark_characters(read_text(check_input_file(path), errors, desc='pass 1/2: vocabulary'), seen)
    n_train, spread = plan_split(path, n, val_fraction, val_split)
    write_chars(out_dir, seen, read_text(path, errors, desc='pass 2/2: encoding'), n_train, spread)

def bpe_from_file(path, out_dir, vocab_size, val_fraction=0.1, errors='strict', val_split='end'):
    """A dataset in a byte-level BPE learned from at most BPE_SAMPLE characters drawn across the train split."""
    if not 256 <= vocab_size < 2 ** 32:
        raise UserError(f"--vocab_size={vocab_size} cannot hold a byte-level BPE: it needs the 256 bytes and fits "
                        "uint32 token files; use 256 or more, e.g. --vocab_size=2048")
    n = sum(map(len, read_text(check_input_file(path), errors, desc='pass 1/3: counting')))
    n_train, spread = plan_split(path, n, val_fraction, val_split)
    train = (text for split, text in split_parts(read_text(path, errors, desc='pass 2/3: learning the BPE'),
                                                 n_train, spread) if split == 'train')
    bpe = learn_bpe((text for drawn, text in drawn_parts(train, SPREAD_PART, min(1, BPE_SAMPLE / n_train)) if drawn),
                    vocab_size)
    size = bpe.get_vocab_size()
    dtype = np.uint16 if size <= 65536 else np.uint32
    print(f"vocab size: {size:,}" + (" (stored as uint32)" if dtype == np.uint32 else '') +
          (f" (the text holds no more merges than that, of the {vocab_size:,} asked for)" if size < vocab_size else ''))
    with Output(out_dir, dtype) as out:
        for split, text in split_parts(read_text(path, errors, desc='pass 3/3: encoding'), n_train, spread):
            lines = bpe.encode_batch_fast(text.splitlines(keepends=True))   # in parallel, on every core
            out.write(split, np.fromiter(itertools.chain.from_iterable(line.ids for line in lines), dtype))
        out.commit({'vocab_size': size, 'bpe': bpe.to_str()})

def gpt2_tokens(docs):
    """Each document's encode_ordinary tokens, then GPT2_EOT: one tiktoken call for all (1.3x one per document)."""
    encoding, joined = gpt2_encoding(), EOT.join(docs + [''])
    if joined.count(EOT) != len(docs):   # a document holds that text itself, which must stay ordinary text
        return np.array([t for doc in docs for t in encoding.encode_ordinary(doc) + [GPT2_EOT]], dtype=np.uint32)
    return encoding.encode_to_numpy(joined, allowed_special={EOT})

def gpt2_from_file(path, out_dir, val_fraction=0.1):
    """nanoGPT's shakespeare: the first int(n * (1 - val_fraction)) characters are train, each part encoded whole."""
    text = ''.join(read_text(check_input_file(path), desc='reading'))
    n_train, _ = plan_split(path, len(text), val_fraction, 'end')
    with Output(out_dir) as out:
        out.write('train', gpt2_encoding().encode_ordinary(text[:n_train]))
        out.write('val', gpt2_encoding().encode_ordinary(text[n_train:]))
        out.commit()
