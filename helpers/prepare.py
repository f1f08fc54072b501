"""Writing datasets: the one implementation behind every data/<name>/prepare.py.

A dataset is a folder data/<name>/ holding train.bin and val.bin, flat arrays of token ids (uint16, or
uint32 where meta.pkl says so), and for character-level data meta.pkl: nanoGPT's vocab_size, itos and
stoi, and extra keys only where needed; the folders live under DATA_ROOT (see helpers/__init__.py).
Text is read CHUNK_BYTES at a time, so memory stays flat however large the input. Character level takes
two passes over it: mark_characters marks which code points occur (their sorted list is the vocabulary,
nanoGPT's sorted(set(text))), then write_chars maps each chunk through one lookup array indexed by code
point and appends the ids to the .bin files. Output writes the files under temporary names and renames
them into place once all are whole.
"""
import codecs
import itertools
import os
import pickle
import re
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from helpers import DATA_ROOT, SCRIPTS_ROOT, UserError, shown
from helpers.tokenizer import GPT2_EOT, gpt2_encoding

STARTED = time.time()
CHUNK_BYTES = 1 << 20       # 2-3x faster (measured on the 2-core dev VM) to decode and encode than chunks of 2-8 MB
UNICODE_SIZE = 0x110000     # code points: the length of the lookup arrays
UINT16_SYMBOLS = 65535      # larger vocabularies are stored as uint32, and meta.pkl says 'dtype': 'uint32'
TINY_SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
EOT = '<|endoftext|>'   # GPT-2's end of text (token GPT2_EOT)
STORY_END = re.compile(r'\n[^\S\n]*<\|endoftext\|>[^\S\n]*(?=\n)')   # TinyStories*.txt: a line holding only EOT
STORY_SEPARATOR = '\u2403'  # '␃' (SYMBOL FOR END OF TEXT), written after each story at character level
MAX_STORY_CHARS = 1 << 26   # a longer "story" means the file is not in TinyStories' format
LOCAL_BUILDERS = {'.txt': 'text', '.json': 'json', '.jsonl': 'json', '.parquet': 'parquet'}
WINDOWS_DEVICES = {'con', 'prn', 'aux', 'nul', *(f'{port}{i}' for port in ('com', 'lpt') for i in range(10))}


def check_input_file(path, flag='--input'):
    if not os.path.isfile(path):
        why = 'is not a regular file' if os.path.exists(path) else 'does not exist'
        raise UserError(f"input file {path} {why}; check the path given with {flag}")
    if os.path.getsize(path) == 0:
        raise UserError(f"input file {path} is empty; pass a file that holds some text with {flag}")
    return path


def name_problem(name):
    """What keeps name from being a dataset folder on Linux, macOS and Windows alike, or None. Letters and digits
    of any script count, with their combining marks (é written as e + U+0301, Devanagari vowel signs)."""
    if not name:
        return "is empty"
    odd = sorted({c for c in name if not (c.isalnum() or c in '_-.' or unicodedata.category(c).startswith('M'))})
    if odd:
        return f"holds {' '.join(map(repr, odd))}"
    if not (name[0].isalnum() or name[0] == '_'):
        return f"starts with {name[0]!r}"   # hidden files, command-line options, a mark without its letter
    if name.endswith('.'):
        return "ends with '.', which Windows drops"
    if name.split('.')[0].lower() in WINDOWS_DEVICES:
        return "is a device name on Windows"
    if len(name.encode('utf-8')) > 255:
        return "is longer than the 255 bytes a folder name may take"
    return None


def output_dir(name, force=False, own=None):
    """DATA_ROOT/<name>/, where only the dataset's own prepare.py (own == name) or --force may overwrite a dataset.
    The names of the repository's script folders belong to their scripts' datasets (data/char's to none): another
    dataset under that name would be read with the wrong prepare command's advice, or not at all."""
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
    held = [f for f in ('train.bin', 'val.bin', 'meta.pkl') if os.path.exists(os.path.join(path, f))]
    if held and name != own and not force:
        raise UserError(f"{shown(path)}/ already holds a dataset ({', '.join(held)}); "
                        "choose another --name or pass --force to overwrite it")
    return path


