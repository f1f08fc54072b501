"""Collections of documents, from the Hugging Face hub or local files, in GPT-2 BPE, a chunk at a time: PROGRESS
records each chunk saved, so that the same command resumes there. The output depends on the source and split only."""
import errno
import glob
import json
import os
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from helpers import UserError, encode, files, prepare, shown
from helpers.prepare import PROGRESS

CHUNK_DOCS = 10_000   # documents per chunk: about 10M tokens of FineWeb-Edu, the work a resume may redo
LOCAL_BUILDERS = {'.txt': 'text', '.json': 'json', '.jsonl': 'json', '.parquet': 'parquet'}
STREAMED_TYPES = {'.parquet': 'parquet', '.jsonl': 'json', '.json': 'json'}

def hf_datasets():
    """The datasets library with its error log silenced: what it raises reaches the user by one_line."""
    import datasets
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    return datasets

def one_line(error):
    """An error of datasets or pyarrow in one line: its innermost cause, which says what is wrong."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"

def load_documents(hub_name=None, data_files=None, num_proc=None, flags='--source'):
    """A DatasetDict of the hub's hub_name, or of local data_files ({split: [files]}: all .txt, a document each,
    all .json/.jsonl or all .parquet) through the same load_dataset. flags: the options that give local files."""
    load_dataset = hf_datasets().load_dataset
    if data_files:
        exts = {os.path.splitext(f)[1] for paths in data_files.values() for f in paths}
        builders = {LOCAL_BUILDERS.get(ext) for ext in exts}
        if None in builders or len(builders) > 1:
            raise UserError(f"give files of one type, .txt, .json/.jsonl or .parquet, not {' and '.join(sorted(exts))}")
        builder = builders.pop()
        try:
            return load_dataset(builder, data_files=data_files, num_proc=num_proc,
                                **({'sample_by': 'document'} if builder == 'text' else {}))
        except Exception as e:   # datasets raises many kinds: a damaged file, a line that is not JSON
            raise UserError(f"could not read the files given with {flags} ({one_line(e)}); check that each is "
                            "whole, UTF-8 and of the type its name says")
    try:
        return load_dataset(hub_name, num_proc=num_proc)
    except Exception as e:   # the hub offline, a wrong name
        raise UserError(f"could not load {hub_name} from the Hugging Face hub ({one_line(e)}); check the name and "
                        f"the connection, or download its files and pass them with {flags}")

def local_files(source, types=LOCAL_BUILDERS):
    """The files of the given types that --source names (a file, a glob, or a folder searched at any depth), sorted."""
    if os.path.isdir(source):
        found = [f for f in glob.glob(os.path.join(source, '**', '*'), recursive=True, include_hidden=True)
                 if os.path.splitext(f)[1] in types]
    elif glob.has_magic(source):
        found = glob.glob(source, recursive=True)
    else:
        found = [prepare.check_input_file(source, '--source')]
    found, kinds = sorted(filter(os.path.isfile, found)), ', '.join(types)
    if not found:
        raise UserError(f"--source={source} names no files; give a file, a folder or a glob of {kinds} files")
    for f in found:
        if os.path.splitext(f)[1] not in types:
            raise UserError(f"--source names {f}, which is not one of the types read here ({kinds})")
    return [prepare.check_input_file(f, '--source') for f in found]

def identity(paths):
    """What local files hold, as far as a resume can tell: their paths, sizes and modification times."""
    return [[os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in paths]

def stream(hub_name=None, config=None, paths=None):
    """(documents streamed a shard per file, identity for a resume, count or None) of hub_name/config or paths."""
    load_dataset_builder = hf_datasets().load_dataset_builder
    if paths:
        builders = {STREAMED_TYPES[os.path.splitext(f)[1]] for f in paths}
        if len(builders) > 1:
            raise UserError("give files of one type, .parquet or .json/.jsonl, not both")
        count = local_documents(paths)   # before datasets reads them, which fails on a parquet file without rows
        builder = load_dataset_builder(builders.pop(), data_files={'train': paths})
        return builder.as_streaming_dataset(split='train'), identity(paths), count
    try:
        builder = load_dataset_builder(hub_name, config)
        documents = builder.as_streaming_dataset(split='train')
    except Exception as e:   # offline, a wrong name, the hub unreachable: datasets raises many kinds
        raise UserError(f"could not open {hub_name} ({config}) on the Hugging Face hub ({one_line(e)}); "
                        "check the name and the connection, or download its files and pass them with --source")
    count = getattr((builder.info.splits or {}).get('train'), 'num_examples', None)
    return documents, [str(f) for f in builder.config.data_files['train']], count or None

def local_documents(paths):
    """The documents in local files, by parquet footers (their columns checked) and .jsonl lines; None with .json."""
    import pyarrow
    import pyarrow.parquet as pq
    n = 0
    for f in paths:
        if f.endswith('.parquet'):
            try:
                footer = pq.ParquetFile(f).metadata
            except (OSError, pyarrow.ArrowException) as e:
                raise UserError(f"{f} is not a readable parquet file ({one_line(e)})")
            if not footer.num_rows:
                raise UserError(f"{f} holds no documents; leave it out of --source")
            check_columns(footer.schema.to_arrow_schema(), f)
            n += footer.num_rows
        elif f.endswith('.jsonl'):
            with open(f, 'rb') as lines:
                n += sum(block.count(b'\n') for block in iter(lambda: lines.read(1 << 24), b''))
        else:
            return None
    return n

def check_columns(schema, where='the source'):
    if 'text' not in schema.names:
        raise UserError(f"{where} has no 'text' column (columns: {', '.join(schema.names)}); give it one with "
                        "the documents")
    if str(schema.field('text').type) not in ('string', 'large_string', 'string_view'):
        raise UserError(f"{where} has a 'text' column of {schema.field('text').type}, not of text")

def tables(documents, batch_size, where):
    """A dataset's documents as pyarrow tables of batch_size rows with a 'text' column of UTF-8."""
    try:   # the caller's errors stay out: they are not thrown in at the yield
        for table in documents.with_format('arrow').iter(batch_size=batch_size):
            check_columns(table.schema, where)   # a UserError, which no `except Exception` catches
            table.column('text').validate(full=True)   # pyarrow's JSON reader lets bytes that are not UTF-8 through
            yield table
    except Exception as e:
        raise UserError(f"could not read {where} ({one_line(e)}); once it can be read, the same command "
                        "resumes after the last chunk finished")

