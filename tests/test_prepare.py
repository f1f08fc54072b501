"""data/*/prepare.py offline as a user runs them; helpers/prepare.py's pieces where small chunks reach edge cases."""
import hashlib
import json
import os
import pickle
import random
import signal
import sys
import time

import numpy as np
import pytest
import tiktoken

from conftest import (DATA_ROOT, assert_user_error, core_train_args, data_changes, data_files, gpt2_tokens,
                      place_tiny_shakespeare, prep, run_inproc, run_script, stopped_prepare)
from helpers import UserError, encode, prepare
from helpers import stories as tiny_stories
from helpers import data as dataset

SEP = tiny_stories.STORY_SEPARATOR

def refused(result, *fragments):
    """Exit status 1, and stderr is one line 'error: ...' holding every fragment as written."""
    line = assert_user_error(result)
    assert result.returncode == 1 and result.stderr.strip() == line, result.stderr
    assert all(fragment in line for fragment in fragments), (fragments, line)
    return line

def folder(name):
    return os.path.join(DATA_ROOT, name)

def digests(name):
    return {f: hashlib.sha256(open(os.path.join(folder(name), f), 'rb').read()).hexdigest()
            for f in sorted(os.listdir(folder(name))) if f.endswith(('.bin', '.pkl'))}

def tokens(name, split):
    dtype = dataset.token_dtype(dataset.read_meta(name))
    return np.fromfile(os.path.join(folder(name), f'{split}.bin'), dtype=dtype)

def decoded(name):
    """(train text, val text, meta) of a character-level dataset, decoded through meta.pkl's itos."""
    meta = dataset.load_meta(os.path.join(folder(name), 'meta.pkl'))
    return (*(''.join(meta['itos'][int(i)] for i in tokens(name, split)) for split in ('train', 'val')), meta)

def no_outputs(name):
    path = folder(name)
    return not os.path.exists(path) or not any(f.endswith(('.bin', '.pkl', '.tmp')) for f in os.listdir(path))

def cjk_text(n_lines=400, seed=0):
    """Text of a Chinese novel's shape: many distinct Han characters, punctuation, some Latin and emoji."""
    rng = random.Random(seed)
    han = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)] + list('介绍小医仙萧炎斗气')
    lines = []
    for i in range(n_lines):
        line = ''.join(rng.choice(han) for _ in range(rng.randint(5, 40))) + rng.choice('，。！？：“”…、')
        line += ('介绍小医仙。' if i % 50 == 0 else '') + (' Dou Qi 😀 𠀀' if i % 37 == 0 else '')  # astral too
        lines.append('\u3000\u3000' + line)
    return '\n'.join(lines) + '\n'

STORIES = ['Once upon a time, there was a little dog.\n\nThe dog liked to run. The end.',
           'Tom said "hi" to Sue.\nSue smiled — she was happy’s friend.',
           'A story that mentions <|endoftext|> in the middle of a line stays one story.',
           'Café naïve 😀 and a\ttab.', 'Last story before the validation split.']
VAL_STORIES = ['Lily had a red ball.', 'Ben found a big box.\n\nIt was empty.']

def stories_txt(stories):
    """TinyStories' .txt with real files' quirks: CRLF, padded or doubled markers, blank and padded stories."""
    out = []
    for i, story in enumerate(stories):
        out.append(('\n  ' if i % 2 else '') + story + '\n\n' * (i % 2))
        out.append(['\n<|endoftext|>\n', '\n<|endoftext|>  \r\n', '\n<|endoftext|>\n<|endoftext|>\n'][i % 3])
    return ''.join(out[:-1])

