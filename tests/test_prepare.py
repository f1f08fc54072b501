"""Dataset preparation: data/*/prepare.py and helpers/prepare.py, offline.

Every prepare script runs as a user would run it (a subprocess in the repo root); library
pieces are also tested in-process where a small chunk size makes edge cases reachable.
Every dataset goes to the session's temporary data folder (conftest.DATA_ROOT), never to data/.
"""
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from conftest import DATA_ROOT, REPO_ROOT, data_changes, data_files, run_script, place_tiny_shakespeare

sys.path.insert(0, REPO_ROOT)
from helpers import prepare  # noqa: E402
from helpers import data as dataset  # noqa: E402
from helpers import UserError  # noqa: E402

SEP = prepare.STORY_SEPARATOR
OFFLINE = {'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1'}


# ----------------------------------------------------------------------------- helpers

@pytest.fixture
def scratch():
    """A factory of unique dataset names under DATA_ROOT, all removed at the end of the test."""
    names = []

    def make(tag='ds'):
        names.append(f'_test_{tag}_{uuid.uuid4().hex[:8]}')
        return names[-1]
    yield make
    for name in names:
        shutil.rmtree(os.path.join(DATA_ROOT, name), ignore_errors=True)


@pytest.fixture
def hf_env(tmp_path):
    """Environment for scripts that use datasets: offline, with a private cache."""
    return dict(OFFLINE, HF_HOME=str(tmp_path / 'hf_home'))


def folder(name):
    return os.path.join(DATA_ROOT, name)


def digests(name):
    return {f: hashlib.sha256(open(os.path.join(folder(name), f), 'rb').read()).hexdigest()
            for f in sorted(os.listdir(folder(name))) if f.endswith(('.bin', '.pkl'))}


def tokens(name, split):
    meta = dataset.read_meta(name) if os.path.isdir(folder(name)) else None
    return np.fromfile(os.path.join(folder(name), f'{split}.bin'), dtype=dataset.token_dtype(meta))


def decoded(name):
    """(train text, val text, meta) of a character-level dataset, decoded through meta.pkl's itos."""
    meta = dataset.load_meta(os.path.join(folder(name), 'meta.pkl'))
    itos = meta['itos']
    return (''.join(itos[int(i)] for i in tokens(name, 'train')),
            ''.join(itos[int(i)] for i in tokens(name, 'val')), meta)


def assert_user_error(proc, *fragments):
    """Exit status 1, and stderr is one line 'error: ...' holding every fragment."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def no_outputs(name):
    path = folder(name)
    return not os.path.exists(path) or not any(f.endswith(('.bin', '.pkl', '.tmp')) for f in os.listdir(path))


def gpt2_tokens(docs):
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    ids = []
    for doc in docs:
        ids.extend(enc.encode_ordinary(doc))
        ids.append(enc.eot_token)
    return np.array(ids, dtype=np.uint16)


def cjk_text(n_lines=400, seed=0):
    """Text of a Chinese novel's shape: many distinct Han characters, punctuation, some Latin and emoji."""
    rng = random.Random(seed)
    han = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)] + list('介绍小医仙萧炎斗气')
    punct = list('，。！？：“”……、')
    lines = []
    for i in range(n_lines):
        line = ''.join(rng.choice(han) for _ in range(rng.randint(5, 40)))
        line += rng.choice(punct) + ('介绍小医仙。' if i % 50 == 0 else '')
        if i % 37 == 0:
            line += ' Dou Qi 😀 𠀀'   # astral code points too
        lines.append('\u3000\u3000' + line)
    return '\n'.join(lines) + '\n'


STORIES = [
    'Once upon a time, there was a little dog.\n\nThe dog liked to run. The end.',
    'Tom said "hi" to Sue.\nSue smiled — she was happy’s friend.',
    'A story that mentions <|endoftext|> in the middle of a line stays one story.',
    'Café naïve 😀 and a\ttab.',
    'Last story before the validation split.',
]
VAL_STORIES = ['Lily had a red ball.', 'Ben found a big box.\n\nIt was empty.']


