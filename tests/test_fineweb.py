"""data/fineweb_edu and data/openwebtext's prepare.py and helpers/documents.py: resumable GPT-2 BPE of documents,
against tokens computed here; the resume is also driven on datasets in memory, to place an interruption exactly."""
import errno
import hashlib
import json
import os
import random
import shlex
import signal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_user_error, gpt2_tokens, prep, stopped_prepare
from helpers import UserError, data, documents, prepare

WORDS = 'the a school lesson about cells energy history 中文 café naïve 😀 — "quoted" 1,234 and\nnew\tline'.split(' ')
PREPARES = {'fineweb_edu': [], 'openwebtext': ['--num_proc', '1']}

def make_docs(n, seed=0, words=(5, 120)):
    """n documents, with real corpora's awkward ones: empty, None (skipped), whitespace, <|endoftext|> as plain text."""
    rng = random.Random(seed)
    docs = [' '.join(rng.choice(WORDS) for _ in range(rng.randint(*words))) + f' doc{i}.' for i in range(n)]
    for i, odd in ((3, ''), (10, None), (17, ' \n '), (25, 'a doc holding <|endoftext|> in its text')):
        if i < n:
            docs[i] = odd
    return docs

def expected(docs, val_every):
    """(train, val) tokens: rows without text skipped, then document i is val when i is a multiple of val_every."""
    docs = [doc for doc in docs if doc is not None]
    return (gpt2_tokens([doc for i, doc in enumerate(docs) if i % val_every]),
            gpt2_tokens([doc for i, doc in enumerate(docs) if i % val_every == 0]))

def bins(name):
    return [np.fromfile(os.path.join(data.data_dir(name), f'{split}.bin'), np.uint16) for split in ('train', 'val')]

def assert_bins(name, train, val, why=None):
    assert all(map(np.array_equal, bins(name), (train, val))), why

def left(name):
    """The files in the dataset's folder but the prepare's lock, or None without one."""
    folder = data.data_dir(name)
    return sorted(set(os.listdir(folder)) - {prepare.LOCK}) if os.path.isdir(folder) else None

def progress(name):
    return json.load(open(os.path.join(data.data_dir(name), documents.PROGRESS)))

def write_jsonl(path, docs, row_without_text=False):
    """docs as .jsonl rows (None: "text": null), then, if asked, a row without the field."""
    rows = [{'id': i, 'text': doc} for i, doc in enumerate(docs)] + [{'id': len(docs)}] * row_without_text
    path.write_text(''.join(json.dumps(row) + '\n' for row in rows), encoding='utf-8')
    return str(path)

def write_parquet(folder, docs, files=3):
    """docs in `files` parquet files (small row groups), named so that sorting keeps their order."""
    os.makedirs(folder, exist_ok=True)
    cuts = np.linspace(0, len(docs), files + 1).astype(int)
    for k in range(files):
        part = docs[cuts[k]:cuts[k + 1]]
        pq.write_table(pa.table({'text': part, 'score': [float(i) for i in range(len(part))]}),
                       os.path.join(folder, f'{k:03d}_00000.parquet'), row_group_size=37)
    return str(folder)

def in_memory(docs, shards):
    """A streamed source of shards built in memory (no files, no cache), as stream() would give."""
    from datasets import Dataset
    return Dataset.from_dict({'text': docs}).to_iterable_dataset(num_shards=shards)

def run_in_process(name, docs, parts, val_every=None, **kwargs):
    """gpt2_from_documents on parts made of docs, whose identity for a resume is their hash (and the split)."""
    source = {'documents': hashlib.sha256(json.dumps(docs).encode()).hexdigest(), 'val_every': val_every}
    with prepare.output_dir(name) as out_dir:
        documents.gpt2_from_documents(parts, out_dir, source, val_every=val_every, **kwargs)

def test_jsonl_and_parquet_give_exactly_the_tokens_of_one_call_per_document(tmp_path, scratch, hf_offline):
    docs = make_docs(300, seed=1)
    train, val = expected(docs, val_every=7)
    parquet = write_parquet(tmp_path / 'sample' / '10BT', docs)
    for source, skipped in ((write_jsonl(tmp_path / 'docs.jsonl', docs, True), 2), (parquet, 1),
                            (parquet + '/*.parquet', 1)):  # the same bytes
        name = scratch()
        out = prep('fineweb_edu', '--source', source, '--name', name, '--val_every=7', '--chunk_docs=40').stdout
        assert_bins(name, train, val, source)
        assert f"256 train and 43 val documents; {skipped} without text skipped" in out
        assert left(name) == ['train.bin', 'val.bin']   # no .tmp files, no progress record