def download(url, path):
    """The file at url saved as path, and path's folder made, unless path is there already."""
    if not os.path.exists(path):
        import urllib.request
        print(f"downloading {url} to {shown(path)}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp.{os.getpid()}"  # one per process: the ranks of a run may download at once
        try:
            urllib.request.urlretrieve(url, tmp)
            os.replace(tmp, path)
        except OSError as e:
            raise UserError(f"could not download {url} ({e}); download it yourself and save it as {path}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


class Output:
    """train.bin, val.bin and meta.pkl of one dataset, written as <name>.tmp and renamed into place by commit().
    Leaving the with-block before that (an error, Ctrl-C) deletes them, and the folder if this made it: an
    interrupted prepare leaves no train.bin that looks finished, and the dataset that was there as it was."""

    def __init__(self, out_dir, dtype=np.uint16, kept=None):
        """kept: {split: bytes} of the .tmp files that an interrupted run left, to append to (ResumableOutput)."""
        self.dir, self.dtype, self.made = out_dir, dtype, not os.path.isdir(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        kept = kept or {'train': 0, 'val': 0}
        self.bins = {}
        for split, size in kept.items():
            self.bins[split] = open(self.path(f'{split}.bin.tmp'), 'r+b' if size else 'wb')
            self.bins[split].truncate(size)   # what a chunk under way at the interruption left goes
            self.bins[split].seek(size)
        self.tokens = {split: size // np.dtype(dtype).itemsize for split, size in kept.items()}

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, split, ids):
        self.bins[split].write(np.asarray(ids, dtype=self.dtype))
        self.tokens[split] += len(ids)

    def commit(self, meta=None):
        for split, name in (('train', 'training'), ('val', 'validation')):
            if not self.tokens[split]:
                raise UserError(f"the source yields no {name} text; give it a non-empty {name} split")
        for f in self.bins.values():
            f.close()
        names = ['train.bin', 'val.bin']
        if meta is not None:
            names.append('meta.pkl')
            with open(self.path('meta.pkl.tmp'), 'wb') as f:
                pickle.dump(meta, f)
        if os.path.exists(self.path('meta.pkl')):   # an old meta.pkl must never describe the new .bin files:
            os.remove(self.path('meta.pkl'))        # it goes first, and the new one comes last
        for name in names:
            os.replace(self.path(name + '.tmp'), self.path(name))
        for split, n in self.tokens.items():
            print(f"{split} has {n:,} tokens")
        print(f"wrote {shown(self.dir)}/ in {time.time() - STARTED:.1f} s")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in self.bins.values():
            f.close()
        for name in ('train.bin.tmp', 'val.bin.tmp', 'meta.pkl.tmp'):   # still there if commit() was not reached
            if os.path.exists(self.path(name)):
                os.remove(self.path(name))
        if self.made and not os.listdir(self.dir):
            os.rmdir(self.dir)


def read_text(path, errors='strict', chunk_bytes=CHUNK_BYTES, desc=None):
    """A file's UTF-8 text in pieces, read chunk_bytes at a time, with a progress bar on stderr. Bytes that are
    not UTF-8 raise a UserError naming the offset of the first one, unless errors='replace' (U+FFFD)."""
    decoder = codecs.getincrementaldecoder('utf-8')(errors)   # it keeps a character cut by a chunk's end
    offset = 0   # of the next chunk in the file
    with open(path, 'rb') as f, tqdm(total=os.path.getsize(path), unit='B', unit_scale=True, desc=desc,
                                     disable=None) as bar:
        while True:
            raw = f.read(chunk_bytes)
            held = len(decoder.getstate()[0])   # bytes of a character begun in the chunk before
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise UserError(f"{path} is not valid UTF-8: byte 0x{e.object[e.start]:02x} at byte offset "
                                f"{offset - held + e.start} ({e.reason}); convert the file to UTF-8 (e.g. iconv -f "
                                "GBK -t UTF-8) or pass --replace_invalid_utf8 to replace undecodable bytes with U+FFFD")
            offset += len(raw)
            bar.update(len(raw))
            if text:
                yield text
            if not raw:
                return


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
    """Pass 2: the dataset of the text in pieces, whose code points pass 1 marked in seen. The vocabulary is those
    code points in order, a character's id its place there. The first n_train characters are train."""
    points = np.flatnonzero(seen)
    chars = [chr(p) for p in points]   # the same str objects in itos and stoi: pickled as nanoGPT's are
    dtype = np.uint16 if len(chars) <= UINT16_SYMBOLS else np.uint32
    print("all the unique characters:", ''.join(chars[:300]) + (' ...' if len(chars) > 300 else ''))
    print(f"vocab size: {len(chars):,}" + (" (stored as uint32)" if dtype == np.uint32 else ''))
    lookup = np.zeros(UNICODE_SIZE, dtype=dtype)
    lookup[points] = np.arange(len(points))
    meta = {'vocab_size': len(chars), 'itos': dict(enumerate(chars)), 'stoi': {ch: i for i, ch in enumerate(chars)}}
    if dtype == np.uint32:
        meta['dtype'] = 'uint32'
    with Output(out_dir, dtype) as out:
        for text in pieces:
            ids = lookup[code_points(text)]
            room = n_train - out.tokens['train']   # what train.bin still takes: 0 once it is full
            out.write('train', ids[:room])
            out.write('val', ids[room:])
        out.commit(dict(meta, **meta_extra))


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


def story_text(batches, separator):
    """The text of batches of stories (lists), each story followed by the separator: a piece per batch."""
    for stories in batches:
        text = separator.join(stories + [''])
        if text.count(separator) != len(stories):
            raise UserError(f"a story contains the separator {separator!r} (U+{ord(separator):04X}) itself; "
                            "choose another character with --separator")
        yield text


def chars_from_stories(sources, out_dir, separator=STORY_SEPARATOR):
    """Character level from story_sources, the separator after each story (kept as meta['separator']): train.bin
    from the train split, val.bin from the validation split, a vocabulary covering both."""
    if len(separator) != 1:
        raise UserError(f"--separator={separator!r} must be a single character")
    seen = np.zeros(UNICODE_SIZE, dtype=bool)
    n = {split: mark_characters(story_text(sources[split](), separator), seen) for split in ('train', 'val')}
    print(f"length of dataset in characters: {n['train'] + n['val']:,}")
    text = itertools.chain(story_text(sources['train'](), separator), story_text(sources['val'](), separator))
    write_chars(out_dir, seen, text, n['train'], separator=separator)


# ----------------------------------------------------------------------------- TinyStories and other sources

def txt_stories(path, errors='strict', chunk_bytes=CHUNK_BYTES, desc=None):
    """The stories of a TinyStories*.txt file, a list per chunk read. A line holding only <|endoftext|> (spaces or
    '\\r' around it allowed) ends a story; stories are stripped of surrounding whitespace, empty ones dropped."""
    rest = '\n'   # the text after the last story end; STORY_END starts at the newline before its line
    for text in read_text(path, errors, chunk_bytes, desc):
        text = rest + text
        whole_lines = text.rfind('\n') + 1   # STORY_END must see the newline that ends its line
        *stories, rest = STORY_END.split(text[:whole_lines])
        rest += text[whole_lines:]
        if len(rest) > MAX_STORY_CHARS:
            raise UserError(f"{path} has over {MAX_STORY_CHARS:,} characters without a line holding {EOT}: "
                            "it is not in TinyStories' format; for plain text use data/char/prepare.py")
        yield [s for s in map(str.strip, stories) if s]
    yield [s for s in map(str.strip, STORY_END.split(rest + '\n')) if s]


def dataset_stories(dset, desc):
    """The stories of a Hugging Face datasets split (its 'text' column), a list per batch, as txt_stories."""
    if 'text' not in dset.column_names:
        raise UserError(f"the source has no 'text' column (columns: {', '.join(dset.column_names)}); "
                        "give it one with the stories")
    with tqdm(total=len(dset), unit=' stories', desc=desc, disable=None) as bar:
        for batch in dset.iter(batch_size=8192):
            bar.update(len(batch['text']))
            yield [s for s in (text.strip() for text in batch['text'] if text) if s]


def load_documents(hub_name=None, data_files=None, num_proc=None):
    """A datasets.DatasetDict of the hub's hub_name, or of local data_files ({split: [files]}) through the same
    load_dataset call: all .txt files (a document each), all .json/.jsonl or all .parquet."""
    from datasets import load_dataset
    if data_files:
        exts = {os.path.splitext(f)[1] for files in data_files.values() for f in files}
        builders = {LOCAL_BUILDERS.get(ext) for ext in exts}
        if None in builders or len(builders) > 1:
            raise UserError(f"give files of one type, .txt, .json/.jsonl or .parquet, not {' and '.join(sorted(exts))}")
        builder = builders.pop()
        return load_dataset(builder, data_files=data_files, num_proc=num_proc,
                            **({'sample_by': 'document'} if builder == 'text' else {}))
    try:
        return load_dataset(hub_name, num_proc=num_proc)
    except RuntimeError as e:
        if 'scripts are no longer supported' in str(e):
            raise UserError(f"the hub copy of {hub_name} still needs a loading script, which this version of "
                            "datasets cannot run; download its files and pass them with --source")
        raise


def story_arguments(description, own):
    """The command line of data/tinystories*/prepare.py, for story_sources."""
    import argparse
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--train_file', help="local train stories: TinyStories*-train.txt ('<|endoftext|>' lines "
                                             "between stories) or .json/.jsonl/.parquet with a 'text' field")
    parser.add_argument('--val_file', help='local validation stories, same format as --train_file')
    parser.add_argument('--hub_name', default='roneneldan/TinyStories', help='the Hugging Face dataset')
    parser.add_argument('--hub_txt', choices=['TinyStories', 'TinyStoriesV2-GPT4'],
                        help="download this .txt pair from the hub dataset's repository and read it")
    parser.add_argument('--name', default=own, help=f'output folder data/<name>/ (default {own})')
    parser.add_argument('--force', action='store_true', help='overwrite data/<name>/ when it holds another dataset')
    parser.add_argument('--replace_invalid_utf8', action='store_true',
                        help='replace bytes that are not UTF-8 with U+FFFD instead of stopping')
    return parser


def story_sources(args):
    """{'train': f, 'val': f}, f() yielding a split's stories a list at a time, and able to start again: from the
    hub load of --hub_name; from --train_file/--val_file, TinyStories*.txt files or .json/.jsonl/.parquet files
    with a 'text' field, which go through load_dataset like the hub; or from the hub's --hub_txt .txt pair."""
    files = {'train': args.train_file, 'val': args.val_file}
    if args.hub_txt:
        from huggingface_hub import hf_hub_download
        files = {split: hf_hub_download(args.hub_name, f'{args.hub_txt}-{name}.txt', repo_type='dataset')
                 for split, name in (('train', 'train'), ('val', 'valid'))}
    if bool(files['train']) != bool(files['val']):
        raise UserError("give both --train_file and --val_file (or neither, to load the hub dataset)")
    for path in filter(None, files.values()):
        check_input_file(path, '--train_file/--val_file')
    if files['train'] and all(path.endswith('.txt') for path in files.values()):
        errors = 'replace' if args.replace_invalid_utf8 else 'strict'
        return {split: lambda path=path, split=split: txt_stories(path, errors, desc=f'{split} stories')
                for split, path in files.items()}
    local = {'train': [files['train']], 'validation': [files['val']]} if files['train'] else None
    dsets = load_documents(args.hub_name, local)
    if 'validation' not in dsets:
        raise UserError(f"the source has no validation split (splits: {', '.join(dsets)}); "
                        "give one with --train_file and --val_file")
    return {'train': lambda: dataset_stories(dsets['train'], 'train stories'),
            'val': lambda: dataset_stories(dsets['validation'], 'val stories')}


# ----------------------------------------------------------------------------- GPT-2 BPE

def gpt2_tokens(docs):
    """Each document's encode_ordinary tokens, then GPT2_EOT: one tiktoken call on the documents joined by the
    EOT text, which it cuts at, encoding each piece ordinarily (1.3x one call per document on the 2-core
    dev VM)."""
    joined = EOT.join(docs + [''])
    if joined.count(EOT) != len(docs):   # a document holds that text itself, which must stay ordinary text
        encoding = gpt2_encoding()
        return np.array([t for doc in docs for t in encoding.encode_ordinary(doc) + [GPT2_EOT]], dtype=np.uint32)
    return gpt2_encoding().encode_to_numpy(joined, allowed_special={EOT})


def usable_cores():
    """The cores this process may run on (a cpuset or taskset can allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def gpt2_from_stories(sources, out_dir):
    """GPT-2 BPE from story_sources, GPT2_EOT after each story; uint16, no meta.pkl. A batch of stories per
    core is encoded at a time, in threads: tiktoken lets go of the GIL (1.8x on the 2-core dev VM)."""
    stories = {'train': 0, 'val': 0}
    cores = usable_cores()
    with Output(out_dir) as out, ThreadPoolExecutor(cores) as pool:
        for split in ('train', 'val'):
            batches = sources[split]()
            while group := list(itertools.islice(batches, cores)):
                for tokens in pool.map(gpt2_tokens, group):
                    out.write(split, tokens)
                stories[split] += sum(map(len, group))
        print(f"{stories['train']:,} train and {stories['val']:,} val stories")
        out.commit()


def gpt2_from_file(path, out_dir, val_fraction=0.1):
    """nanoGPT's shakespeare: a small text split by characters (the first int(n * (1 - val_fraction)) are train),
    each part encoded whole."""
    text = ''.join(read_text(check_input_file(path)))
    n_train = int(len(text) * (1 - val_fraction))
    print(f"length of dataset in characters: {len(text):,}")
    with Output(out_dir) as out:
        out.write('train', gpt2_encoding().encode_ordinary(text[:n_train]))
        out.write('val', gpt2_encoding().encode_ordinary(text[n_train:]))
        out.commit()