def stories_txt(stories):
    """TinyStories' text format, with the variations real files have: CRLF and padded separator
    lines, blank stories, whitespace around stories, no separator after the last story."""
    out = []
    for i, story in enumerate(stories):
        out.append(('\n  ' if i % 2 else '') + story + '\n\n' * (i % 2))
        out.append(['\n<|endoftext|>\n', '\n<|endoftext|>  \r\n', '\n<|endoftext|>\n<|endoftext|>\n'][i % 3])
    return ''.join(out[:-1])


# ----------------------------------------------------------------------------- shakespeare

def test_shakespeare_char_matches_nanogpt_bytes_and_numbers(shakespeare_char):
    for line in ("length of dataset in characters: 1,115,394", "vocab size: 65",
                 "train has 1,003,854 tokens", "val has 111,540 tokens"):
        assert line in shakespeare_char
    # the reference: nanoGPT's method, whole text in memory
    with open(os.path.join(folder('shakespeare_char'), 'input.txt'), 'r') as f:
        text = f.read()
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    n = len(text)
    expect = {'train.bin': np.array([stoi[c] for c in text[:int(n * 0.9)]], dtype=np.uint16).tobytes(),
              'val.bin': np.array([stoi[c] for c in text[int(n * 0.9):]], dtype=np.uint16).tobytes(),
              'meta.pkl': pickle.dumps({'vocab_size': len(chars), 'itos': itos, 'stoi': stoi})}
    for name, data in expect.items():
        with open(os.path.join(folder('shakespeare_char'), name), 'rb') as f:
            assert f.read() == data, name
    assert set(dataset.read_meta('shakespeare_char')) == {'vocab_size', 'itos', 'stoi'}


def test_shakespeare_char_is_deterministic(shakespeare_char):
    first = digests('shakespeare_char')
    run_script('data/shakespeare_char/prepare.py')
    assert digests('shakespeare_char') == first
    assert not any(f.endswith('.tmp') for f in os.listdir(folder('shakespeare_char')))


def test_shakespeare_bpe_numbers_and_tokens():
    input_path = place_tiny_shakespeare('shakespeare')
    out = run_script('data/shakespeare/prepare.py').stdout
    assert "train has 301,966 tokens" in out and "val has 36,059 tokens" in out
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    text = open(input_path, encoding='utf-8').read()
    split = int(len(text) * 0.9)
    assert np.array_equal(tokens('shakespeare', 'train'), enc.encode_ordinary(text[:split]))
    assert np.array_equal(tokens('shakespeare', 'val'), enc.encode_ordinary(text[split:]))
    assert not os.path.exists(os.path.join(folder('shakespeare'), 'meta.pkl'))


# ----------------------------------------------------------------------------- any text, by character

def test_cjk_round_trip_and_split(tmp_path, scratch):
    text = cjk_text()
    novel = tmp_path / 'novel.txt'
    novel.write_text(text, encoding='utf-8')
    name = scratch('cjk')
    out = run_script('data/char/prepare.py', '--input', str(novel), '--name', name).stdout
    train, val, meta = decoded(name)
    n = len(text)
    assert train == text[:int(n * 0.9)] and val == text[int(n * 0.9):]
    assert [meta['itos'][i] for i in range(meta['vocab_size'])] == sorted(set(text))
    assert all(meta['stoi'][ch] == i for i, ch in meta['itos'].items())
    assert 'dtype' not in meta and tokens(name, 'train').dtype == np.uint16
    assert f"length of dataset in characters: {n:,}" in out
    assert f"vocab size: {len(set(text)):,}" in out
    assert f"train has {int(n * 0.9):,} tokens" in out
    ids = np.concatenate([tokens(name, 'train'), tokens(name, 'val')])
    assert np.array_equal(ids, [meta['stoi'][ch] for ch in text])