def test_same_bytes_whatever_the_threads_chunks_and_shards(scratch):
    docs = make_docs(250, seed=2)
    for run in (dict(threads=1, chunk_docs=1000, shards=1), dict(threads=3, chunk_docs=7, shards=4),
                dict(threads=2, chunk_docs=3, shards=3), dict(threads=2, chunk_docs=64, shards=4)):
        name = scratch()
        run_in_process(name, docs, [(None, in_memory(docs, run.pop('shards')))], val_every=10, **run)
        assert_bins(name, *expected(docs, val_every=10), run)

def test_a_part_without_documents_is_refused_before_any_is_encoded(scratch):
    from datasets import Dataset
    name, docs = scratch(), make_docs(20)
    with pytest.raises(UserError, match='^the source holds no documents'):
        run_in_process(name, docs, [('train', in_memory(docs, 1)), ('val', Dataset.from_dict({'text': []}))])
    assert left(name) is None

def test_openwebtext_keeps_its_split_and_order(tmp_path, scratch, hf_offline):
    """Val is train_test_split(0.0005, seed 2357) of all rows, in its order; from .jsonl and .txt files, 2 processes."""
    from datasets import Dataset
    docs = make_docs(2100, seed=3, words=(1, 12))
    files = [(d or '').strip() or 'x' for d in make_docs(60, seed=5)]   # an empty file is refused
    os.mkdir(tmp_path / 'corpus')
    for i, doc in enumerate(files):
        (tmp_path / 'corpus' / f'{i:03d}.txt').write_text(doc, encoding='utf-8')
    for docs, source, num_proc, counts in (
            (docs + [None], write_jsonl(tmp_path / 'owt.jsonl', docs, True), '1',
             "2,097 train and 2 val documents; 2 without text skipped"),
            (files, str(tmp_path / 'corpus'), '2', "59 train and 1 val documents\n")):
        split = Dataset.from_dict({'text': docs}).train_test_split(test_size=0.0005, seed=2357, shuffle=True)
        name = scratch()
        out = prep('openwebtext', '--source', source, '--name', name, '--num_proc', num_proc).stdout
        assert counts in out
        assert_bins(name, gpt2_tokens(split['train']['text']), gpt2_tokens(split['test']['text']))

def encodings(monkeypatch, at=None, error=None, encode=documents.gpt2_in_threads):
    """The calls of documents.gpt2_in_threads from now on (a list that grows); call number `at` raises `error`."""
    calls = []
    def counted(*args):
        calls.append(args)
        if len(calls) == at:
            raise error
        return encode(*args)
    monkeypatch.setattr(documents, 'gpt2_in_threads', counted)
    return calls

@pytest.mark.parametrize('error', [KeyboardInterrupt(), OSError(errno.ENOSPC, 'No space left on device')])
def test_resume_after_an_interruption_inside_a_chunk(scratch, monkeypatch, capsys, error):
    """Chunk 4's val part fails: the re-run cuts train.bin.tmp back to 3 chunks and encodes only the rest."""
    docs, name = make_docs(200, seed=4), scratch()
    source, (train, val) = in_memory(docs, shards=2), expected(docs, val_every=5)
    encodings(monkeypatch, at=8, error=error)   # train and val of chunks 1-3, then chunk 4's train, then its val
    with pytest.raises(type(error) if isinstance(error, KeyboardInterrupt) else UserError) as raised:
        run_in_process(name, docs, [(None, source)], val_every=5, chunk_docs=30)
    if isinstance(error, OSError):
        assert 'disk is full' in str(raised.value) and 'resumes after chunk 3' in str(raised.value)
    at = progress(name)
    assert at['chunks'] == 3 and at['shard'] == 0 and at['shard_docs'] == 90
    assert at['documents'] == 89 and at['skipped'] == 1   # document 10 has no text
    tmp_train = os.path.join(data.data_dir(name), 'train.bin.tmp')
    assert os.path.getsize(tmp_train) > at['bytes']['train'] and 'train.bin' not in left(name)
    with open(tmp_train, 'ab') as f:   # and then some bytes a torn write left, more than all the tokens to come
        f.write(b'\xff' * 2 * len(train))
    rerun = encodings(monkeypatch)
    capsys.readouterr()
    run_in_process(name, docs, [(None, source)], val_every=5, chunk_docs=30)
    assert "resuming after chunk 3: 89 documents" in capsys.readouterr().out
    assert len(rerun) == 2 * 5   # train and val of 90-99 (shard 0), 100-129, 130-159, 160-189, 190-199
    assert_bins(name, train, val)
    assert left(name) == ['train.bin', 'val.bin']