def test_both_shakespeare_scripts_write_nanogpts_bytes_and_numbers(shakespeare_char):
    for line in ("length of dataset in characters: 1,115,394", "vocab size: 65", "train has 1,003,854 tokens",
                 "val has 111,540 tokens"):
        assert line in shakespeare_char
    text = open(os.path.join(folder('shakespeare_char'), 'input.txt'), 'r').read()   # nanoGPT's way: all in memory
    chars, n = sorted(set(text)), int(len(text) * 0.9)
    stoi = {ch: i for i, ch in enumerate(chars)}
    expect = {'train.bin': np.array([stoi[c] for c in text[:n]], dtype=np.uint16).tobytes(),
              'val.bin': np.array([stoi[c] for c in text[n:]], dtype=np.uint16).tobytes(),
              'meta.pkl': pickle.dumps({'vocab_size': len(chars), 'itos': dict(enumerate(chars)), 'stoi': stoi})}
    for name, data in expect.items():
        assert open(os.path.join(folder('shakespeare_char'), name), 'rb').read() == data, name
    assert set(dataset.read_meta('shakespeare_char')) == {'vocab_size', 'itos', 'stoi'}
    first = digests('shakespeare_char')   # and a second run writes the same bytes, leaving no temporary file
    prep('shakespeare_char')
    assert digests('shakespeare_char') == first
    assert not any(f.endswith('.tmp') for f in os.listdir(folder('shakespeare_char')))
    assert open(place_tiny_shakespeare('shakespeare'), encoding='utf-8').read() == text
    out, enc = prep('shakespeare').stdout, tiktoken.get_encoding('gpt2')
    assert "train has 301,966 tokens" in out and "val has 36,059 tokens" in out
    assert np.array_equal(tokens('shakespeare', 'train'), enc.encode_ordinary(text[:n]))
    assert np.array_equal(tokens('shakespeare', 'val'), enc.encode_ordinary(text[n:]))
    assert not os.path.exists(os.path.join(folder('shakespeare'), 'meta.pkl'))

def test_cjk_round_trip_and_split_under_any_name_and_another_text_only_with_force(tmp_path, scratch):
    text, novel, name = cjk_text(), tmp_path / 'novel.txt', scratch('données')
    novel.write_text(text, encoding='utf-8')
    out = prep('char', '--input', novel, '--name', name).stdout
    (train, val, meta), n = decoded(name), len(text)
    assert train == text[:int(n * 0.9)] and val == text[int(n * 0.9):]
    assert [meta['itos'][i] for i in range(meta['vocab_size'])] == sorted(set(text))
    assert all(meta['stoi'][ch] == i for i, ch in meta['itos'].items())
    assert 'dtype' not in meta and tokens(name, 'train').dtype == np.uint16
    assert f"vocab size: {len(set(text)):,}" in out   # shakespeare's test checks the other numbers' commas
    first = digests(name)
    refused(prep('char', '--input', novel, '--name', name, check=False), '--force')
    prep('char', '--input', novel, '--name', name, '--force')   # the same text again: the same bytes
    assert digests(name) == first and len(first) == 3
    novel.write_text('different words entirely\n' * 100)
    prep('char', '--input', novel, '--name', name, '--force')
    assert ''.join(decoded(name)[:2]) == novel.read_text()

