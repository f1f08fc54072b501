"""Writing datasets: the one implementation behind every data/<name>/prepare.py.

A prepared dataset is a folder data/<name>/ holding train.bin and val.bin (flat arrays of
token ids, uint16 unless meta.pkl says 'uint32') and, for character-level datasets,
meta.pkl (vocab_size, itos, stoi, and extra keys only where needed). dataset.py reads them.

Everything here streams: text is read and decoded in chunks of CHUNK_BYTES, so memory stays
flat however large the input is. Character-level data takes two passes over the input:
pass 1 finds the vocabulary (the sorted set of code points) and counts characters, pass 2
maps every chunk through a lookup table indexed by code point. GPT-2 BPE goes through
tiktoken, many documents per call, on all cores.

Every output file is written under a temporary name and renamed only when all of them are
complete, so an interrupted prepare never leaves a train.bin that looks finished.
Mistakes a user can fix raise errors.UserError (one line, exit status 1).
"""
import codecs
import ctypes
import glob
import os
import pickle
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from helpers import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_ROOT = os.path.join(REPO_ROOT, 'data')

CHUNK_BYTES = 8 << 20           # bytes of input decoded at a time
UNICODE_SIZE = 0x110000         # number of Unicode code points: the size of the lookup tables
UINT16_SYMBOLS = 65535          # vocabularies above this many symbols are stored as uint32
SLICE = 1 << 20                 # code points per numpy lookup: intermediates stay in the CPU cache

# tiny shakespeare, as both shakespeare datasets download it when input.txt is missing
TINY_SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'

STORY_LINE = '<|endoftext|>'    # TinyStories*.txt: a line holding only this ends a story
PLAIN_SEPARATOR_LINE = f'\n{STORY_LINE}\n'
STORY_SEPARATOR = '\u2403'      # '␃' (SYMBOL FOR END OF TEXT): written after each story at character level
MAX_STORY_CHARS = 1 << 26       # a "story" longer than this means the file is not in TinyStories' format
GPT2_EOT = 50256                # GPT-2's <|endoftext|> token id
TINYSTORIES_HUB = 'roneneldan/TinyStories'


# ----------------------------------------------------------------------------- small helpers

def progress(**kwargs):
    """A tqdm bar on stderr. Silent when stderr is not a terminal, so logs and tests stay clean."""
    kwargs.setdefault('disable', None)
    kwargs.setdefault('dynamic_ncols', True)
    return tqdm(**kwargs)


def keep_freed_memory():
    """Ask glibc to keep freed memory for reuse instead of returning it to the kernel.

    Preparing data allocates and frees buffers of tens of MB per chunk. By default glibc
    hands each back to the kernel and every next chunk faults the pages in again, zeroed:
    on a small VM that costs more system time than the encoding itself. Memory stays
    bounded (the same few buffers are reused). A no-op where glibc is not the C library.
    """
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(-3, 512 << 20)   # M_MMAP_THRESHOLD: serve blocks up to 512 MB from the heap
        libc.mallopt(-1, 1 << 30)     # M_TRIM_THRESHOLD: keep up to 1 GB of free heap
    except (OSError, AttributeError):
        pass


