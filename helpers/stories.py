"""TinyStories, behind data/tinystories*/prepare.py: its stories from the hub, its .txt files or .json/.jsonl/.parquet
files, at character level (a separator after each story) or in GPT-2 BPE (<|endoftext|> after each)."""
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from helpers import UserError, documents, encode, prepare
from helpers.tokenizer import CHUNK_BYTES, read_text

STORY_END = re.compile(r'\n[^\S\n]*<\|endoftext\|>[^\S\n]*(?=\n)')   # TinyStories*.txt: a line holding only EOT
STORY_SEPARATOR = '\u2403'  # '␃' (SYMBOL FOR END OF TEXT), written after each story at character level
MAX_STORY_CHARS = 1 << 26   # a longer "story" means the file is not in TinyStories' format

def txt_stories(path, errors='strict', chunk_bytes=CHUNK_BYTES, desc=None):
    """A TinyStories*.txt file's non-empty stories, stripped, a list per chunk; a line of <|endoftext|> ends each."""
    rest = '\n'   # the text after the last story end; STORY_END starts at the newline before its line
    for text in read_text(path, errors, chunk_bytes, desc):
        text = rest + text
        whole_lines = text.rfind('\n') + 1   # STORY_END must see the newline that ends its line
        *stories, rest = STORY_END.split(text[:whole_lines])
        rest += text[whole_lines:]
        if len(rest) > MAX_STORY_CHARS:
            raise UserError(f"{path} has over {MAX_STORY_CHARS:,} characters without a line holding {encode.EOT}: "
                            "it is not in TinyStories' format; for plain text use data/char/prepare.py")
        yield [s for s in map(str.strip, stories) if s]
    yield [s for s in map(str.strip, STORY_END.split(rest + '\n')) if s]

def story_text(batches, separator):
    """The text of batches (lists) of stories, each followed by the separator: a piece per batch."""
    for stories in batches:
        text = separator.join(stories + [''])
        if text.count(separator) != len(stories):
            raise UserError(f"a story contains the separator {separator!r} (U+{ord(separator):04X}) itself; "
                            "choose another character with --separator")
        yield text

def chars_from_stories(sources, out_dir, separator=STORY_SEPARATOR):
    """Character level from story_sources, the separator (meta['separator']) after each story, in both splits."""
    if len(separator) != 1:
        raise UserError(f"--separator={separator!r} must be a single character")
    seen = np.zeros(encode.UNICODE_SIZE, dtype=bool)
    n = {split: encode.mark_characters(story_text(sources[split](), separator), seen) for split in ('train', 'val')}
    print(f"length of dataset in characters: {n['train'] + n['val']:,}")
    text = (piece for split in ('train', 'val') for piece in story_text(sources[split](), separator))
    encode.write_chars(out_dir, seen, text, n['train'], separator=separator)

def dataset_stories(dset, desc):
    """The stories of a datasets split (its 'text' column), a list per batch, as txt_stories."""
    documents.check_columns(dset.data.schema)
    with tqdm(total=len(dset), unit=' stories', desc=desc, disable=None) as bar:
        for batch in dset.iter(batch_size=8192):
            bar.update(len(batch['text']))
            yield [s for s in (text.strip() for text in batch['text'] if text) if s]

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
    """{'train': f, 'val': f}, f() yielding a split's stories a list at a time, again at each call: from the hub's
    --hub_name or its --hub_txt .txt pair, or from --train_file/--val_file (TinyStories*.txt, or as the hub)."""
    paths = {'train': args.train_file, 'val': args.val_file}
    if args.hub_txt:
        from huggingface_hub import hf_hub_download
        try:
            paths = {split: hf_hub_download(args.hub_name, f'{args.hub_txt}-{name}.txt', repo_type='dataset')
                     for split, name in (('train', 'train'), ('val', 'valid'))}
        except Exception as e:   # offline, or the hub unreachable: huggingface_hub raises many kinds
            raise UserError(f"could not download {args.hub_txt}'s .txt files from {args.hub_name} "
                            f"({documents.one_line(e)}); download them yourself and pass --train_file and --val_file")
    if bool(paths['train']) != bool(paths['val']):
        raise UserError("give both --train_file and --val_file (or neither, to load the hub dataset)")
    for path in filter(None, paths.values()):
        prepare.check_input_file(path, '--train_file/--val_file')
    if paths['train'] and all(path.endswith('.txt') for path in paths.values()):
        errors = 'replace' if args.replace_invalid_utf8 else 'strict'
        return {split: lambda path=path, split=split: txt_stories(path, errors, desc=f'{split} stories')
                for split, path in paths.items()}
    local = {'train': [paths['train']], 'validation': [paths['val']]} if paths['train'] else None
    dsets = documents.load_documents(args.hub_name, local, flags='--train_file and --val_file')
    if 'validation' not in dsets:
        raise UserError(f"the source has no validation split (splits: {', '.join(dsets)}); "
                        "give one with --train_file and --val_file")
    return {split: lambda dset=dsets[name], split=split: dataset_stories(dset, f'{split} stories')
            for split, name in (('train', 'train'), ('val', 'validation'))}

def gpt2_from_stories(sources, out_dir):
    """GPT-2 BPE from story_sources, EOT after each story, each batch encoded in threads (tiktoken frees the GIL)."""
    stories, cores = {'train': 0, 'val': 0}, prepare.usable_cores()
    with prepare.Output(out_dir) as out, ThreadPoolExecutor(cores) as pool:
        for split in ('train', 'val'):
            for batch in sources[split]():
                out.write(split, documents.gpt2_in_threads(pool, batch, cores))
                stories[split] += len(batch)
        print(f"{stories['train']:,} train and {stories['val']:,} val stories")
        out.commit()