def test_resume_of_fixed_splits_and_a_finished_shard(scratch, monkeypatch, capsys):
    """openwebtext's shape (a train and a val Dataset): stopped after train, the re-run reads only val."""
    from datasets import Dataset
    docs, name = make_docs(120, seed=5), scratch()
    parts = [('train', Dataset.from_dict({'text': docs[:100]})), ('val', Dataset.from_dict({'text': docs[100:]}))]
    encodings(monkeypatch, at=5, error=KeyboardInterrupt())   # 4 train chunks of 25, then the first val chunk
    with pytest.raises(KeyboardInterrupt):
        run_in_process(name, docs, parts, chunk_docs=25)
    assert progress(name)['shard'] == 1 and progress(name)['shard_docs'] == 0
    rerun = encodings(monkeypatch)
    capsys.readouterr()
    run_in_process(name, docs, parts, chunk_docs=25)
    assert "resuming after chunk 4: 99 documents" in capsys.readouterr().out and len(rerun) == 1
    assert_bins(name, gpt2_tokens(docs[:100]), gpt2_tokens(docs[100:]))

@pytest.mark.parametrize('change', ['source', 'split'])
def test_a_changed_source_or_split_starts_over(scratch, monkeypatch, capsys, change):
    docs, name = make_docs(120, seed=6), scratch()
    encodings(monkeypatch, at=3, error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run_in_process(name, docs, [(None, in_memory(docs, 2))], val_every=4, chunk_docs=20)
    encodings(monkeypatch)
    capsys.readouterr()
    val_every = 3 if change == 'split' else 4
    if change == 'source':
        docs = docs[:60] + ['an edited document'] + docs[61:]
    run_in_process(name, docs, [(None, in_memory(docs, 2))], val_every=val_every, chunk_docs=20)
    assert "another source or split: starting over" in capsys.readouterr().out
    assert_bins(name, *expected(docs, val_every))

def test_identity_of_local_files_changes_with_their_size_or_time(tmp_path):
    path = write_jsonl(tmp_path / 'a.jsonl', ['one', 'two'])
    before = documents.identity([path])
    os.utime(path, ns=(1, 1))
    touched = documents.identity([path])
    write_jsonl(tmp_path / 'a.jsonl', ['one', 'two!'])
    os.utime(path, ns=(1, 1))
    assert before != touched != documents.identity([path]) and touched[0][0] == os.path.abspath(path)

def test_a_second_prepare_is_refused_and_ctrl_c_or_kill_keeps_the_chunks_for_the_rerun(tmp_path, scratch, hf_offline):
    """After Ctrl+C or kill -9 the dataset names the command that resumes it; the rerun keeps the bytes of the chunks
    its progress record names (marked here, to tell) and ends with an uninterrupted run's tokens."""
    docs, name = make_docs(300, seed=8, words=(20, 200)), scratch()
    train, val = expected(docs, val_every=9)
    args = ['--source', write_parquet(tmp_path / 'my docs', docs, files=2), '--name', name, '--val_every=9',
            '--chunk_docs=20']
    proc = stopped_prepare('fineweb_edu', 5, *args, env=hf_offline)   # 2 chunks of train and val done
    try:
        assert_user_error(prep('fineweb_edu', *args, check=False), f'another prepare (pid {proc.pid}) is writing',
                          f'{name}/', 'wait for it')
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and 'run the same command again to resume' in err and 'Traceback' not in err
    assert {'train.bin.tmp', 'val.bin.tmp', documents.PROGRESS} <= set(left(name)) and 'train.bin' not in left(name)
    command = shlex.join(['python', 'data/fineweb_edu/prepare.py', *args])   # not data/char's --force: a new start
    with pytest.raises(UserError) as e:
        data.bin_path(name, 'train')
    assert f"train.bin is missing; its prepare was interrupted: run `{command}` again to resume" in str(e.value)
    assert data.prepare_command(name) == command and "'" in command   # the path with a space, quoted
    chunks = progress(name)['chunks']
    proc = stopped_prepare('fineweb_edu', 6, *args, env=hf_offline)   # chunk 5's train part written, not recorded
    proc.kill()
    out, _ = proc.communicate(timeout=60)
    assert f"resuming after chunk {chunks:,}:" in out and chunks == 2 and progress(name)['chunks'] == 4
    at = progress(name)
    done = at['bytes']['train']
    assert os.path.getsize(os.path.join(data.data_dir(name), 'train.bin.tmp')) > done
    with open(os.path.join(data.data_dir(name), 'train.bin.tmp'), 'r+b') as f:
        assert np.array_equal(np.frombuffer(f.read(done), dtype=np.uint16), train[:done // 2])
        f.seek(0)
        f.write(b'\xff\xff' * (done // 2))   # token 65535, which no chunk writes
    out = prep('fineweb_edu', *args).stdout
    assert f"resuming after chunk {at['chunks']:,}: {at['documents']:,} documents" in out
    got_train, got_val = bins(name)
    assert np.all(got_train[:done // 2] == 65535)   # not written again
    assert np.array_equal(got_train[done // 2:], train[done // 2:]) and np.array_equal(got_val, val)
    assert left(name) == ['train.bin', 'val.bin']

def test_bad_input_is_one_line_and_writes_nothing_and_another_dataset_is_replaced_only_with_force(
        tmp_path, scratch, hf_offline):
    name, notes, no_text = scratch(), tmp_path / 'notes.txt', tmp_path / 'no_text.jsonl'
    notes.write_text('plain text\n')
    (tmp_path / 'empty.jsonl').write_bytes(b'')
    (tmp_path / 'nothing_here').mkdir()
    no_text.write_text(json.dumps({'body': 'a document under another name'}) + '\n')
    pq.write_table(pa.table({'text': pa.array([], pa.string())}), tmp_path / 'empty.parquet')
    pq.write_table(pa.table({'text': [1, 2]}), tmp_path / 'numbers.parquet')
    (tmp_path / 'damaged.parquet').write_bytes(b'PAR1 not really')
    for args, fragments in (
            (['--source', tmp_path / 'missing.parquet'], ['missing.parquet', 'does not exist']),
            (['--source', notes], ['notes.txt', '.parquet']),
            (['--source', tmp_path / 'nothing_here'], ['names no files', '.jsonl']),
            (['--source', tmp_path / 'empty.jsonl'], ['empty.jsonl', 'empty']),
            (['--source', notes, '--val_every=1'], ['--val_every=1', 'at least 2']),
            (['--source', notes, '--threads=0'], ['--threads=0']),
            (['--source', no_text], ["no 'text' column", 'body']),
            (['--source', tmp_path / 'empty.parquet'], ['empty.parquet', 'no documents']),
            (['--source', tmp_path / 'numbers.parquet'], ["'text' column of int64"]),
            (['--source', tmp_path / 'damaged.parquet'], ['damaged.parquet', 'not a readable parquet file']),
            (['--source', tmp_path / '*.parquet'], ['damaged.parquet']),
            (['--hub_name', 'nanogpt-tests/no-such-dataset'], ['could not open nanogpt-tests/no-such-dataset'])):
        assert_user_error(prep('fineweb_edu', *args, '--name', name, check=False), *fragments)
    assert left(name) is None
    os.makedirs(data.data_dir(name))
    np.arange(10, dtype=np.uint16).tofile(os.path.join(data.data_dir(name), 'train.bin'))
    source = write_jsonl(tmp_path / 'd.jsonl', make_docs(30))
    assert_user_error(prep('fineweb_edu', '--source', source, '--name', name, check=False), '--force')
    prep('fineweb_edu', '--source', source, '--name', name, '--val_every=3', '--force')
    assert np.array_equal(bins(name)[0], expected(make_docs(30), val_every=3)[0])

@pytest.mark.parametrize('script', PREPARES)
@pytest.mark.parametrize('case, why', [('not UTF-8', 'Invalid UTF8'), ('not JSON', 'JSON parse error'),
                                       ('half-written parquet', 'magic bytes'), ('damaged parquet', 'snappy')])
def test_an_unreadable_source_is_one_line_in_both_prepares(tmp_path, scratch, hf_offline, script, case, why):
    """Documents with one fault: a line not UTF-8 or not JSON, a parquet file cut in half or overwritten."""
    lines = [json.dumps({'text': doc}).encode() for doc in make_docs(60, seed=10) if doc is not None]
    lines[30] = b'{"text": "caf\xe9"}' if case == 'not UTF-8' else b'this line is no JSON'
    (tmp_path / 'docs.jsonl').write_bytes(b'\n'.join(lines) + b'\n')
    pq.write_table(pa.table({'text': [f'document {i} ' * 20 for i in range(500)]}), tmp_path / 'good.parquet',
                   row_group_size=50)
    whole = (tmp_path / 'good.parquet').read_bytes()
    (tmp_path / 'docs.parquet').write_bytes(whole[:len(whole) // 2] if case == 'half-written parquet' else
                                            whole[:200] + bytes(200) + whole[400:])
    source, name = tmp_path / ('docs.jsonl' if case in ('not UTF-8', 'not JSON') else 'docs.parquet'), scratch()
    assert_user_error(prep(script, '--source', source, '--name', name, *PREPARES[script], check=False), why)
    assert left(name) is None