def test_write_chars_splits_at_any_character_of_any_piece(tmp_path):
    text = cjk_text(40)
    pieces = [text[i:i + 7] for i in range(0, len(text), 7)]   # the split point falls anywhere in a piece
    seen = np.zeros(prepare.UNICODE_SIZE, dtype=bool)
    assert prepare.mark_characters(iter(pieces), seen) == len(text)
    assert ''.join(map(chr, np.flatnonzero(seen))) == ''.join(sorted(set(text)))
    for n_train in (1, 6, 7, 8, 13, len(text) // 2, len(text) - 1):
        out_dir = tmp_path / str(n_train)
        prepare.write_chars(str(out_dir), seen, iter(pieces), n_train, separator='x')
        meta = dataset.load_meta(str(out_dir / 'meta.pkl'))
        train, val = (''.join(meta['itos'][int(i)] for i in np.fromfile(out_dir / f'{split}.bin', dtype=np.uint16))
                      for split in ('train', 'val'))
        assert (train, val) == (text[:n_train], text[n_train:]) and meta['separator'] == 'x', n_train


def test_prepare_twice_gives_identical_files(tmp_path, scratch):
    novel = tmp_path / 'novel.txt'
    novel.write_text(cjk_text(200, seed=3), encoding='utf-8')
    name = scratch('twice')
    run_script('data/char/prepare.py', '--input', str(novel), '--name', name)
    first = digests(name)
    run_script('data/char/prepare.py', '--input', str(novel), '--name', name, '--force')
    assert digests(name) == first and len(first) == 3


def test_uint32_vocabulary_round_trip(tmp_path, scratch):
    points = [p for p in range(0x21, 0x21 + 70_500) if not 0xD800 <= p <= 0xDFFF]
    rng = random.Random(1)
    text = ''.join(chr(p) for p in rng.sample(points, len(points)))
    text = text + '\n' + ''.join(chr(p) for p in rng.sample(points, len(points)))
    src = tmp_path / 'wide.txt'
    src.write_text(text, encoding='utf-8')
    name = scratch('u32')
    out = run_script('data/char/prepare.py', '--input', str(src), '--name', name).stdout
    meta = dataset.read_meta(name)
    assert meta['dtype'] == 'uint32' and meta['vocab_size'] == len(set(text)) > 65_535
    assert dataset.token_dtype(meta) == np.uint32
    n_train = int(len(text) * 0.9)
    assert os.path.getsize(os.path.join(folder(name), 'train.bin')) == 4 * n_train
    train, val, _ = decoded(name)
    assert train + val == text
    assert "stored as uint32" in out


def _train_and_sample(name, out_dir, start):
    run_script('train.py', f'--dataset={name}', '--device=cpu', '--compile=False', '--max_iters=3',
               '--eval_iters=1', '--eval_interval=2', '--batch_size=2', '--block_size=16', '--n_layer=1',
               '--n_head=2', '--n_embd=16', f'--out_dir={out_dir}', timeout=300)
    assert os.listdir(out_dir), "train.py wrote no checkpoint"
    return run_script('sample.py', f'--out_dir={out_dir}', '--device=cpu', '--num_samples=1',
                      '--max_new_tokens=20', f'--start={start}', timeout=300).stdout


def test_uint32_dataset_trains_and_samples(tmp_path, scratch):
    points = [p for p in range(0x4E00, 0x4E00 + 68_000) if not 0xD800 <= p <= 0xDFFF]
    rng = random.Random(2)
    text = ''.join(chr(p) for p in rng.sample(points, len(points)) * 2)
    src = tmp_path / 'wide.txt'
    src.write_text(text, encoding='utf-8')
    name = scratch('u32train')
    run_script('data/char/prepare.py', '--input', str(src), '--name', name)
    assert dataset.read_meta(name)['dtype'] == 'uint32'
    out = _train_and_sample(name, str(tmp_path / 'out'), text[:3])
    assert text[:3] in out


def test_chinese_novel_trains_and_samples(tmp_path, scratch):
    novel = tmp_path / 'doupo.txt'
    novel.write_text(cjk_text(), encoding='utf-8')
    name = scratch('doupo')
    run_script('data/char/prepare.py', '--input', str(novel), '--name', name)
    out = _train_and_sample(name, str(tmp_path / 'out'), '介绍小医仙')
    assert '介绍小医仙' in out


# ----------------------------------------------------------------------------- reading text

def test_read_text_handles_characters_split_across_chunks(tmp_path):
    text = 'a中é😀\n' * 50 + cjk_text(5)
    path = tmp_path / 't.txt'
    path.write_bytes(text.encode('utf-8'))
    for chunk in range(1, 9):
        assert ''.join(prepare.read_text(str(path), chunk_bytes=chunk)) == text


@pytest.mark.parametrize('bad', [b'\xff', b'\xe4\xb8', b'\xc0\xaf', b'\xed\xa0\x80'])
def test_invalid_utf8_names_the_byte_offset(tmp_path, bad):
    good = ('héllo 中文 😀 ' * 20).encode('utf-8')
    path = tmp_path / 'bad.txt'
    path.write_bytes(good + bad + b'tail')
    for chunk in (1, 2, 3, 5, 64, 1 << 20):
        with pytest.raises(UserError) as e:
            ''.join(prepare.read_text(str(path), chunk_bytes=chunk))
        assert f"byte offset {len(good)}" in str(e.value), (chunk, str(e.value))
    replaced = ''.join(prepare.read_text(str(path), errors='replace', chunk_bytes=3))
    assert replaced.startswith(good.decode()) and '\ufffd' in replaced and replaced.endswith('tail')


def test_cli_invalid_utf8_error_and_replace_flag(tmp_path, scratch):
    good = 'first line 中文\n'.encode('utf-8') * 1000
    path = tmp_path / 'gbk.txt'
    path.write_bytes(good + '斗破苍穹'.encode('gbk') + b'\nmore text\n' * 100)
    name = scratch('badutf8')
    proc = run_script('data/char/prepare.py', '--input', str(path), '--name', name, check=False)
    assert_user_error(proc, f"byte offset {len(good)}", '--replace_invalid_utf8')
    assert no_outputs(name)
    run_script('data/char/prepare.py', '--input', str(path), '--name', name, '--replace_invalid_utf8')
    assert '\ufffd' in dataset.read_meta(name)['stoi']


def test_missing_empty_and_bad_arguments(tmp_path, scratch):
    name = scratch('errs')
    missing = run_script('data/char/prepare.py', '--input', str(tmp_path / 'nope.txt'), '--name', name, check=False)
    assert_user_error(missing, 'nope.txt', 'does not exist')
    empty = tmp_path / 'empty.txt'
    empty.write_bytes(b'')
    assert_user_error(run_script('data/char/prepare.py', '--input', str(empty), '--name', name, check=False),
                      'empty')
    text = tmp_path / 'ok.txt'
    text.write_text('hello world\n' * 10)
    assert_user_error(run_script('data/char/prepare.py', '--input', str(text), '--name', '../escape', check=False),
                      '--name')
    assert_user_error(run_script('data/char/prepare.py', '--input', str(text), '--name', name,
                                 '--val_fraction=0', check=False), '--val_fraction')
    assert_user_error(run_script('data/char/prepare.py', '--input', str(text), '--name', name,
                                 '--val_fraction=0.999', check=False), 'too few')
    assert no_outputs(name)
    assert not os.path.exists(os.path.join(os.path.dirname(DATA_ROOT), 'escape'))


def test_name_of_another_dataset_needs_force(tmp_path, scratch):
    text = tmp_path / 'mine.txt'
    text.write_text('my own words\n' * 100)
    name = scratch('force')
    run_script('data/char/prepare.py', '--input', str(text), '--name', name)
    assert_user_error(run_script('data/char/prepare.py', '--input', str(text), '--name', name, check=False), '--force')
    other = tmp_path / 'other.txt'
    other.write_text('different words entirely\n' * 100)
    run_script('data/char/prepare.py', '--input', str(other), '--name', name, '--force')
    assert ''.join(decoded(name)[:2]) == other.read_text()


NAMES_TAKEN = ['données', 'doupo', '斗破苍穹', 'हिन्दी', 'cafe\u0301', 'Ελληνικά', 'my_novel-2.v1', '_x', 'a' * 255]
NAMES_REFUSED = {'': 'is empty', '.hidden': "starts with '.'", '..': "starts with '.'", '-x': "starts with '-'",
                 'a/b': "'/'", 'a\\b': "'\\\\'", 'two words': "' '", 'a:b': "':'", '\u0301x': 'starts with',
                 'con': 'device name', 'NUL.txt': 'device name', 'com1': 'device name', 'novel.': "ends with '.'",
                 'é' * 128: '255 bytes'}


def test_names_in_any_language_and_none_a_filesystem_refuses(tmp_path, scratch):
    for name in NAMES_TAKEN:
        assert prepare.output_dir(name) == os.path.join(DATA_ROOT, name), name
    for name, why in NAMES_REFUSED.items():
        with pytest.raises(UserError) as e:
            prepare.output_dir(name)
        assert why in str(e.value) and f'--name={name!r}' in str(e.value), (name, str(e.value))
    text = tmp_path / 'roman.txt'
    text.write_text('Il était une fois des données.\n' * 50, encoding='utf-8')
    name = scratch('données')
    run_script('data/char/prepare.py', '--input', str(text), '--name', name)
    assert ''.join(decoded(name)[:2]) == text.read_text(encoding='utf-8')


def test_script_folder_names_are_no_dataset_names(tmp_path, shakespeare_char):
    """data/char holds the tool for your own text, and data/shakespeare_char's name is its script's dataset:
    no other prepare takes such a name, with --force or without, and the message offers another."""
    text = tmp_path / 'mine.txt'
    text.write_text('my own words\n' * 100)
    before = digests('shakespeare_char')
    for name in ('char', 'shakespeare_char'):
        proc = run_script('data/char/prepare.py', '--input', str(text), '--name', name, '--force', check=False)
        assert_user_error(proc, f'--name={name} ', f'data/{name}/prepare.py', f'--name=my_{name}')
    assert digests('shakespeare_char') == before and not os.path.exists(folder('char'))
    with pytest.raises(UserError, match='data/char/prepare.py'):   # the same folder where case does not count
        prepare.output_dir('Char', force=True)
    with pytest.raises(UserError, match='data/tinystories_char/prepare.py'):
        prepare.output_dir('tinystories_char', force=True, own='tinystories')
    assert prepare.output_dir('tinystories', own='tinystories') == folder('tinystories')


def test_nanogpt_data_dir_moves_every_dataset(tmp_path):
    """The shakespeare scripts read input.txt from <NANOGPT_DATA_DIR>/<name>/ and write there, data/char/prepare.py
    writes --name there, and train.py looks there; the scripts stay in the repository."""
    elsewhere = tmp_path / 'big disk'
    env = {'NANOGPT_DATA_DIR': str(elsewhere)}
    text = 'To be, or not to be: that is the question.\n' * 20
    for name in ('shakespeare_char', 'shakespeare'):
        (elsewhere / name).mkdir(parents=True)
        (elsewhere / name / 'input.txt').write_text(text)
        out = run_script(f'data/{name}/prepare.py', env=env).stdout
        assert f'length of dataset in characters: {len(text):,}' in out and 'downloading' not in out
        assert f'wrote {elsewhere / name}/' in out
        assert {'train.bin', 'val.bin'} <= set(os.listdir(elsewhere / name))
    meta = dataset.load_meta(str(elsewhere / 'shakespeare_char' / 'meta.pkl'))
    ids = np.concatenate([np.fromfile(elsewhere / 'shakespeare_char' / f'{split}.bin', dtype=np.uint16)
                          for split in ('train', 'val')])
    assert ''.join(meta['itos'][int(i)] for i in ids) == text
    (tmp_path / 'mine.txt').write_text(text)
    run_script('data/char/prepare.py', '--input', str(tmp_path / 'mine.txt'), '--name', 'mine', env=env)
    assert os.path.isfile(elsewhere / 'mine' / 'train.bin')
    proc = run_script('train.py', '--dataset=nope', '--device=cpu', f'--out_dir={tmp_path / "out"}', env=env,
                      check=False)
    assert_user_error(proc, f"{elsewhere / 'nope'}/", 'mine', 'shakespeare_char')


def test_unknown_dataset_lists_the_prepared_and_the_preparable():
    with pytest.raises(UserError) as e:
        dataset.bin_path('_test_nope', 'train')
    assert f"there is no dataset {os.path.join(DATA_ROOT, '_test_nope')}/" in str(e.value)
    listed = str(e.value).split('datasets here: ')[1].split(';')[0].split(', ')
    assert {'openwebtext', 'shakespeare', 'tinystories'} <= set(listed) and 'char' not in listed
    with pytest.raises(UserError, match='prepare the dataset first: python data/openwebtext/prepare.py'):
        dataset.bin_path('openwebtext', 'train')   # its script is in the repository, its folder not yet made


def test_download_makes_the_folder_and_leaves_nothing_when_it_fails(tmp_path):
    source = tmp_path / 'source.txt'
    source.write_text('a tiny text\n')
    target = tmp_path / 'root' / 'shakespeare_char' / 'input.txt'
    assert prepare.download(source.as_uri(), str(target)) == str(target)
    assert target.read_text() == 'a tiny text\n'
    source.unlink()
    assert prepare.download(source.as_uri(), str(target)) == str(target)   # there already: not fetched again
    missing = tmp_path / 'root' / 'shakespeare' / 'input.txt'
    with pytest.raises(UserError, match='could not download'):
        prepare.download(source.as_uri(), str(missing))
    assert os.listdir(missing.parent) == []


def test_the_data_guard_sees_files_created_removed_and_rewritten(tmp_path):
    """conftest's check of the repository's data/ at the end of every session, on a folder of its own."""
    top = tmp_path / 'data'
    (top / 'mine').mkdir(parents=True)
    for name in ('train.bin', 'val.bin', 'input.txt'):
        (top / 'mine' / name).write_bytes(b'12345678')
    before = data_files(str(top))
    assert data_changes(before, data_files(str(top))) == []
    (top / 'mine' / 'val.bin').unlink()
    (top / 'new').mkdir()
    (top / 'new' / 'train.bin').write_bytes(b'')
    stat = os.stat(top / 'mine' / 'train.bin')
    (top / 'mine' / 'train.bin').write_bytes(b'87654321')
    os.utime(top / 'mine' / 'train.bin', ns=(stat.st_atime_ns, stat.st_mtime_ns))   # only the bytes differ
    os.utime(top / 'mine' / 'input.txt', ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))   # only the time
    assert data_changes(before, data_files(str(top))) == [
        os.path.join('data', 'mine', 'input.txt') + ' changed', os.path.join('data', 'mine', 'train.bin') + ' changed',
        os.path.join('data', 'mine', 'val.bin') + ' removed', os.path.join('data', 'new', 'train.bin') + ' created']


