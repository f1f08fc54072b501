"""Writing datasets, behind every data/<name>/prepare.py: train.bin and val.bin (token ids) and, at character level,
meta.pkl, in DATA_ROOT/<name>/. Text is read in chunks, so memory stays flat whatever the input's size, and the
files move into place in one swap (helpers/files.py) once all are whole. Measured figures: data/*/readme.md."""
import contextlib
import os
import pickle
import time
import unicodedata
import urllib.request

import numpy as np

from helpers import DATA_ROOT, SCRIPTS_ROOT, UserError, files, shown
from helpers.tokenizer import GPT2_EOT, gpt2_encoding, read_text

STARTED = time.time()
UNICODE_SIZE = 0x110000     # code points: the length of the lookup arrays
TINY_SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
EOT = '<|endoftext|>'   # GPT-2's end of text (token GPT2_EOT)
WINDOWS_DEVICES = {'con', 'prn', 'aux', 'nul', *(f'{port}{i}' for port in ('com', 'lpt') for i in range(10))}
LOCK = 'prepare.lock'   # in the dataset's folder, held by the one prepare writing there
PROGRESS = 'progress.bin.tmp.json'   # a resumable prepare's record (helpers/documents.py), like train.bin.tmp


def check_input_file(path, flag='--input'):
    if not os.path.isfile(path):
        why = 'is not a regular file' if os.path.exists(path) else 'does not exist'
        raise UserError(f"input file {path} {why}; check the path given with {flag}")
    if os.path.getsize(path) == 0:
        raise UserError(f"input file {path} is empty; pass a file that holds some text with {flag}")
    return path


def name_problem(name):
    """What keeps name from being a dataset folder on Linux, macOS and Windows, or None. Letters and digits of any
    script count, with their combining marks (é as e + U+0301, Devanagari vowel signs)."""
    odd = sorted({c for c in name if not (c.isalnum() or c in '_-.' or unicodedata.category(c).startswith('M'))})
    if not name:
        return "is empty"
    if odd:
        return f"holds {' '.join(map(repr, odd))}"
    if not (name[0].isalnum() or name[0] == '_'):
        return f"starts with {name[0]!r}"   # hidden files, command-line options, a mark without its letter
    if name.endswith('.'):
        return "ends with '.', which Windows drops"
    if name.split('.')[0].lower() in WINDOWS_DEVICES:
        return "is a device name on Windows"
    return "is longer than the 255 bytes a folder name may take" if len(name.encode('utf-8')) > 255 else None


