"""Writing datasets for data/*/prepare.py: DATA_ROOT/<name>/, one prepare at a time; its files move in by one swap."""
import argparse
import contextlib
import os
import pickle
import time
import unicodedata
import urllib.request

import numpy as np

from helpers import DATA_ROOT, SCRIPTS_ROOT, UserError, files, shown

STARTED = time.time()
TINY_SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
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
    """Why name cannot be a folder on Linux, macOS and Windows, or None; any script's letters and marks count."""
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
    if problem := name_problem(name):
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

def own_text_arguments(doc):
    """The command line of data/char and data/bpe: a text file of the user's own to a dataset of a name."""
    parser = argparse.ArgumentParser(description=doc.split('\n\n')[0])
    parser.add_argument('--input', required=True, help='a UTF-8 text file')
    parser.add_argument('--name', required=True, help='the dataset name: output goes to data/<name>/')
    parser.add_argument('--val_fraction', type=float, default=0.1, help='share of characters for val')
    parser.add_argument('--val_split', default='end', choices=('end', 'spread'),
                        help="val from the end of the text (nanoGPT's) or in parts spread across it")
    parser.add_argument('--force', action='store_true', help='overwrite data/<name>/ when it already holds a dataset')
    parser.add_argument('--replace_invalid_utf8', dest='errors', action='store_const', const='replace',
                        default='strict', help='replace bytes that are not UTF-8 with U+FFFD instead of stopping')
    return parser

def download(url, path):
    """The file at url saved as path, unless path is there already."""
    if not os.path.exists(path):
        print(f"downloading {url} to {shown(path)}")
        try:
            files.write_atomically(path, lambda tmp: urllib.request.urlretrieve(url, tmp))
        except OSError as e:
            raise UserError(f"could not download {url} ({e}); download it yourself and save it as {path}")
    return path

class Output(contextlib.AbstractContextManager):
    """train.bin, val.bin and meta.pkl as .tmp files, which commit() moves in (one swap) and an early exit deletes."""

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
            # readers take uint16 unless meta.pkl says otherwise
            pickle.dump(dict(meta, dtype='uint32') if self.dtype == np.uint32 else meta, written[-1])
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

    def __exit__(self, *exc):
        for f in self.bins.values():
            f.close()
        for name in self.temporary:
            files.remove(self.path(name))

def usable_cores():
    """The cores this process may run on (a cpuset or taskset can allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