def test_read_text_and_write_chars_split_at_any_character_and_name_the_offset_of_invalid_utf8(tmp_path):
    text = cjk_text(40)
    pieces = [text[i:i + 7] for i in range(0, len(text), 7)]   # the split point falls anywhere in a piece
    seen = np.zeros(encode.UNICODE_SIZE, dtype=bool)
    assert encode.mark_characters(iter(pieces), seen) == len(text)
    assert ''.join(map(chr, np.flatnonzero(seen))) == ''.join(sorted(set(text)))
    for n_train in (1, 6, 7, 8, 13, len(text) // 2, len(text) - 1):
        out_dir = tmp_path / str(n_train)
        encode.write_chars(str(out_dir), seen, iter(pieces), n_train, separator='x')
        train, val, meta = decoded(str(out_dir))
        assert (train, val) == (text[:n_train], text[n_train:]) and meta['separator'] == 'x', n_train
    text, path = 'a中é😀\n' * 50 + cjk_text(5), tmp_path / 't.txt'
    path.write_bytes(text.encode('utf-8'))
    for chunk in range(1, 9):
        assert ''.join(encode.read_text(str(path), chunk_bytes=chunk)) == text
    good = ('héllo 中文 😀 ' * 20).encode('utf-8')
    for bad in (b'\xff', b'\xe4\xb8', b'\xc0\xaf', b'\xed\xa0\x80'):
        path.write_bytes(good + bad + b'tail')
        for chunk in (1, 2, 3, 5, 64, 1 << 20):
            with pytest.raises(UserError) as e:
                ''.join(encode.read_text(str(path), chunk_bytes=chunk))
            assert f"byte offset {len(good)}" in str(e.value), (bad, chunk, str(e.value))
        replaced = ''.join(encode.read_text(str(path), errors='replace', chunk_bytes=3))
        assert replaced.startswith(good.decode()) and '\ufffd' in replaced and replaced.endswith('tail')

def test_a_vocabulary_past_uint16_round_trips_trains_and_samples(tmp_path, scratch):
    points = [p for p in range(0x21, 0x21 + 70_500) if not 0xD800 <= p <= 0xDFFF]
    text = cjk_text(40) + ''.join(chr(p) for p in random.Random(1).sample(points, len(points)) * 2)
    src, name, out_dir = tmp_path / 'wide.txt', scratch('u32'), tmp_path / 'out'
    src.write_text(text, encoding='utf-8')
    out, meta = prep('char', '--input', src, '--name', name).stdout, dataset.read_meta(name)
    assert meta['dtype'] == 'uint32' and meta['vocab_size'] == len(set(text)) > 65_535 and "stored as uint32" in out
    assert os.path.getsize(os.path.join(folder(name), 'train.bin')) == 4 * int(len(text) * 0.9)
    assert ''.join(decoded(name)[:2]) == text
    run_inproc('train.py', *core_train_args(out_dir, dataset=name, max_iters=3, eval_iters=1, eval_interval=2,
                                            batch_size=2, block_size=16, n_layer=1, n_embd=16), check=True)
    prompt = '介绍小医仙😀𠀀'
    assert prompt in run_inproc('sample.py', f'--out_dir={out_dir}', '--device=cpu', '--num_samples=1',
                                '--max_new_tokens=20', f'--start={prompt}', check=True).stdout

def test_bad_files_arguments_and_script_names_are_one_line_and_write_nothing(tmp_path, scratch, shakespeare_char):
    """data/char and data/shakespeare_char name scripts: no other prepare takes such a name, even with --force."""
    name, good = scratch('errs'), 'first line 中文\n'.encode('utf-8') * 1000
    (tmp_path / 'empty.txt').write_bytes(b'')
    (tmp_path / 'ok.txt').write_text('hello world\n' * 10)
    (tmp_path / 'gbk.txt').write_bytes(good + '斗破苍穹'.encode('gbk') + b'\nmore text\n' * 100)
    before = digests('shakespeare_char')
    for file, args, fragments in (('nope.txt', [], ['nope.txt', 'does not exist']), ('empty.txt', [], ['empty']),
                                  ('ok.txt', ['--name', '../escape'], ['--name']),
                                  ('ok.txt', ['--val_fraction=0'], ['--val_fraction']),
                                  ('ok.txt', ['--val_fraction=0.999'], ['too few']),
                                  ('gbk.txt', [], [f"byte offset {len(good)}", '--replace_invalid_utf8']),
                                  *(('ok.txt', ['--name', script, '--force'], [f'--name={script} ',
                                     f'data/{script}/prepare.py', f'--name=my_{script}'])
                                    for script in ('char', 'shakespeare_char'))):
        refused(prep('char', '--input', tmp_path / file, '--name', name, *args, check=False), *fragments)
    assert no_outputs(name) and not os.path.exists(os.path.join(os.path.dirname(DATA_ROOT), 'escape'))
    assert digests('shakespeare_char') == before and not os.path.exists(folder('char'))
    prep('char', '--input', tmp_path / 'gbk.txt', '--name', name, '--replace_invalid_utf8')
    assert '\ufffd' in dataset.read_meta(name)['stoi']

NAMES_TAKEN = ['données', 'doupo', '斗破苍穹', 'हिन्दी', 'cafe\u0301', 'Ελληνικά', 'my_novel-2.v1', '_x', 'a' * 255]
NAMES_REFUSED = {'': 'is empty', '.hidden': "starts with '.'", '..': "starts with '.'", '-x': "starts with '-'",
                 'a/b': "'/'", 'a\\b': "'\\\\'", 'two words': "' '", 'a:b': "':'", '\u0301x': 'starts with',
                 'con': 'device name', 'NUL.txt': 'device name', 'com1': 'device name', 'novel.': "ends with '.'",
                 'é' * 128: '255 bytes'}

def test_names_in_any_language_and_none_a_filesystem_or_a_script_refuses():
    for name in NAMES_TAKEN:
        with prepare.output_dir(name) as path:
            assert path == os.path.join(DATA_ROOT, name) and os.path.isdir(path), name
        assert not os.path.exists(path), name   # made for the block and left empty: gone
    for name, why in NAMES_REFUSED.items():
        with pytest.raises(UserError) as e, prepare.output_dir(name):
            pass
        assert why in str(e.value) and f'--name={name!r}' in str(e.value), (name, str(e.value))
    for name, own in (('Char', None), ('tinystories_char', 'tinystories')):   # Char: case does not count
        with pytest.raises(UserError, match=f'data/{name.lower()}/prepare.py'), \
                prepare.output_dir(name, force=True, own=own):
            pass
    with prepare.output_dir('tinystories', own='tinystories') as path:
        assert path == folder('tinystories')

def test_nanogpt_data_dir_moves_every_dataset(tmp_path, monkeypatch):
    """helpers reads NANOGPT_DATA_DIR at import: one prepare runs in a process of its own, the rest here."""
    elsewhere, text = tmp_path / 'big disk', 'To be, or not to be: that is the question.\n' * 20
    (tmp_path / 'mine.txt').write_text(text)
    run_script('data/char/prepare.py', '--input', str(tmp_path / 'mine.txt'), '--name', 'mine',
               env={'NANOGPT_DATA_DIR': str(elsewhere)})
    assert os.path.isfile(elsewhere / 'mine' / 'train.bin')
    for module in (sys.modules['helpers'], prepare, dataset):
        monkeypatch.setattr(module, 'DATA_ROOT', str(elsewhere))
    for name in ('shakespeare_char', 'shakespeare'):
        (elsewhere / name).mkdir()
        (elsewhere / name / 'input.txt').write_text(text)
        out = prep(name).stdout
        assert f'length of dataset in characters: {len(text):,}' in out and 'downloading' not in out
        assert f'wrote {elsewhere / name}/' in out and {'train.bin', 'val.bin'} <= set(os.listdir(elsewhere / name))
    assert ''.join(decoded(str(elsewhere / 'shakespeare_char'))[:2]) == text   # a full path: folder() keeps it
    (elsewhere / 'notes').mkdir()   # a folder without a dataset in it
    line = refused(run_inproc('train.py', '--dataset=nope', '--device=cpu', f'--out_dir={tmp_path / "out"}'),
                   f"there is no dataset {elsewhere / 'nope'}/")   # and which are, prepared or preparable
    listed = set(line.split('datasets here: ')[1].split(';')[0].split(', '))
    assert {'mine', 'shakespeare_char', 'openwebtext', 'shakespeare', 'tinystories'} <= listed
    assert not {'char', 'bpe', 'notes'} & listed   # tools and other folders are no datasets
    with pytest.raises(UserError, match='prepare the dataset first: python data/openwebtext/prepare.py'):
        dataset.bin_path('openwebtext', 'train')   # its script is in the repository, its folder not yet made

@pytest.mark.parametrize('root', ['a file', '/sys'])   # /sys takes no new folders, even from root
def test_a_data_dir_that_cannot_take_datasets_is_one_line(tmp_path, monkeypatch, root):
    target = tmp_path / 'notes.txt' if root == 'a file' else root
    if root == 'a file':
        target.write_text('my notes\n')
    elif not os.access(root, os.R_OK) or os.path.exists('/sys/mine'):
        pytest.skip('no /sys here')
    monkeypatch.setattr(prepare, 'DATA_ROOT', str(target))   # what NANOGPT_DATA_DIR sets
    (tmp_path / 'mine.txt').write_text('my own words\n' * 20)
    assert_user_error(prep('char', '--input', tmp_path / 'mine.txt', '--name', 'mine', check=False),
                      f'cannot make {target}/mine/', 'NANOGPT_DATA_DIR')
    if root == 'a file':
        assert target.read_text() == 'my notes\n'
        monkeypatch.setattr(dataset, 'DATA_ROOT', str(target))
        with pytest.raises(UserError, match=f'NANOGPT_DATA_DIR={target} is a file'):
            dataset.read_meta('mine')

def test_download_makes_the_folder_and_leaves_nothing_when_it_fails(tmp_path):
    source, target = tmp_path / 'source.txt', tmp_path / 'root' / 'shakespeare_char' / 'input.txt'
    source.write_text('a tiny text\n')
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
    mine = tmp_path / 'data' / 'mine'
    for path in (mine, mine.parent / 'new'):
        path.mkdir(parents=True)
    for name in ('train.bin', 'val.bin', 'input.txt'):
        (mine / name).write_bytes(b'12345678')
    before = data_files(str(mine.parent))
    assert data_changes(before, data_files(str(mine.parent))) == []
    (mine / 'val.bin').unlink()
    (mine.parent / 'new' / 'train.bin').write_bytes(b'')
    stat = os.stat(mine / 'train.bin')
    (mine / 'train.bin').write_bytes(b'87654321')
    os.utime(mine / 'train.bin', ns=(stat.st_atime_ns, stat.st_mtime_ns))   # only the bytes differ
    os.utime(mine / 'input.txt', ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))   # only the time
    assert data_changes(before, data_files(str(mine.parent))) == [
        os.path.join('data', *path) for path in (('mine', 'input.txt changed'), ('mine', 'train.bin changed'),
                                                 ('mine', 'val.bin removed'), ('new', 'train.bin created'))]