@contextlib.contextmanager
def output_dir(name, force=False, own=None):
    """DATA_ROOT/<name>/ for the with-block, made if missing (removed if left empty), written by this process alone
    (LOCK); a dataset there is overwritten only by its own prepare.py (own == name) or with --force."""
    problem = name_problem(name)
    if problem:
        raise UserError(f"--name={name!r} cannot be a folder name: it {problem}; use letters, digits, '_', '-' "
                        "or '.', e.g. --name=my_novel")
    script = [d for d in os.listdir(SCRIPTS_ROOT) if d.casefold() == name.casefold()   # as macOS and Windows compare
              and os.path.isfile(os.path.join(SCRIPTS_ROOT, d, 'prepare.py'))]
    if script and name != own:
        raise UserError(f"--name={name} is the name of the repository's data/{script[0]}/prepare.py and its folder; "
                        f"choose another, e.g. --name=my_{name}")
    path = os.path.join(DATA_ROOT, name)
    made = not os.path.isdir(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:   # NANOGPT_DATA_DIR names a file, or a folder this user cannot write to
        raise UserError(f"cannot make {shown(path)}/ ({e.strerror}); point NANOGPT_DATA_DIR at a folder you can "
                        "write to")
    lock = files.lock(os.path.join(path, LOCK), f"another prepare (pid {{pid}}) is writing {shown(path)}/; wait for "
                                                "it to finish, or prepare under another --name")
    try:
        files.finish_swaps(path)
        held = [f for f in ('train.bin', 'val.bin', 'meta.pkl') if os.path.exists(os.path.join(path, f))]
        if held and name != own and not force:
            raise UserError(f"{shown(path)}/ already holds a dataset ({', '.join(held)}); "
                            "choose another --name or pass --force to overwrite it")
        yield path
    finally:
        if made and os.listdir(path) == [LOCK]:   # the folder this made, left empty
            with contextlib.suppress(OSError):   # another prepare of the name, just started, keeps it
                os.remove(os.path.join(path, LOCK))
                os.rmdir(path)
        lock.close()


def download(url, path):
    """The file at url saved as path, unless path is there already."""
    if not os.path.exists(path):
        print(f"downloading {url} to {shown(path)}")
        try:
            files.write_atomically(path, lambda tmp: urllib.request.urlretrieve(url, tmp))
        except OSError as e:
            raise UserError(f"could not download {url} ({e}); download it yourself and save it as {path}")
    return path


class Output:
    """train.bin, val.bin and meta.pkl, written as <name>.tmp and moved into place by commit() in one swap. Leaving
    the with-block before that (an error, Ctrl-C) deletes them: the dataset that was there stays as it was."""

    def __init__(self, out_dir, dtype=np.uint16, kept=None):
        """kept: {split: bytes} of the .tmp files an interrupted run left, to append to (documents.ResumableOutput)."""
        self.dir, self.dtype = out_dir, dtype
        self.temporary = ['train.bin.tmp', 'val.bin.tmp', 'meta.pkl.tmp']   # what leaving the with-block deletes
        os.makedirs(out_dir, exist_ok=True)
        kept, self.bins = kept or {'train': 0, 'val': 0}, {}
        self.tokens = {split: n // np.dtype(dtype).itemsize for split, n in kept.items()}
        try:   # a Ctrl-C in here, before the with-block runs __exit__, must not leave the files either
            for split, n in kept.items():
                self.bins[split] = open(self.path(f'{split}.bin.tmp'), 'r+b' if n else 'wb')
                self.bins[split].truncate(n)   # what a chunk under way at the interruption left goes
                self.bins[split].seek(n)
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, split, ids):
        self.bins[split].write(np.asarray(ids, dtype=self.dtype))
        self.tokens[split] += len(ids)

    def commit(self, meta=None, removes=()):
        """Move the files into place; with meta None an old meta.pkl goes too: it must not describe the new ones."""
        for split, name in (('train', 'training'), ('val', 'validation')):
            if not self.tokens[split]:
                raise UserError(f"the source yields no {name} text; give it a non-empty {name} split")
        written, moves = list(self.bins.values()), [('train.bin.tmp', 'train.bin'), ('val.bin.tmp', 'val.bin')]
        if meta is None:
            removes = [*removes, 'meta.pkl', 'meta.pkl.tmp']   # and one a killed prepare may have left
        else:
            written.append(open(self.path('meta.pkl.tmp'), 'wb'))
            pickle.dump(meta, written[-1])
            moves.append(('meta.pkl.tmp', 'meta.pkl'))
        for f in written:   # on disk before the swap makes them the dataset
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self.temporary = []   # the swap's from here on: finish_swaps completes it if this process dies
        files.swap(self.dir, moves, removes, f'preparing data/{os.path.basename(self.dir)}')
        for split, n in self.tokens.items():
            print(f"{split} has {n:,} tokens")
        print(f"wrote {shown(self.dir)}/ in {time.time() - STARTED:.1f} s")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in self.bins.values():
            f.close()
        for name in self.temporary:
            files.remove(self.path(name))


# ----------------------------------------------------------------------------- character level

def code_points(text):
    return np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)