def test_failed_write_leaves_previous_files_untouched(tmp_path):
    out_dir = str(tmp_path / 'ds')
    with prepare.Output(out_dir) as out:
        out.write('train', np.arange(10))
        out.write('val', np.arange(3))
        out.commit({'vocab_size': 10})
    with pytest.raises(RuntimeError):
        with prepare.Output(out_dir) as out:
            out.write('train', np.arange(1000))
            raise RuntimeError('interrupted')
    assert sorted(os.listdir(out_dir)) == ['meta.pkl', 'train.bin', 'val.bin']
    assert np.array_equal(np.fromfile(os.path.join(out_dir, 'train.bin'), dtype=np.uint16), np.arange(10))
    assert dataset.load_meta(os.path.join(out_dir, 'meta.pkl')) == {'vocab_size': 10}
    with open(os.path.join(out_dir, 'meta.pkl.tmp'), 'wb') as f:   # as a killed prepare may leave it
        f.write(b'stale')
    with prepare.Output(out_dir) as out:   # a dataset without meta.pkl replaces one with it: the old one goes
        out.write('train', np.arange(5))
        out.write('val', np.arange(2))
        out.commit()
    assert sorted(os.listdir(out_dir)) == ['train.bin', 'val.bin']
    new_dir = str(tmp_path / 'new')
    with pytest.raises(KeyboardInterrupt):
        with prepare.Output(new_dir) as out:
            raise KeyboardInterrupt
    assert not os.path.exists(new_dir)


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_prepare_leaves_no_finished_looking_files(tmp_path, scratch, sig):
    big = tmp_path / 'big.txt'
    big.write_bytes(('The quick brown fox 狐狸 jumps.\n' * 2_500_000).encode('utf-8'))   # ~95 MB
    name = scratch('interrupt')
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.Popen([sys.executable, 'data/char/prepare.py', '--input', str(big), '--name', name],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tmp_train = os.path.join(folder(name), 'train.bin.tmp')
    deadline = time.time() + 120
    while not os.path.exists(tmp_train) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "prepare finished before it could be interrupted; use a larger input"
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    left = os.listdir(folder(name)) if os.path.isdir(folder(name)) else []
    assert not {'train.bin', 'val.bin', 'meta.pkl'} & set(left), left
    if sig == signal.SIGINT:   # Ctrl-C also removes the temporary files (and the new folder); kill -9 cannot
        assert not os.path.exists(folder(name)), left


# ----------------------------------------------------------------------------- TinyStories

def write_story_files(tmp_path, kind, train=STORIES, val=VAL_STORIES):
    paths = []
    for split, stories in (('train', train), ('valid', val)):
        path = tmp_path / f'TinyStories-{split}.{kind}'
        if kind == 'txt':
            path.write_text(stories_txt(stories), encoding='utf-8')
        else:
            path.write_text(''.join(json.dumps({'text': s}) + '\n' for s in stories), encoding='utf-8')
        paths.append(str(path))
    return paths


@pytest.mark.parametrize('layout', ['varied', 'plain', 'plain_with_untidy_stories', 'no_newline_after_last_marker'])
def test_txt_story_parsing_is_independent_of_chunk_size(tmp_path, layout):
    stories = STORIES * 3
    if layout == 'varied':
        content = stories_txt(stories)
    else:   # the usual layout: story, then a line holding only the marker
        untidy = ['  leading space', 'trailing newline\n', '', 'tab\t'] if layout == 'plain_with_untidy_stories' else []
        content = ''.join(s + '\n<|endoftext|>\n' for s in stories + untidy)
        stories = stories + [s.strip() for s in untidy if s.strip()]
        if layout == 'no_newline_after_last_marker':
            content = content.rstrip('\n')
    path = tmp_path / 's.txt'
    path.write_text(content, encoding='utf-8')
    for chunk in (1, 2, 5, 13, 64, 1 << 20):
        got = [s for batch in prepare.txt_stories(str(path), chunk_bytes=chunk) for s in batch]
        assert got == stories, chunk
        joined = ''.join(prepare.story_text(prepare.txt_stories(str(path), chunk_bytes=chunk), SEP))
        assert joined == ''.join(s + SEP for s in stories), chunk


def test_txt_without_story_ends_stops_before_memory_grows(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, 'MAX_STORY_CHARS', 1000)
    path = tmp_path / 'novel.txt'
    path.write_text('A long novel with no story ends.\n' * 100, encoding='utf-8')
    with pytest.raises(UserError, match="not in TinyStories' format"):
        list(prepare.txt_stories(str(path), chunk_bytes=64))
    path.write_text('A short story.\n<|endoftext|>\n' * 100, encoding='utf-8')
    assert sum(map(len, prepare.txt_stories(str(path), chunk_bytes=64))) == 100


def test_tinystories_char_from_txt_files(tmp_path, scratch):
    train_file, val_file = write_story_files(tmp_path, 'txt')
    name = scratch('tsc')
    out = run_script('data/tinystories_char/prepare.py', '--train_file', train_file, '--val_file', val_file,
                     '--name', name).stdout
    train, val, meta = decoded(name)
    assert train == ''.join(s + SEP for s in STORIES)
    assert val == ''.join(s + SEP for s in VAL_STORIES)
    assert meta['separator'] == SEP and SEP in meta['stoi']
    assert [meta['itos'][i] for i in range(meta['vocab_size'])] == sorted(set(train + val))
    assert f"vocab size: {meta['vocab_size']}" in out and f"train has {len(train):,} tokens" in out


def test_tinystories_local_datasets_source_matches_txt(tmp_path, scratch, hf_env):
    """The .jsonl files go through load_dataset like the hub load and must give the same bytes."""
    txt_name, json_name = scratch('tsc_txt'), scratch('tsc_json')
    run_script('data/tinystories_char/prepare.py', *interleave(write_story_files(tmp_path, 'txt')), '--name', txt_name)
    run_script('data/tinystories_char/prepare.py', *interleave(write_story_files(tmp_path, 'jsonl')),
               '--name', json_name, env=hf_env)
    assert digests(txt_name) == digests(json_name)


def interleave(files):
    return ['--train_file', files[0], '--val_file', files[1]]


def test_tinystories_bpe_txt_and_jsonl(tmp_path, scratch, hf_env):
    for kind in ('txt', 'jsonl'):
        name = scratch('ts_' + kind)
        out = run_script('data/tinystories/prepare.py', *interleave(write_story_files(tmp_path, kind)), '--name', name,
                         env=hf_env).stdout
        assert np.array_equal(tokens(name, 'train'), gpt2_tokens(STORIES))
        assert np.array_equal(tokens(name, 'val'), gpt2_tokens(VAL_STORIES))
        assert not os.path.exists(os.path.join(folder(name), 'meta.pkl'))
        assert f"train has {len(gpt2_tokens(STORIES)):,} tokens" in out


def test_tinystories_without_validation_text(tmp_path, scratch, hf_env):
    train_file, _ = write_story_files(tmp_path, 'txt')
    only_separators = tmp_path / 'valid.txt'
    only_separators.write_text('<|endoftext|>\n\n<|endoftext|>\n')
    for script in ('data/tinystories_char/prepare.py', 'data/tinystories/prepare.py'):
        name = scratch('noval')
        proc = run_script(script, '--train_file', train_file, '--val_file', str(only_separators), '--name', name,
                          check=False)
        assert_user_error(proc, 'no validation text')
        assert no_outputs(name)
    empty_json = tmp_path / 'valid.jsonl'
    empty_json.write_text(json.dumps({'text': '   '}) + '\n')
    name = scratch('noval_json')
    proc = run_script('data/tinystories_char/prepare.py', '--train_file', write_story_files(tmp_path, 'jsonl')[0],
                      '--val_file', str(empty_json), '--name', name, env=hf_env, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith('error: ')
    assert 'no validation text' in proc.stderr and no_outputs(name)


def test_tinystories_separator_inside_a_story_is_an_error(tmp_path, scratch):
    train_file, val_file = write_story_files(tmp_path, 'txt', train=STORIES + [f'I contain {SEP} myself.'])
    name = scratch('sep')
    proc = run_script('data/tinystories_char/prepare.py', '--train_file', train_file, '--val_file', val_file,
                      '--name', name, check=False)
    assert_user_error(proc, '--separator')
    run_script('data/tinystories_char/prepare.py', '--train_file', train_file, '--val_file', val_file,
               '--name', name, '--separator', '\x03')
    train, _, meta = decoded(name)
    assert meta['separator'] == '\x03' and train.count('\x03') == len(STORIES) + 1


def test_gpt2_tokens_equal_one_call_per_document():
    plain = VAL_STORIES + ['', 'x', '\n\n  spaces  \n'] + [cjk_text(3)] * 50
    for docs in (plain, plain + ['a doc holding the <|endoftext|> text'], []):
        assert np.array_equal(prepare.gpt2_tokens(docs), gpt2_tokens(docs))


# ----------------------------------------------------------------------------- openwebtext, local source

def test_openwebtext_local_source(tmp_path, scratch, hf_env):
    rng = random.Random(5)
    words = 'the a web page about cats dogs news sport science 中文 café'.split()
    docs = [' '.join(rng.choice(words) for _ in range(rng.randint(5, 200))) + f' doc{i}.' for i in range(60)]
    corpus = tmp_path / 'corpus'
    corpus.mkdir()
    for i, doc in enumerate(docs):
        (corpus / f'{i:03d}.txt').write_text(doc, encoding='utf-8')
    jsonl = tmp_path / 'corpus.jsonl'
    jsonl.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs), encoding='utf-8')
    results = []
    for source in (str(corpus), str(jsonl)):
        name = scratch('owt')
        out = run_script('data/openwebtext/prepare.py', '--source', source, '--name', name, '--num_proc', '2',
                         env=hf_env).stdout
        train, val = tokens(name, 'train'), tokens(name, 'val')
        assert train.dtype == np.uint16 and len(val) > 0
        assert "59 train and 1 val documents" in out
        import tiktoken
        enc = tiktoken.get_encoding('gpt2')
        both = np.concatenate([train, val])
        assert both[-1] == 50256 and len(both) == len(gpt2_tokens(docs))
        pieces = np.split(both, np.flatnonzero(both == 50256)[:-1] + 1)
        assert sorted(enc.decode(p[:-1].tolist()) for p in pieces) == sorted(docs)
        results.append(digests(name))
    assert results[0] == results[1]