def write_ids(out_dir, ids, meta=None, n_val=2):
    with prepare.Output(out_dir) as out:
        out.write('train', ids[:-n_val])
        out.write('val', ids[-n_val:])
        out.commit(meta)

def test_a_failed_write_keeps_the_dataset_and_a_stopped_swap_is_completed_by_the_reader(scratch, monkeypatch, capsys):
    """Stopped after train.bin moved, val.bin and meta.pkl still under .tmp names: the reader's first look ends it."""
    name, replace, moved = scratch('swap'), os.replace, []
    def stops_after_the_first_move(source, target):
        moved.append(target)
        if len(moved) == 3:   # the journal, then train.bin
            raise KeyboardInterrupt
        replace(source, target)
    write_ids(folder(name), np.arange(13), {'vocab_size': 10}, n_val=3)
    with pytest.raises(RuntimeError), prepare.Output(folder(name)) as out:
        out.write('train', np.arange(1000))
        raise RuntimeError('interrupted')
    assert sorted(os.listdir(folder(name))) == ['meta.pkl', 'train.bin', 'val.bin']
    assert np.array_equal(tokens(name, 'train'), np.arange(10)) and dataset.read_meta(name) == {'vocab_size': 10}
    with open(os.path.join(folder(name), 'meta.pkl.tmp'), 'wb') as f:   # as a killed prepare may leave it
        f.write(b'stale')
    write_ids(folder(name), np.arange(7))   # a dataset without meta.pkl replaces one with it: the old one goes
    assert sorted(os.listdir(folder(name))) == ['train.bin', 'val.bin']
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(os, 'replace', stops_after_the_first_move)
        write_ids(folder(name), np.arange(20) % 3, {'vocab_size': 3})
    assert [f for f in os.listdir(folder(name)) if f.startswith('.swap-')]   # left for the next command
    capsys.readouterr()
    assert dataset.read_meta(name) == {'vocab_size': 3}
    assert f"finished preparing data/{name}" in capsys.readouterr().out
    assert np.array_equal(np.concatenate([tokens(name, 'train'), tokens(name, 'val')]), np.arange(20) % 3)
    assert sorted(os.listdir(folder(name))) == ['meta.pkl', 'train.bin', 'val.bin']
    new = scratch('new')   # and a new folder of a prepare that stops goes
    with pytest.raises(KeyboardInterrupt), prepare.output_dir(new) as new_dir, prepare.Output(new_dir):
        raise KeyboardInterrupt
    assert not os.path.exists(folder(new))