class ResumableOutput(prepare.Output):
    """prepare.Output whose .tmp files outlive an interruption once save() has recorded them in PROGRESS, with the
    position in the source and the command line; an output of the same source cuts them back to that record."""

    def __init__(self, out_dir, source):
        source = json.loads(json.dumps(source))   # as it reads back from PROGRESS: lists, not tuples
        record = os.path.join(out_dir, PROGRESS)
        try:
            with open(record) as f:
                self.at = json.load(f)
        except (FileNotFoundError, ValueError):   # none, or damaged: nothing in it can be trusted
            self.at = {}
        if self.at.get('source') == source and all(
                os.path.isfile(tmp := os.path.join(out_dir, f'{split}.bin.tmp')) and os.path.getsize(tmp) >= size
                for split, size in self.at['bytes'].items()):
            self.at.setdefault('skipped', 0)   # records of earlier versions, which kept every row
            print(f"resuming after chunk {self.at['chunks']:,}: {self.at['documents']:,} documents and "
                  f"{sum(self.at['bytes'].values()) // 2:,} tokens done")
        else:
            if os.path.exists(record):
                print(f"{shown(out_dir)}/ holds an unfinished prepare of another source or split: starting over")
                os.remove(record)
            self.at = dict(source=source, chunks=0, shard=0, shard_docs=0, documents=0, skipped=0,
                           docs={'train': 0, 'val': 0}, bytes={'train': 0, 'val': 0})
        self.at['command'] = shlex.join(['python', shown(sys.argv[0]), *sys.argv[1:]])   # as the advice names scripts
        super().__init__(out_dir, np.uint16, self.at['bytes'])
        self.temporary.append(PROGRESS)

    def save(self, **position):
        """Make the .tmp files durable, then record them and position in PROGRESS: until then the old record holds."""
        for f in self.bins.values():
            f.flush()
            os.fsync(f.fileno())
        self.at.update(position, bytes={split: f.tell() for split, f in self.bins.items()})
        files.write_text(self.path(PROGRESS), json.dumps(self.at))

    def __exit__(self, kind, value, traceback):
        done = self.at['chunks']
        if done:
            self.temporary = []   # the next run resumes from them
        super().__exit__(kind, value, traceback)
        if isinstance(value, OSError) and value.errno == errno.ENOSPC:
            raise UserError(f"the disk is full ({value}); make room and run the same command again" +
                            (f": it resumes after chunk {done:,}" if done else ''))
        if done and kind is KeyboardInterrupt:
            print(f"stopped after chunk {done:,}, which {shown(self.dir)}/ keeps: run the same command again "
                  "to resume", file=sys.stderr)