def cpu_cores():
    """Cores this process may run on (its affinity mask, which os.cpu_count() ignores)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def show_path(path):
    """A path relative to the repo root when it lies inside it (for messages)."""
    rel = os.path.relpath(os.path.abspath(path), REPO_ROOT)
    return path if rel.startswith('..') else rel


def check_input_file(path, flag='--input'):
    """The input file must exist, be a file and hold at least one byte."""
    if not path:
        raise UserError(f"no input file given; pass one with {flag}=path/to/text.txt")
    if not os.path.exists(path):
        raise UserError(f"input file {path} does not exist; check the path given with {flag}")
    if not os.path.isfile(path):
        raise UserError(f"input {path} is not a regular file; pass a text file with {flag}")
    if os.path.getsize(path) == 0:
        raise UserError(f"input file {path} is empty; pass a file that holds some text with {flag}")
    return path


def output_dir(name, force=False, own=None):
    """The path of the folder data/<name>/ (created when the dataset is written).

    A dataset's own prepare.py (own == name) may always rewrite its folder. Any other --name
    must not overwrite a folder that already holds a dataset unless force is set.
    """
    if not re.fullmatch(r'[A-Za-z0-9_][A-Za-z0-9_.-]*', name or ''):
        raise UserError(f"--name={name!r} is not a plain folder name; use letters, digits, '_', '-' or '.', "
                        "e.g. --name=my_novel")
    path = os.path.join(DATA_ROOT, name)
    if name != own and not force and os.path.isdir(path):
        held = [f for f in ('train.bin', 'val.bin', 'meta.pkl', 'prepare.py') if os.path.exists(os.path.join(path, f))]
        if held:
            raise UserError(f"data/{name}/ already holds a dataset ({', '.join(held)}); "
                            f"choose another --name or pass --force to overwrite it")
    return path


def download(url, path):
    """Fetch url to path unless path exists already (written under a temporary name first)."""
    if os.path.exists(path):
        return path
    import requests
    print(f"downloading {url}")
    try:
        response = requests.get(url, timeout=60)
        response.raise_for_status()
    except requests.RequestException as e:
        raise UserError(f"could not download {url} ({e}); download it yourself and save it as {path}")
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(response.content)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- writing outputs

class TokenFile:
    """A .bin file being written: ids appended in order, under <path>.tmp until committed."""

    def __init__(self, path, dtype):
        self.path = path
        self.tmp = path + '.tmp'
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._file = open(self.tmp, 'wb')

    def write(self, ids):
        ids = np.asarray(ids)
        if ids.dtype != self.dtype:
            if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(self.dtype).max):
                raise ValueError(f"token ids {ids.min()}..{ids.max()} do not fit {self.dtype}")
            ids = ids.astype(self.dtype)
        self._file.write(np.ascontiguousarray(ids).data)
        self.count += ids.size

    def finish(self):
        if not self._file.closed:
            self._file.close()

    def discard(self):
        self._file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


class OutputFolder:
    """The files of one prepared dataset, renamed into place together.

    with OutputFolder(path) as out:
        train = out.tokens('train', np.uint16); train.write(ids) ...
        out.set_meta({...})      # character-level datasets only
        out.commit()
    Leaving the block without commit() (an error, Ctrl-C) deletes the temporary files (and
    the folder, if this created it) and leaves whatever was there before untouched.
    """

    def __init__(self, path):
        self.path = path
        self.files = {}
        self.meta = None
        self.committed = False
        self.created = False
        self.scratch_files = []

    def __enter__(self):
        self.created = not os.path.isdir(self.path)
        os.makedirs(self.path, exist_ok=True)
        return self

    def tokens(self, split, dtype):
        self.files[split] = TokenFile(os.path.join(self.path, f'{split}.bin'), dtype)
        return self.files[split]

    def set_meta(self, meta):
        self.meta = meta

    def scratch(self, name):
        """Path of a scratch file <name>.tmp in the folder, deleted when the block ends."""
        path = os.path.join(self.path, name + '.tmp')
        self.scratch_files.append(path)
        return path

    def commit(self):
        meta_path = os.path.join(self.path, 'meta.pkl')
        if self.meta is not None:
            with open(meta_path + '.tmp', 'wb') as f:
                pickle.dump(self.meta, f)
        for token_file in self.files.values():
            token_file.finish()
        # An old meta.pkl must never describe new .bin files: it goes first, the new one comes last.
        if os.path.exists(meta_path):
            os.remove(meta_path)
        for token_file in self.files.values():
            os.replace(token_file.tmp, token_file.path)
        if self.meta is not None:
            os.replace(meta_path + '.tmp', meta_path)
        self.committed = True

    def __exit__(self, exc_type, exc, tb):
        for path in self.scratch_files:
            if os.path.exists(path):
                os.remove(path)
        if not self.committed:
            for token_file in self.files.values():
                token_file.discard()
            if os.path.exists(os.path.join(self.path, 'meta.pkl.tmp')):
                os.remove(os.path.join(self.path, 'meta.pkl.tmp'))
            if self.created and not os.listdir(self.path):
                os.rmdir(self.path)
        return False


# ----------------------------------------------------------------------------- reading text

def read_chunks(path, errors='strict', chunk_bytes=CHUNK_BYTES, desc=None):
    """Yield (raw bytes, decoded text) for a file read in chunks of chunk_bytes bytes.

    An incremental decoder carries a character whose bytes straddle two chunks. Bytes that
    are not UTF-8 raise a UserError naming the absolute byte offset of the first bad byte,
    unless errors='replace' (each bad byte sequence becomes U+FFFD).
    """
    decoder = codecs.getincrementaldecoder('utf-8')(errors)
    fed = 0   # bytes handed to the decoder so far
    with open(path, 'rb') as f, progress(total=os.path.getsize(path), unit='B', unit_scale=True,
                                         unit_divisor=1024, desc=desc or os.path.basename(path)) as bar:
        while True:
            raw = f.read(chunk_bytes)
            held = len(decoder.getstate()[0])   # bytes of an unfinished character from the last chunk
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                offset = fed - held + e.start
                raise UserError(f"{path} is not valid UTF-8: byte 0x{e.object[e.start]:02x} at byte offset {offset} "
                                f"({e.reason}); convert the file to UTF-8 (e.g. iconv -f GBK -t UTF-8) or pass "
                                f"--replace_invalid_utf8 to replace undecodable bytes with U+FFFD")
            fed += len(raw)
            bar.update(len(raw))
            if raw or text:
                yield raw, text
            if not raw:
                return


def read_text(path, errors='strict', chunk_bytes=CHUNK_BYTES, desc=None):
    """Yield the UTF-8 text of a file in pieces (see read_chunks); no character is ever cut in two."""
    for _, text in read_chunks(path, errors, chunk_bytes, desc):
        if text:
            yield text


def code_points(text):
    """The code points of a str as a numpy array, in the narrowest of uint8/uint16/uint32 that holds them."""
    if text.isascii():
        return np.frombuffer(text.encode('ascii'), dtype=np.uint8)
    utf16 = text.encode('utf-16-le')
    if len(utf16) == 2 * len(text):      # no surrogate pairs: every character is in the BMP
        return np.frombuffer(utf16, dtype=np.uint16)
    return np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)


def _story_lines_split(block, partial, separator=None):
    """Cut a block of whole lines at the lines holding only STORY_LINE.

    partial: pieces of the story still open from earlier blocks (extended in place).
    Returns the stories completed in this block, stripped of surrounding whitespace, as a
    list; or, given a separator character, as join_stories does.
    """
    markers = block.count(STORY_LINE)
    if markers == 0:
        partial.append(block)
        return [] if separator is None else (b'', 0, 0)
    if block.count(PLAIN_SEPARATOR_LINE) == markers:
        # The usual case, and fast: every marker has a newline on both sides, so each is a line of its own.
        last = block.rfind(PLAIN_SEPARATOR_LINE)
        partial.append(block[:last])
        head = ''.join(partial)
        partial.clear()
        partial.append(block[last + len(PLAIN_SEPARATOR_LINE):])
        if separator is not None and separator not in head:
            # Character level needs no story strings when none has whitespace to strip and none is empty.
            text = head.replace(PLAIN_SEPARATOR_LINE, separator) + separator
            data = text.encode('utf-8')
            if _stories_are_clean(data, separator):
                return data, len(text), markers
        stories = [story for story in map(str.strip, head.split(PLAIN_SEPARATOR_LINE)) if story]
    else:
        stories = _split_at_marker_lines(block, partial)
    return stories if separator is None else join_stories(stories, separator)


_ASCII_SPACE = np.array([chr(b).isspace() for b in range(128)] + [False] * 128)
_SPACE_FIRST_BYTES = np.isin(np.arange(256), [ch.encode()[0] for ch in map(chr, range(128, 0x3001)) if ch.isspace()])
_SPACE_LAST_BYTES = np.isin(np.arange(256), [ch.encode()[-1] for ch in map(chr, range(128, 0x3001)) if ch.isspace()])


def _stories_are_clean(data, separator):
    """Whether no story in data (UTF-8, every story followed by separator) is empty or starts
    or ends with whitespace, i.e. whether str.strip would leave every story as it is."""
    sep = separator.encode('utf-8')
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == sep[-1]) - (len(sep) - 1)   # where each separator starts (UTF-8 is
    ends = ends[ends >= 0]                                   # self-synchronizing: a match is a character)
    for i in range(len(sep) - 1):
        ends = ends[arr[ends + i] == sep[i]]
    starts = np.concatenate([[0], ends[:-1] + len(sep)])
    if len(ends) == 0 or (starts == ends).any():   # an empty story
        return False
    first, last = arr[starts], arr[ends - 1]
    if _ASCII_SPACE[first].any() or _ASCII_SPACE[last].any():
        return False
    # Non-ASCII whitespace (U+00A0, U+3000, ...) is rare: decode only characters whose bytes could be one.
    return not (any(data[p:p + 4].decode('utf-8', 'ignore')[:1].isspace() for p in starts[_SPACE_FIRST_BYTES[first]])
                or any(data[max(p - 4, 0):p].decode('utf-8', 'ignore')[-1:].isspace()
                       for p in ends[_SPACE_LAST_BYTES[last]]))


def _split_at_marker_lines(block, partial):
    """_story_lines_split for any block: markers may have spaces or '\r' around them, or be inside a line."""
    pieces = block.split(STORY_LINE)
    stories = []
    before = pieces[0]   # starts at the beginning of a line, as every block does
    for i in range(1, len(pieces)):
        after = pieces[i]
        nl = before.rfind('\n')
        starts_line = not before[nl + 1:].strip()
        nl_after = after.find('\n')
        if nl_after >= 0:
            ends_line = not after[:nl_after].strip()
        else:   # only the last piece of the file's last line may lack a newline
            ends_line = i == len(pieces) - 1 and not after.strip()
        if starts_line and ends_line:
            partial.append(before[:nl + 1])
            story = ''.join(partial).strip()
            partial.clear()
            if story:
                stories.append(story)
            before = after[nl_after + 1:] if nl_after >= 0 else ''
        else:   # the marker is part of a longer line: it is story text
            before = before + STORY_LINE + after
    partial.append(before)
    return stories


def join_stories(stories, separator):
    """(UTF-8 text, characters, stories): each story followed by the separator, which no story may contain."""
    text = separator.join(stories) + separator if stories else ''
    if text.count(separator) != len(stories):
        raise UserError(f"a story contains the separator {separator!r} (U+{ord(separator):04X}) itself; "
                        "choose another character with --separator")
    return text.encode('utf-8'), len(text), len(stories)


def txt_story_batches(path, errors='strict', chunk_bytes=CHUNK_BYTES, desc=None, separator=None):
    """Stories of a TinyStories*.txt file: a list per chunk read, or with a separator
    (UTF-8 text, characters, stories) per chunk, each story followed by the separator.

    Stories are separated by a line holding only '<|endoftext|>' (surrounding spaces and a
    '\\r' allowed). Each story is stripped of surrounding whitespace; empty ones are dropped.
    """
    check_input_file(path, '--train_file/--val_file')
    partial, tail = [], ''   # tail: the last, unfinished line read so far
    for text in read_text(path, errors, chunk_bytes, desc):
        text = tail + text
        cut = text.rfind('\n') + 1
        block, tail = text[:cut], text[cut:]
        if block:
            done = _story_lines_split(block, partial, separator)
            if done if separator is None else done[2]:
                yield done
        if len(tail) + sum(map(len, partial)) > MAX_STORY_CHARS:
            raise UserError(f"{path} has over {MAX_STORY_CHARS:,} characters without a line holding {STORY_LINE}: "
                            "it is not in TinyStories' format; for plain text use data/char/prepare.py")
    stories = _story_lines_split(tail, partial) if tail else []
    last = ''.join(partial).strip()
    if last:
        stories.append(last)
    if stories:
        yield stories if separator is None else join_stories(stories, separator)


def dataset_story_batches(dset, batch_size=8192, desc=None, separator=None):
    """Stories of a Hugging Face datasets split (its 'text' column), stripped, empty ones dropped:
    a list per batch, or with a separator (UTF-8 text, characters, stories) as txt_story_batches."""
    if 'text' not in dset.column_names:
        raise UserError(f"the source has no 'text' column (columns: {', '.join(dset.column_names)}); "
                        "give it one with the stories")
    with progress(total=len(dset), unit=' stories', unit_scale=True, desc=desc) as bar:
        for batch in dset.iter(batch_size=batch_size):
            texts = batch['text']
            bar.update(len(texts))
            stories = [s for s in (t.strip() for t in texts if t) if s]
            if stories:
                yield stories if separator is None else join_stories(stories, separator)


# ----------------------------------------------------------------------------- sources of documents

LOCAL_BUILDERS = {'.txt': 'text', '.json': 'json', '.jsonl': 'json', '.parquet': 'parquet'}


def local_files(source):
    """Files named by a path, a folder or a glob, sorted (so the order, and the output, is deterministic)."""
    if os.path.isdir(source):
        files = [os.path.join(root, f) for root, _, names in os.walk(source) for f in names]
        files = [f for f in files if os.path.splitext(f)[1] in LOCAL_BUILDERS]
    else:
        files = glob.glob(source, recursive=True) if glob.has_magic(source) else [source]
    files = sorted(f for f in files if os.path.isfile(f))
    if not files:
        raise UserError(f"--source={source} names no files; give a file, a folder or a glob of "
                        ".txt, .json, .jsonl or .parquet files")
    kinds = {LOCAL_BUILDERS.get(os.path.splitext(f)[1]) for f in files}
    if None in kinds or len(kinds) > 1:
        raise UserError(f"--source={source} mixes or includes unsupported file types; give only .txt files "
                        "(one document per file), or only .json/.jsonl, or only .parquet files (a 'text' field each)")
    for f in files:
        if os.path.getsize(f) == 0:
            raise UserError(f"input file {f} is empty; remove it from --source")
    return kinds.pop(), files


def load_documents(hub_name=None, data_files=None, num_proc=None):
    """A datasets.DatasetDict: from the Hugging Face hub (hub_name) or from local files.

    data_files: {split: [files]} of one type (see local_files); text files are read one
    document per file. The local path goes through the same load_dataset call as the hub.
    """
    from datasets import load_dataset
    if data_files:
        builder = {LOCAL_BUILDERS[os.path.splitext(fs[0])[1]] for fs in data_files.values()}
        if len(builder) > 1:
            raise UserError("the train and validation files must be of one type (.txt, .json/.jsonl or .parquet)")
        builder = builder.pop()
        extra = {'sample_by': 'document'} if builder == 'text' else {}
        return load_dataset(builder, data_files=data_files, num_proc=num_proc, **extra)
    try:
        return load_dataset(hub_name, num_proc=num_proc)
    except RuntimeError as e:
        if 'scripts are no longer supported' in str(e):
            raise UserError(f"the hub copy of {hub_name} still needs a loading script, which this version of "
                            "datasets cannot run; download its files and pass them with --source")
        raise


def story_sources(train_file=None, val_file=None, hub_name=TINYSTORIES_HUB, hub_txt=None, errors='strict'):
    """{'train': f, 'val': f}: f() yields lists of stories, f(separator) yields (UTF-8 text,
    characters, stories) with the separator after each story (see txt_story_batches); f can
    be called again.

    Sources: the Hugging Face datasets load of hub_name (train and validation splits, the
    default); local files given as train_file/val_file: TinyStories*.txt files (stories
    separated by '<|endoftext|>' lines), or .json/.jsonl/.parquet files with a 'text' field,
    which go through load_dataset like the hub; or hub_txt, the prefix of a .txt pair in the
    dataset's hub repository ('TinyStories' or 'TinyStoriesV2-GPT4'), downloaded first.
    """
    if hub_txt:
        from huggingface_hub import hf_hub_download
        train_file, val_file = (hf_hub_download(hub_name, f'{hub_txt}-{s}.txt', repo_type='dataset')
                                for s in ('train', 'valid'))
    if bool(train_file) != bool(val_file):
        raise UserError("give both --train_file and --val_file (or neither, to load the hub dataset)")
    if train_file:
        for f in (train_file, val_file):
            check_input_file(f, '--train_file/--val_file')
        exts = {os.path.splitext(f)[1] for f in (train_file, val_file)}
        if exts == {'.txt'}:
            return {split: lambda sep=None, path=path, desc=f'{split} stories':
                    txt_story_batches(path, errors, desc=desc, separator=sep)
                    for split, path in (('train', train_file), ('val', val_file))}
        if not exts <= set(LOCAL_BUILDERS) or len({LOCAL_BUILDERS[e] for e in exts}) > 1:
            raise UserError(f"--train_file/--val_file must both be .txt (TinyStories' format) or both "
                            f".json/.jsonl or .parquet, not {' and '.join(sorted(exts))}")
        dsets = load_documents(data_files={'train': [train_file], 'validation': [val_file]})
    else:
        dsets = load_documents(hub_name)
    if 'validation' not in dsets:
        raise UserError(f"the source has no validation split (splits: {', '.join(dsets)}); "
                        "give one with --train_file and --val_file")
    return {'train': lambda sep=None: dataset_story_batches(dsets['train'], desc='train stories', separator=sep),
            'val': lambda sep=None: dataset_story_batches(dsets['validation'], desc='val stories', separator=sep)}


# ----------------------------------------------------------------------------- characters

class CharVocab:
    """A character vocabulary: ids 0..size-1 for the sorted code points, as nanoGPT's
    sorted(set(text)). Encoding is a lookup table indexed by code point."""

    def __init__(self, points):
        points = sorted(int(p) for p in points)
        self.chars = [chr(p) for p in points]   # the same str objects go into itos and stoi
        self.size = len(points)
        self.dtype = np.dtype(np.uint16 if self.size <= UINT16_SYMBOLS else np.uint32)
        self.points = np.array(points, dtype=np.uint32)
        self.known = np.zeros(UNICODE_SIZE, dtype=bool)
        self.known[self.points] = True
        self.table = np.zeros(UNICODE_SIZE, dtype=self.dtype)
        self.table[self.points] = np.arange(self.size, dtype=self.dtype)

    @classmethod
    def from_meta(cls, meta):
        return cls(ord(meta['itos'][i]) for i in range(meta['vocab_size']))

    def meta(self, **extra):
        """meta.pkl's dict: nanoGPT's three keys, 'dtype' only when not uint16, then extras. Builtins only."""
        meta = {'vocab_size': self.size,
                'itos': {i: ch for i, ch in enumerate(self.chars)},
                'stoi': {ch: i for i, ch in enumerate(self.chars)}}
        if self.dtype != np.uint16:
            meta['dtype'] = self.dtype.name
        meta.update(extra)
        return meta

    def lookup(self, text):
        """Ids of text (a str or its code_points), all of whose characters must be in the vocabulary (not checked)."""
        points = code_points(text) if isinstance(text, str) else text
        ids = np.empty(len(points), dtype=self.dtype)
        for i in range(0, len(points), SLICE):   # slices that stay in cache are twice as fast
            np.take(self.table, points[i:i + SLICE], out=ids[i:i + SLICE])
        return ids

    def encode(self, text):
        """Ids of text; a UserError names the first character that is not in the vocabulary."""
        points = code_points(text)
        unknown = ~self.known[points]
        if unknown.any():
            ch = chr(int(points[np.argmax(unknown)]))
            raise UserError(f"character {ch!r} (U+{ord(ch):04X}) is not in this dataset's vocabulary; "
                            "use only characters from the training text")
        return self.table[points]

    def decode(self, ids):
        return self.points[np.asarray(ids, dtype=np.int64)].astype('<u4').tobytes().decode('utf-32-le')


def mark_characters(points, seen):
    """Set seen[p] for every code point p in points (a numpy array)."""
    for i in range(0, len(points), SLICE):
        part = points[i:i + SLICE]
        if not seen[part].all():   # reading is cheaper than writing, and new characters are rare
            seen[part] = True


def scan_characters(chunks, seen):
    """Pass 1 over a stream of text: mark every code point in seen (a bool table); return the character count."""
    count = 0
    for text in chunks:
        mark_characters(code_points(text), seen)
        count += len(text)
    return count


def mark_utf8_characters(data, seen, decoder=None, final=True):
    """Mark the code points of UTF-8 bytes in seen, cheaply.

    An ASCII byte is always a whole character in UTF-8, so deleting the bytes of the ASCII
    characters already seen (bytes.translate, a fraction of a second per GB) leaves valid
    UTF-8 holding only the other characters: usually a tiny remainder to decode and mark.
    decoder: an incremental UTF-8 decoder when data is one of a series of chunks that may
    cut characters in two. The data must be valid UTF-8 (checked by the caller).
    """
    known_ascii = np.flatnonzero(seen[:128]).astype(np.uint8).tobytes()
    rest = data.translate(None, known_ascii)
    rest = decoder.decode(rest, final) if decoder else rest.decode('utf-8')
    if rest:
        mark_characters(code_points(rest), seen)


def scan_file(path, errors, seen, desc=None):
    """Pass 1 over a text file: mark its code points in seen, return its character count."""
    if errors != 'strict':   # replacement characters would not survive deleting bytes: scan all of it
        return scan_characters(read_text(path, errors, desc=desc), seen)
    decoder = codecs.getincrementaldecoder('utf-8')()
    count = 0
    for raw, text in read_chunks(path, errors, desc=desc):   # decoding all of it checks that it is UTF-8
        count += len(text)
        mark_utf8_characters(raw, seen, decoder, final=not raw)
    return count


class _Pipeline:
    """Runs write(ids) for one chunk in a worker thread while the caller decodes the next chunk
    (numpy's lookup and file writes release the GIL). Calls run in order; errors surface in the caller."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(1)
        self.pending = None

    def submit(self, fn, *args):
        self.wait()
        self.pending = self.pool.submit(fn, *args)

    def wait(self):
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.wait()
        finally:
            self.pool.shutdown(wait=True)
        return False


def show_vocabulary(vocab):
    chars = ''.join(vocab.chars)
    print("all the unique characters:", chars if len(chars) <= 300 else chars[:300] + ' ...')
    print(f"vocab size: {vocab.size:,}" + (" (stored as uint32)" if vocab.dtype == np.uint32 else ''))


def prepare_char_file(input_path, out_dir, val_fraction=0.1, errors='strict'):
    """Character-level dataset from one UTF-8 text file (shakespeare_char, data/char).

    Split rule: the first int(n * (1 - val_fraction)) characters are train, the rest val.
    With val_fraction=0.1 this is byte-for-byte nanoGPT's shakespeare_char.
    """
    start = time.time()
    keep_freed_memory()
    check_input_file(input_path)
    if not 0 < val_fraction < 1:
        raise UserError(f"--val_fraction={val_fraction} must lie strictly between 0 and 1, e.g. 0.1")
    seen = np.zeros(UNICODE_SIZE, dtype=bool)
    n = scan_file(input_path, errors, seen, desc='pass 1/2: vocabulary')
    n_train = int(n * (1 - val_fraction))
    if n - n_train == 0 or n_train == 0:
        raise UserError(f"{input_path} has only {n:,} characters, too few for a train and a val split; "
                        "use a longer text or another --val_fraction")
    print(f"length of dataset in characters: {n:,}")
    vocab = CharVocab(np.flatnonzero(seen))
    show_vocabulary(vocab)
    with OutputFolder(out_dir) as out:
        train, val = out.tokens('train', vocab.dtype), out.tokens('val', vocab.dtype)

        def write(points):
            ids = vocab.lookup(points)
            room = n_train - train.count
            if room > 0:
                train.write(ids[:room])
            if len(ids) > room:
                val.write(ids[max(room, 0):])
        with _Pipeline() as pipeline:
            for text in read_text(input_path, errors, desc='pass 2/2: encoding'):
                pipeline.submit(write, code_points(text))
        out.set_meta(vocab.meta())
        out.commit()
    return _summary(out_dir, start, vocab=vocab, train=train.count, val=val.count, characters=n)


def prepare_char_stories(splits, out_dir, separator=STORY_SEPARATOR):
    """Character-level dataset from story sources (see story_sources): each story is followed
    by the separator symbol, recorded in meta.pkl as 'separator'. The vocabulary covers both splits.

    The stories are read once: pass 1 finds the vocabulary and saves the joined text of each
    split to a scratch file (UTF-8, deleted at the end), which pass 2 encodes.
    """
    start = time.time()
    keep_freed_memory()
    if len(separator) != 1:
        raise UserError(f"--separator={separator!r} must be a single character")
    seen = np.zeros(UNICODE_SIZE, dtype=bool)
    counts, stories, texts = {}, {}, {}
    with OutputFolder(out_dir) as out:
        for split, batches in splits.items():
            counts[split] = stories[split] = 0
            texts[split] = out.scratch(f'{split}.txt')
            with open(texts[split], 'wb') as f, _Pipeline() as pipeline:
                for data, n_chars, n_stories in batches(separator):
                    pipeline.submit(lambda data: (mark_utf8_characters(data, seen), f.write(data)), data)
                    counts[split] += n_chars
                    stories[split] += n_stories
        _check_splits(stories, 'stories')
        print(f"length of dataset in characters: {sum(counts.values()):,} "
              f"({stories['train']:,} train and {stories['val']:,} val stories)")
        vocab = CharVocab(np.flatnonzero(seen))
        show_vocabulary(vocab)
        files = {split: out.tokens(split, vocab.dtype) for split in splits}
        for split in splits:
            with _Pipeline() as pipeline:
                for text in read_text(texts[split], desc=f'pass 2/2: encoding {split}'):
                    pipeline.submit(lambda points, f=files[split]: f.write(vocab.lookup(points)), code_points(text))
        out.set_meta(vocab.meta(separator=separator))
        out.commit()
    return _summary(out_dir, start, vocab=vocab, train=files['train'].count, val=files['val'].count,
                    characters=sum(counts.values()))


def _check_splits(counts, what):
    if not counts.get('train'):
        raise UserError(f"the source yields no training text (0 {what} in its train split); check the input")
    if not counts.get('val'):
        raise UserError(f"the source yields no validation text (0 {what} in its validation split); "
                        "give it a non-empty validation split")


def _summary(out_dir, start, vocab=None, **numbers):
    print(f"train has {numbers['train']:,} tokens")
    print(f"val has {numbers['val']:,} tokens")
    seconds = time.time() - start
    print(f"wrote {show_path(out_dir)}/ in {seconds:.1f} s")
    summary = dict(numbers, seconds=seconds)
    if vocab is not None:
        summary.update(vocab_size=vocab.size, dtype=vocab.dtype.name)
    return summary


# ----------------------------------------------------------------------------- GPT-2 BPE

_ENCODING = None


def gpt2():
    """tiktoken's GPT-2 encoding (cached per process)."""
    global _ENCODING
    if _ENCODING is None:
        import tiktoken
        try:
            _ENCODING = tiktoken.get_encoding('gpt2')
        except Exception as e:
            raise UserError(f"could not load tiktoken's GPT-2 encoding ({type(e).__name__}: {e}); connect to the "
                            "internet once, or set TIKTOKEN_CACHE_DIR to a folder holding its cached files")
    return _ENCODING


def _encode_group(docs):
    """Tokens of docs, each followed by GPT2_EOT: exactly encode_ordinary(doc) + [GPT2_EOT] per doc.

    The documents are joined with the '<|endoftext|>' text and encoded in one call that treats
    that text as the special token, so tiktoken splits at the joins and encodes each piece
    ordinarily; a document that contains the text itself is encoded one at a time instead.
    """
    enc = gpt2()
    joined = STORY_LINE.join(docs) + STORY_LINE
    if joined.count(STORY_LINE) == len(docs):
        if hasattr(enc, 'encode_to_numpy'):
            return enc.encode_to_numpy(joined, allowed_special={STORY_LINE})
        return np.array(enc.encode(joined, allowed_special={STORY_LINE}), dtype=np.uint32)
    ids = []
    for doc in docs:
        ids.extend(enc.encode_ordinary(doc))
        ids.append(GPT2_EOT)
    return np.array(ids, dtype=np.uint32)


def encode_documents(docs, threads=None, group_chars=1 << 18):
    """GPT-2 tokens (uint16) of a list of documents, GPT2_EOT after each, on `threads` threads
    (default: all cores; tiktoken releases the GIL while encoding)."""
    threads = threads or cpu_cores()
    groups, group, size = [], [], 0
    for doc in docs:
        group.append(doc)
        size += len(doc)
        if size >= group_chars:
            groups.append(group)
            group, size = [], 0
    if group:
        groups.append(group)
    if not groups:
        return np.zeros(0, dtype=np.uint16)
    if threads == 1 or len(groups) == 1:
        parts = [_encode_group(g) for g in groups]
    else:
        gpt2()   # load once, before the threads
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(_encode_group, groups))
    return np.concatenate(parts).astype(np.uint16)