@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_prepare_leaves_no_finished_looking_files(tmp_path, scratch, sig):
    name, text = scratch('interrupt'), tmp_path / 'text.txt'
    text.write_text('The quick brown fox 狐狸 jumps.\n' * 1000)
    proc = stopped_prepare('char', 2, '--input', text, '--name', name)   # train.bin.tmp written, val's next
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    proc.communicate(timeout=60)
    left = os.listdir(folder(name)) if os.path.isdir(folder(name)) else []
    assert proc.returncode != 0 and not {'train.bin', 'val.bin', 'meta.pkl'} & set(left), left
    if sig == signal.SIGINT:   # Ctrl-C also removes the temporary files (and the new folder); a kill cannot
        assert not os.path.exists(folder(name)), left
    else:
        assert 'train.bin.tmp' in left, left

def story_files(tmp_path, kind, train=STORIES, val=VAL_STORIES):
    """The --train_file and --val_file arguments of stories written as TinyStories*.txt or .jsonl files."""
    args = []
    for split, flag, texts in (('train', '--train_file', train), ('valid', '--val_file', val)):
        path = tmp_path / f'TinyStories-{split}.{kind}'
        jsonl = ''.join(json.dumps({'text': s}) + '\n' for s in texts)
        path.write_text(stories_txt(texts) if kind == 'txt' else jsonl, encoding='utf-8')
        args += [flag, str(path)]
    return args