def gpt2_in_threads(pool, docs, pieces):
    """encode.gpt2_tokens of docs as uint16, cut into `pieces` runs encoded at once in the pool's threads."""
    size = max(1, -(-len(docs) // pieces))
    runs = pool.map(encode.gpt2_tokens, [docs[i:i + size] for i in range(0, len(docs), size)])
    return np.concatenate([np.zeros(0, np.uint16)] + [ids.astype(np.uint16) for ids in runs])

def gpt2_from_documents(parts, out_dir, source, val_every=None, count=None, chunk_docs=CHUNK_DOCS, threads=None):
    """GPT-2 BPE (uint16) of parts, [(split or None, dataset with a 'text' column)]; with None, document i of all
    parts is val when val_every divides i. source (JSON) identifies them for a resume; count is for the bar."""
    if any(next(tables(documents, 1, 'the source'), None) is None for _, documents in parts):
        raise UserError("the source holds no documents")   # found before hours of encoding the other parts
    todo = []
    for split, documents in parts:   # a streamed source by its shards (files), which a resume passes over once done
        n = getattr(documents, 'num_shards', 0)   # a Dataset (memory-mapped, indexed) is one
        todo += [(split, documents.shard(n, i, contiguous=True)) for i in range(n)] if n else [(split, documents)]
    threads = threads or prepare.usable_cores()
    with ResumableOutput(out_dir, source) as out, ThreadPoolExecutor(threads) as pool, \
            tqdm(total=count, initial=out.at['documents'] + out.at['skipped'], unit=' documents', disable=None) as bar:
        while out.at['shard'] < len(todo):
            split, shard = todo[out.at['shard']]
            if out.at['shard_docs']:   # read again (streamed) or indexed (a Dataset), but not encoded again
                shard = shard.skip(out.at['shard_docs'])
            for table in tables(shard, chunk_docs, f"shard {out.at['shard'] + 1} of {len(todo)} of the source"):
                rows = table.column('text').to_pylist()
                texts = [text for text in rows if text is not None]   # a row without text holds no document
                first = out.at['documents']   # the number of the chunk's first document in the source
                chunk = {split: texts}
                if not split:   # document i of the source is val when val_every divides i
                    chunk = {'train': [t for i, t in enumerate(texts, first) if i % val_every],
                             'val': texts[-first % val_every::val_every]}
                for name, docs in chunk.items():
                    out.write(name, gpt2_in_threads(pool, docs, 4 * threads))   # 4 runs a thread: lengths vary
                out.save(chunks=out.at['chunks'] + 1, shard_docs=out.at['shard_docs'] + len(rows),
                         documents=first + len(texts), skipped=out.at['skipped'] + len(rows) - len(texts),
                         docs={name: n + len(chunk.get(name, [])) for name, n in out.at['docs'].items()})
                bar.update(len(rows))
                bar.set_postfix_str(f"{sum(out.tokens.values()):,} tokens", refresh=False)
            out.save(shard=out.at['shard'] + 1, shard_docs=0)   # so that a resume never reads this shard again
        skipped = f"; {out.at['skipped']:,} without text skipped" if out.at['skipped'] else ''
        print(f"{out.at['docs']['train']:,} train and {out.at['docs']['val']:,} val documents{skipped}")
        out.commit(removes=[PROGRESS])