def prepare_bpe_stories(splits, out_dir):
    """GPT-2 BPE dataset (uint16, no meta.pkl) from story sources: each story's tokens, then GPT2_EOT."""
    start = time.time()
    keep_freed_memory()
    gpt2()
    stories = {}
    with OutputFolder(out_dir) as out:
        files = {split: out.tokens(split, np.uint16) for split in splits}
        for split, batches in splits.items():
            stories[split] = 0
            with _Pipeline() as pipeline:   # encode one batch while the next one is read
                for batch in batches():
                    pipeline.submit(lambda docs, f=files[split]: f.write(encode_documents(docs)), batch)
                    stories[split] += len(batch)
        _check_splits(stories, 'stories')
        out.commit()
    print(f"{stories['train']:,} train and {stories['val']:,} val stories")
    return _summary(out_dir, start, train=files['train'].count, val=files['val'].count)


def prepare_bpe_text_file(input_path, out_dir, val_fraction=0.1):
    """GPT-2 BPE dataset from one small text file, split by characters first (nanoGPT's shakespeare):
    the first int(n * (1 - val_fraction)) characters are train. Reads the whole file: meant for small texts."""
    start = time.time()
    keep_freed_memory()
    check_input_file(input_path)
    text = ''.join(read_text(input_path))
    n_train = int(len(text) * (1 - val_fraction))
    print(f"length of dataset in characters: {len(text):,}")
    enc = gpt2()
    with OutputFolder(out_dir) as out:
        for split, part in (('train', text[:n_train]), ('val', text[n_train:])):
            out.tokens(split, np.uint16).write(np.array(enc.encode_ordinary(part), dtype=np.uint32))
        out.commit()
    return _summary(out_dir, start, train=out.files['train'].count, val=out.files['val'].count)