@pytest.mark.parametrize('layout', ['varied', 'plain', 'plain_with_untidy_stories', 'no_newline_after_last_marker'])
def test_txt_story_parsing_is_independent_of_chunk_size(tmp_path, layout):
    stories, path = STORIES * 3, tmp_path / 's.txt'
    if layout == 'varied':
        content = stories_txt(stories)
    else:   # the usual layout: story, then a line holding only the marker
        untidy = ['  leading space', 'trailing newline\n', '', 'tab\t'] if layout == 'plain_with_untidy_stories' else []
        content = ''.join(s + '\n<|endoftext|>\n' for s in stories + untidy)
        stories = stories + [s.strip() for s in untidy if s.strip()]
        if layout == 'no_newline_after_last_marker':
            content = content.rstrip('\n')
    path.write_text(content, encoding='utf-8')
    for chunk in (1, 2, 5, 13, 64, 1 << 20):
        assert [s for batch in tiny_stories.txt_stories(str(path), chunk_bytes=chunk) for s in batch] == stories, chunk
        joined = ''.join(tiny_stories.story_text(tiny_stories.txt_stories(str(path), chunk_bytes=chunk), SEP))
        assert joined == ''.join(s + SEP for s in stories), chunk

def test_txt_without_story_ends_stops_before_memory_grows(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_stories, 'MAX_STORY_CHARS', 1000)
    path = tmp_path / 'novel.txt'
    path.write_text('A long novel with no story ends.\n' * 100, encoding='utf-8')
    with pytest.raises(UserError, match="not in TinyStories' format"):
        list(tiny_stories.txt_stories(str(path), chunk_bytes=64))
    path.write_text('A short story.\n<|endoftext|>\n' * 100, encoding='utf-8')
    assert sum(map(len, tiny_stories.txt_stories(str(path), chunk_bytes=64))) == 100

