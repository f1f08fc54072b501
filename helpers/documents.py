"""GPT-2 BPE datasets from large collections of documents (fineweb_edu, openwebtext), in chunks that survive an
interruption.

The documents come from a datasets source shard by shard (the files of a streamed source), in chunks of
chunk_docs documents. Each chunk is tokenized on all cores, in threads (tiktoken lets go of the GIL), and
appended to train.bin.tmp and val.bin.tmp; then both files are fsynced and PROGRESS records how many chunks are
done, where the source stands (the shard, and the documents read from it) and the length of both files. A new
run on the same source and split rule cuts the .tmp files back to those lengths and carries on from there, so
a kill, Ctrl+C or a full disk loses at most the chunk under way. What is written depends on the source and the
split rule only: never on chunk_docs, the number of threads or the interruptions. Memory holds a chunk and what
datasets reads at a time (a parquet row group), whatever the size of the source.
"""
import errno
import glob
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from helpers import UserError, prepare, shown

CHUNK_DOCS = 10_000   # documents per chunk: about 10M tokens of FineWeb-Edu, the work a resume may redo
PROGRESS = 'progress.bin.tmp.json'   # beside train.bin.tmp and val.bin.tmp (and, like them, ignored by git)
STREAMED_TYPES = {'.parquet': 'parquet', '.jsonl': 'json', '.json': 'json'}


# ----------------------------------------------------------------------------- sources

def local_files(source, types=prepare.LOCAL_BUILDERS):
    """The files that --source names (a file, a glob or a folder), sorted so that the output is deterministic: of
    a folder, its files of the given types (extensions) at any depth; a file or glob must name only such files."""
    if os.path.isdir(source):
        files = [f for f in glob.glob(os.path.join(source, '**', '*'), recursive=True, include_hidden=True)
                 if os.path.splitext(f)[1] in types]
    elif glob.has_magic(source):
        files = glob.glob(source, recursive=True)
    else:
        files = [prepare.check_input_file(source, '--source')]
    files = sorted(filter(os.path.isfile, files))
    kinds = ', '.join(types)
    if not files:
        raise UserError(f"--source={source} names no files; give a file, a folder or a glob of {kinds} files")
    for f in files:
        if os.path.splitext(f)[1] not in types:
            raise UserError(f"--source names {f}, which is not one of the types read here ({kinds})")
    return [prepare.check_input_file(f, '--source') for f in files]