def _tokenize_rows(batch):
    """datasets.map function: the GPT-2 tokens of each document, GPT2_EOT appended."""
    ids = encode_documents([t or '' for t in batch['text']], threads=1)
    ends = np.flatnonzero(ids == GPT2_EOT) + 1
    rows = np.split(ids, ends[:-1])
    return {'ids': rows, 'len': [len(r) for r in rows]}


def prepare_bpe_documents(splits, out_dir, num_proc=None, batch_rows=1024):
    """GPT-2 BPE dataset from a datasets.DatasetDict with 'train' and 'val' (openwebtext):
    tokenized with map() on num_proc processes, then written to uint16 .bin files in batches."""
    start = time.time()
    keep_freed_memory()
    gpt2()
    num_proc = num_proc or cpu_cores()
    _check_splits({split: len(splits[split]) if split in splits else 0 for split in ('train', 'val')}, 'documents')
    if 'text' not in splits['train'].column_names:
        raise UserError(f"the source has no 'text' column (columns: {', '.join(splits['train'].column_names)})")
    tokenized = splits.map(_tokenize_rows, batched=True, remove_columns=splits['train'].column_names,
                           desc='tokenizing the splits', num_proc=num_proc)
    with OutputFolder(out_dir) as out:
        for split in ('train', 'val'):
            dset = tokenized[split].with_format('arrow')
            token_file = out.tokens(split, np.uint16)
            n_batches = (len(dset) + batch_rows - 1) // batch_rows
            for table in progress(iterable=dset.iter(batch_size=batch_rows), total=n_batches,
                                  desc=f'writing {split}.bin'):
                token_file.write(table.column('ids').combine_chunks().flatten().to_numpy())
        out.commit()
    print(f"{len(splits['train']):,} train and {len(splits['val']):,} val documents")
    return _summary(out_dir, start, train=out.files['train'].count, val=out.files['val'].count)


# ----------------------------------------------------------------------------- command lines

def story_arguments(description, own):
    """The command line shared by data/tinystories*/prepare.py."""
    import argparse
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--train_file', help="local train stories: TinyStories*-train.txt ('<|endoftext|>' lines "
                                             "between stories) or .json/.jsonl/.parquet with a 'text' field")
    parser.add_argument('--val_file', help='local validation stories, same format as --train_file')
    parser.add_argument('--hub_name', default=TINYSTORIES_HUB,
                        help='Hugging Face dataset loaded when no files are given')
    parser.add_argument('--hub_txt', choices=['TinyStories', 'TinyStoriesV2-GPT4'],
                        help="download this .txt pair from the hub dataset's repository and read it")
    parser.add_argument('--name', default=own, help=f'output folder data/<name>/ (default {own})')
    parser.add_argument('--force', action='store_true', help='overwrite data/<name>/ when it holds another dataset')
    parser.add_argument('--replace_invalid_utf8', action='store_true',
                        help='replace bytes that are not UTF-8 with U+FFFD instead of stopping')
    return parser


def story_sources_from_args(args):
    return story_sources(args.train_file, args.val_file, args.hub_name, args.hub_txt,
                         'replace' if args.replace_invalid_utf8 else 'strict')