def test_tinystories_from_txt_and_jsonl_and_what_they_refuse(tmp_path, scratch, hf_offline):
    """Both scripts write the same bytes from .txt and from .jsonl (through load_dataset, like the hub's)."""
    written = {}
    for kind in ('txt', 'jsonl'):
        char, bpe = scratch('tsc_' + kind), scratch('ts_' + kind)
        prep('tinystories_char', *story_files(tmp_path, kind), '--name', char)   # prints as data/char does
        train, val, meta = decoded(char)
        assert train == ''.join(s + SEP for s in STORIES) and val == ''.join(s + SEP for s in VAL_STORIES)
        assert meta['separator'] == SEP and SEP in meta['stoi']
        assert [meta['itos'][i] for i in range(meta['vocab_size'])] == sorted(set(train + val))
        written[kind] = digests(char)
        prep('tinystories', *story_files(tmp_path, kind), '--name', bpe)
        assert np.array_equal(tokens(bpe, 'train'), gpt2_tokens(STORIES))
        assert np.array_equal(tokens(bpe, 'val'), gpt2_tokens(VAL_STORIES))
        assert not os.path.exists(os.path.join(folder(bpe), 'meta.pkl'))
    assert written['txt'] == written['jsonl']
    train_file = story_files(tmp_path, 'txt')[1]
    (tmp_path / 'valid.txt').write_text('<|endoftext|>\n\n<|endoftext|>\n')
    (tmp_path / 'valid.jsonl').write_text(json.dumps({'text': '   '}) + '\n')
    # load_dataset's progress goes to stderr before the error: there, only the last line is the error
    for script, files, check in (('tinystories_char', [train_file, 'valid.txt'], refused),
                                 ('tinystories', [train_file, 'valid.txt'], refused),
                                 ('tinystories_char', [story_files(tmp_path, 'jsonl')[1], 'valid.jsonl'],
                                  assert_user_error)):
        name = scratch('noval')
        result = prep(script, '--train_file', files[0], '--val_file', tmp_path / files[1], '--name', name, check=False)
        check(result, 'no validation text')
        assert result.returncode == 1 and no_outputs(name)
    for script in ('tinystories', 'tinystories_char'):   # no local files, and the hub out of reach: quickly
        start = time.time()
        refused(prep(script, check=False), 'roneneldan/TinyStories', 'OfflineModeIsEnabled',
                '--train_file and --val_file')
        assert not os.path.exists(folder(script)) and time.time() - start < 60
    files, name = story_files(tmp_path, 'txt', train=STORIES + [f'I contain {SEP} myself.']), scratch('sep')
    refused(prep('tinystories_char', *files, '--name', name, check=False), '--separator')
    prep('tinystories_char', *files, '--name', name, '--separator', '\x03')
    train, _, meta = decoded(name)
    assert meta['separator'] == '\x03' and train.count('\x03') == len(STORIES) + 1
    plain = VAL_STORIES + ['', 'x', '\n\n  spaces  \n'] + [cjk_text(3)] * 50
    for docs in (plain, plain + ['a doc holding the <|endoftext|> text'], []):
        assert np.array_equal(encode.gpt2_tokens(docs), gpt2_tokens(docs))