def identity(files):
    """What local files hold, as far as a resume can tell: their paths, sizes and modification times."""
    return [[os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files]


def stream(hub_name=None, config=None, files=None):
    """(documents, identity, count): the train split of the hub dataset hub_name/config, or of local files (all
    .parquet or all .json/.jsonl), as a streaming datasets.IterableDataset, one shard per file; what identifies
    its files for a resume; and its number of documents where that is known without reading it all (the hub
    card's figure; parquet footers; the lines of .jsonl files), else None."""
    from datasets import load_dataset_builder
    if files:
        builders = {STREAMED_TYPES[os.path.splitext(f)[1]] for f in files}
        if len(builders) > 1:
            raise UserError("give files of one type, .parquet or .json/.jsonl, not both")
        count = local_documents(files)
        builder = load_dataset_builder(builders.pop(), data_files={'train': files})
        return builder.as_streaming_dataset(split='train'), identity(files), count
    try:
        builder = load_dataset_builder(hub_name, config)
        documents = builder.as_streaming_dataset(split='train')
    except Exception as e:   # offline, a wrong name, the hub unreachable: datasets raises many kinds
        raise UserError(f"could not open {hub_name} ({config}) on the Hugging Face hub ({one_line(e)}); check the "
                        "name and the connection, or download its files and pass them with --source")
    splits = builder.info.splits or {}
    count = splits['train'].num_examples if 'train' in splits else None
    return documents, [str(f) for f in builder.config.data_files['train']], count or None


def local_documents(files):
    """The documents of local files: a parquet file's rows from its footer (where its columns are checked too), a
    .jsonl file's lines (counted in one quick pass); None if a .json file is among them (an array or lines:
    unknown without parsing it)."""
    import pyarrow
    import pyarrow.parquet as pq
    n = 0
    for f in files:
        if f.endswith('.parquet'):
            try:
                footer = pq.ParquetFile(f).metadata
            except pyarrow.ArrowException as e:
                raise UserError(f"{f} is not a readable parquet file ({one_line(e)})")
            if not footer.num_rows:   # datasets cannot stream a parquet file without rows
                raise UserError(f"{f} holds no documents; leave it out of --source")
            check_columns(footer.schema.to_arrow_schema(), f)
            n += footer.num_rows
        elif f.endswith('.jsonl'):
            with open(f, 'rb') as lines:
                n += sum(block.count(b'\n') for block in iter(lambda: lines.read(1 << 24), b''))
        else:
            return None
    return n


def one_line(error):
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def check_columns(schema, where='the source'):
    """A UserError unless the pyarrow schema has a 'text' column of strings."""
    if 'text' not in schema.names:
        raise UserError(f"{where} has no 'text' column (columns: {', '.join(schema.names)}); give it one with "
                        "the documents")
    if str(schema.field('text').type) not in ('string', 'large_string', 'string_view'):
        raise UserError(f"{where} has a 'text' column of {schema.field('text').type}, not of text")


def tables(documents, batch_size, where):
    """The documents (a datasets Dataset or IterableDataset) as pyarrow tables of batch_size rows, checked for a
    'text' column. Failing to read them (a damaged file, a lost connection) is a UserError naming where."""
    batches = iter(documents.with_format('arrow').iter(batch_size=batch_size))
    while True:
        try:
            table = next(batches)
        except StopIteration:
            return
        except Exception as e:
            raise UserError(f"could not read {where} ({one_line(e)}); once it can be read, the same command "
                            "resumes after the last chunk finished")
        check_columns(table.schema, where)
        yield table


def check_text(documents):
    """A UserError unless documents hold a first document, in a 'text' column."""
    if next(tables(documents, 1, 'the source'), None) is None:
        raise UserError("the source holds no documents")


def shards(documents):
    """A dataset's shards in order: a streamed source's files, which a resume passes over unread once finished;
    a Dataset (memory-mapped arrow, which it can index) is one."""
    if not hasattr(documents, 'num_shards'):
        return [documents]
    return [documents.shard(documents.num_shards, i, contiguous=True) for i in range(documents.num_shards)]


# ----------------------------------------------------------------------------- writing

class ResumableOutput(prepare.Output):
    """prepare.Output whose train.bin.tmp and val.bin.tmp outlive an interruption. save() makes them durable and
    records them, with the position in the source, in PROGRESS; a ResumableOutput for the same source cuts them
    back to that record and appends from there. Leaving the with-block before a chunk was saved deletes them, as
    Output does; after that they stay for the next run."""

    def __init__(self, out_dir, source):
        self.dir = out_dir   # for resumable()
        source = json.loads(json.dumps(source))   # as it reads back from PROGRESS: lists, not tuples
        self.at = self.resumable(source) or dict(source=source, chunks=0, shard=0, shard_docs=0, documents=0,
                                                 docs={'train': 0, 'val': 0}, bytes={'train': 0, 'val': 0})
        super().__init__(out_dir, np.uint16, self.at['bytes'])

    def resumable(self, source):
        """The record in PROGRESS if it is of this source and split and the .tmp files hold what it says, else
        None (and no record)."""
        try:
            with open(self.path(PROGRESS)) as f:
                at = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:   # damaged: nothing in it can be trusted
            at = {}

        def held(split):
            path = self.path(f'{split}.bin.tmp')
            return os.path.getsize(path) if os.path.isfile(path) else -1
        if at.get('source') == source and all(held(split) >= size for split, size in at['bytes'].items()):
            print(f"resuming after chunk {at['chunks']:,}: {at['documents']:,} documents and "
                  f"{sum(at['bytes'].values()) // 2:,} tokens done")
            return at
        print(f"{shown(self.dir)}/ holds an unfinished prepare of another source or split: starting over")
        os.remove(self.path(PROGRESS))
        return None

    def save(self, **position):
        """Make the .tmp files durable, then record them and position in PROGRESS: written to a temporary name,
        fsynced and renamed over the old record, which stays true until then since the files only grow."""
        for f in self.bins.values():
            f.flush()
            os.fsync(f.fileno())
        self.at.update(position, bytes={split: f.tell() for split, f in self.bins.items()})
        with open(self.path(PROGRESS + '.tmp'), 'w') as f:
            json.dump(self.at, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.path(PROGRESS + '.tmp'), self.path(PROGRESS))

    def commit(self):
        super().commit()
        os.remove(self.path(PROGRESS))

    def __exit__(self, kind, value, traceback):
        done = self.at['chunks']
        if done:
            for f in self.bins.values():
                f.close()
        else:
            super().__exit__(kind, value, traceback)   # nothing worth keeping: no trace left
        if isinstance(value, OSError) and value.errno == errno.ENOSPC:
            raise UserError(f"the disk is full ({value}); make room and run the same command again" +
                            (f": it resumes after chunk {done:,}" if done else ''))
        if done and kind is KeyboardInterrupt:
            print(f"stopped after chunk {done:,}, which {shown(self.dir)}/ keeps: run the same command again "
                  "to resume", file=sys.stderr)


def encode(pool, docs, pieces):
    """prepare.gpt2_tokens of docs as uint16: each document's tokens, then GPT2_EOT, in order. The documents are
    cut into `pieces` runs, encoded at once in the pool's threads."""
    size = max(1, -(-len(docs) // pieces))
    runs = pool.map(prepare.gpt2_tokens, [docs[i:i + size] for i in range(0, len(docs), size)])
    return np.concatenate([np.zeros(0, np.uint16)] + [ids.astype(np.uint16) for ids in runs])


def split_chunk(texts, split, first, val_every):
    """{split: documents} of a chunk whose first document is number `first` of the source. With split None,
    document i is val when i is a multiple of val_every, else train."""
    if split:
        return {split: texts}
    return {'train': [text for i, text in enumerate(texts, first) if i % val_every],
            'val': texts[-first % val_every::val_every]}


def gpt2_from_documents(parts, out_dir, source, val_every=None, count=None, chunk_docs=CHUNK_DOCS, threads=None):
    """GPT-2 BPE (uint16, no meta.pkl) of the documents of parts, [(split, documents)]: datasets Datasets or
    IterableDatasets with a 'text' column, whose documents go to split ('train' or 'val'), or with split None,
    by the val_every rule of split_chunk, counting the documents of all parts from 0 in order. source identifies
    the documents and the split rule (JSON) for a resume; count, of all parts, is for the progress bar."""
    for _, documents in parts:
        check_text(documents)
    todo = [(split, shard) for split, documents in parts for shard in shards(documents)]
    threads = threads or prepare.usable_cores()
    with ResumableOutput(out_dir, source) as out, ThreadPoolExecutor(threads) as pool, \
            tqdm(total=count, initial=out.at['documents'], unit=' documents', disable=None) as bar:
        while out.at['shard'] < len(todo):
            split, shard = todo[out.at['shard']]
            if out.at['shard_docs']:   # read again (streamed) or indexed (a Dataset), but not encoded again
                shard = shard.skip(out.at['shard_docs'])
            where = f"shard {out.at['shard'] + 1} of {len(todo)} of the source"   # of local files, the k-th file
            for table in tables(shard, chunk_docs, where):
                texts = [text or '' for text in table.column('text').to_pylist()]
                chunk = split_chunk(texts, split, out.at['documents'], val_every)
                for name, docs in chunk.items():
                    out.write(name, encode(pool, docs, 4 * threads))   # 4 runs a thread: even when lengths vary
                out.save(chunks=out.at['chunks'] + 1, shard_docs=out.at['shard_docs'] + len(texts),
                         documents=out.at['documents'] + len(texts),
                         docs={name: n + len(chunk.get(name, [])) for name, n in out.at['docs'].items()})
                bar.update(len(texts))
                bar.set_postfix_str(f"{sum(out.tokens.values()):,} tokens", refresh=False)
            out.save(shard=out.at['shard'] + 1, shard_docs=0)   # so that a resume never reads this shard again
        print(f"{out.at['docs']['train']:,} train and {out.at['docs']['val']:,} val documents")
        out.commit()