def mark_characters(pieces, seen):
    """Pass 1: set seen[p] for every code point p in the pieces of text; return how many characters they hold."""
    n = 0
    for text in pieces:
        seen[code_points(text)] = True
        n += len(text)
    return n


def write_chars(out_dir, seen, pieces, n_train, **meta_extra):
    """Pass 2: the dataset of the pieces of text, the first n_train characters train. The vocabulary is the code
    points marked in seen, in order (nanoGPT's sorted(set(text))); one lookup array maps each to its place."""
    points = np.flatnonzero(seen)
    chars = [chr(p) for p in points]   # the same str objects in itos and stoi: pickled as nanoGPT's are
    dtype = np.uint16 if len(chars) <= 65535 else np.uint32   # and meta.pkl says 'dtype': 'uint32'
    print("all the unique characters:", ''.join(chars[:300]) + (' ...' if len(chars) > 300 else ''))
    print(f"vocab size: {len(chars):,}" + (" (stored as uint32)" if dtype == np.uint32 else ''))
    lookup = np.zeros(UNICODE_SIZE, dtype=dtype)
    lookup[points] = np.arange(len(points))
    meta = {'vocab_size': len(chars), 'itos': dict(enumerate(chars)), 'stoi': {ch: i for i, ch in enumerate(chars)}}
    with Output(out_dir, dtype) as out:
        for text in pieces:
            ids = lookup[code_points(text)]
            room = n_train - out.tokens['train']   # what train.bin still takes: 0 once it is full
            out.write('train', ids[:room])
            out.write('val', ids[room:])
        out.commit(dict(meta, **({'dtype': 'uint32'} if dtype == np.uint32 else {}), **meta_extra))


def chars_from_file(path, out_dir, val_fraction=0.1, errors='strict'):
    """nanoGPT's shakespeare_char for any UTF-8 text: the first int(n * (1 - val_fraction)) characters are train."""
    check_input_file(path)
    if not 0 < val_fraction < 1:
        raise UserError(f"--val_fraction={val_fraction} must lie strictly between 0 and 1, e.g. 0.1")
    seen = np.zeros(UNICODE_SIZE, dtype=bool)
    n = mark_characters(read_text(path, errors, desc='pass 1/2: vocabulary'), seen)
    n_train = int(n * (1 - val_fraction))
    if not 0 < n_train < n:
        raise UserError(f"{path} has only {n:,} characters, too few for a train and a val split; "
                        "use a longer text or another --val_fraction")
    print(f"length of dataset in characters: {n:,}")
    write_chars(out_dir, seen, read_text(path, errors, desc='pass 2/2: encoding'), n_train)


# ----------------------------------------------------------------------------- GPT-2 BPE

def gpt2_tokens(docs):
    """Each document's encode_ordinary tokens, then GPT2_EOT: one tiktoken call on the documents joined by the EOT
    text, which it cuts at (1.3x one call per document on the 2-core dev VM)."""
    joined = EOT.join(docs + [''])
    if joined.count(EOT) != len(docs):   # a document holds that text itself, which must stay ordinary text
        encoding = gpt2_encoding()
        return np.array([t for doc in docs for t in encoding.encode_ordinary(doc) + [GPT2_EOT]], dtype=np.uint32)
    return gpt2_encoding().encode_to_numpy(joined, allowed_special={EOT})


def usable_cores():
    """The cores this process may run on (a cpuset or taskset can allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def gpt2_from_file(path, out_dir, val_fraction=0.1):
    """nanoGPT's shakespeare: the first int(n * (1 - val_fraction)) characters are train, each part encoded whole."""
    text = ''.join(read_text(check_input_file(path), desc='reading'))
    n_train = int(len(text) * (1 - val_fraction))
    print(f"length of dataset in characters: {len(text):,}")
    with Output(out_dir) as out:
        out.write('train', gpt2_encoding().encode_ordinary(text[:n_train]))
        out.write('val', gpt2_encoding().encode_ordinary(text[n_train:]))
        out.commit()
