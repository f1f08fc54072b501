"""Nothing is lost: a second run never destroys the first, two runs never share an out_dir, a
finished run stays finished, checkpoints carry their vocabulary, and every bad input follows
one rule: a non-zero exit, one `error:` line on stderr, no traceback, no file created or changed."""
import os
import pickle
import re
import shutil
import signal
import sys

import numpy as np
import pytest
import torch

from conftest import (REPO_ROOT, LiveProcess, assert_user_error, core_text, core_train_args, run_inproc,
                      run_script)
from helpers import checkpoint, data, metrics


def tree(*folders):
    """Every file under the folders, with its bytes: what must not change."""
    files = {}
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                with open(os.path.join(root, name), 'rb') as f:
                    files[os.path.join(root, name)] = f.read()
    return files


def rewrite_meta(name, **changes):
    path = os.path.join(data.data_dir(name), 'meta.pkl')
    with open(path, 'rb') as f:
        meta = pickle.load(f)
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del meta[key]
    with open(path, 'wb') as f:
        pickle.dump(meta, f)


class Setup:
    """What a case may use: a tmp folder, throw-away datasets and a copy of the tiny training run."""

    def __init__(self, tmp_path, make_dataset, tiny_run):
        self.tmp, self.out = tmp_path, tmp_path / 'out'
        self.make_dataset, self.tiny_run = make_dataset, tiny_run
        self.datasets = []

    def dataset(self, suffix):
        name = self.make_dataset(suffix)
        self.datasets.append(data.data_dir(name))
        return name

    def run(self):
        shutil.copytree(self.tiny_run.out_dir, self.out)
        return self.out

    def config(self, text):
        path = self.tmp / 'my_config.py'
        path.write_text(text)
        return str(path)


BENCH = ['--device=cpu', '--compile=False', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16',
         '--batch_size=2', '--bench_iters=1', '--warmup_iters=0']
CASES = {}


def case(title):
    """Register a bad-input case: a function of a Setup returning (script, args, fragments of the error)."""
    def register(fn):
        CASES[title] = fn
        return fn
    return register


def odd_sized_bin(s, script):
    name = s.dataset('odd')
    with open(os.path.join(data.data_dir(name), 'train.bin'), 'ab') as f:
        f.write(b'\x01')  # half a uint16
    args = core_train_args(s.out, dataset=name) if script == 'train.py' else [f'--dataset={name}', *BENCH]
    return script, args, ['train.bin', 'not a whole number of uint16 tokens', 'prepare']


case('odd-sized train.bin, train.py')(lambda s: odd_sized_bin(s, 'train.py'))
case('odd-sized train.bin, bench.py')(lambda s: odd_sized_bin(s, 'bench.py'))


def train_with_meta(s, fragments, **changes):
    name = s.dataset('meta')
    rewrite_meta(name, **changes)
    return 'train.py', core_train_args(s.out, dataset=name), fragments


case('meta.pkl without vocab_size')(lambda s: train_with_meta(
    s, ['meta.pkl', 'no valid vocab_size', 'None'], vocab_size=None))
case('meta.pkl with a string vocab_size')(lambda s: train_with_meta(s, ['vocab_size', "'19'"], vocab_size='19'))
case('meta.pkl with a vocab_size below the token ids')(lambda s: train_with_meta(
    s, ['train.bin', 'token id 18', 'vocab_size is 5'], vocab_size=5, itos=dict(enumerate('\n ade'))))


@case('out_dir that is a file')
def out_dir_file(s):
    (s.tmp / 'a_file').write_text('not a folder')
    return 'train.py', core_train_args(s.tmp / 'a_file', dataset=s.dataset('f')), ['a_file', 'is a file', '--out_dir']


case('out_dir that cannot be written')(lambda s: (  # even root may not create folders in /sys
    'train.py', core_train_args('/sys/nanogpt_test_out', dataset=s.dataset('w')),
    ['cannot write', '/sys/nanogpt_test_out', '--out_dir']))
case('negative learning_rate')(lambda s: (
    'train.py', core_train_args(s.out, dataset=s.dataset('lr'), learning_rate=-1), ['learning_rate', '-1']))
case('negative warmup_iters')(lambda s: (
    'train.py', core_train_args(s.out, dataset=s.dataset('wu'), warmup_iters=-5), ['warmup_iters', '-5']))
case('a new run into an out_dir that holds one')(lambda s: (
    'train.py', core_train_args(s.run()),
    ['already holds a run', 'latest.pt at iter 21', '--init_from=resume', '--overwrite=True', '--out_dir']))


@case('architecture from a config file on resume')
def architecture_from_config(s):
    config = s.config('n_layer = 3\n')
    return 'train.py', [config, *core_train_args(s.run(), init_from='resume', n_layer=None)], \
        ['n_layer=3', f'set by {config}', 'checkpoint has 2']


case('--batch_size=four after a config file')(lambda s: (
    'train.py', [s.config('batch_size = 64\n'), '--batch_size=four'], ['batch_size', 'sets 64', "'four'"]))
case('--dataset=char, the tool for your own text')(lambda s: (
    'train.py', core_train_args(s.out, dataset='char'),
    ["unknown dataset 'char'", 'data/char/prepare.py --input', '--name']))
case('evaluate.py --splits=test')(lambda s: (
    'evaluate.py', [f'--out_dir={s.run()}', '--device=cpu', '--splits=test'],
    ['test.bin', 'train.bin and val.bin', '--splits=val']))
case('evaluate.py --results_file in a missing folder')(lambda s: (
    'evaluate.py', [f'--out_dir={s.run()}', '--device=cpu', f'--results_file={s.tmp / "no" / "r.json"}'],
    ['results_file', 'does not exist']))


@case('evaluate.py --full_pass on a val.bin with ids past the vocabulary')
def full_pass_past_vocabulary(s):
    name = s.dataset('ids')  # the run's own text and vocabulary
    vocab_size = data.read_meta(name)['vocab_size']
    with open(os.path.join(data.data_dir(name), 'val.bin'), 'ab') as f:
        f.write(np.array([vocab_size], dtype=np.uint16).tobytes())
    return 'evaluate.py', [f'--out_dir={s.run()}', f'--dataset={name}', '--device=cpu', '--full_pass=True'], \
        ['val.bin', f'token id {vocab_size}', f'vocab_size is {vocab_size}']


case('export_hf.py --output that is a file')(lambda s: (
    'export_hf.py', [f'--out_dir={s.run()}', f'--output={s.tmp / "out" / "ckpt.pt"}'], ['--output', 'is a file']))


@case('sample_onnx.py on a damaged file')
def damaged_onnx(s):
    (s.tmp / 'model.onnx').write_bytes(b'\x08\x07\x12\x03onnx' + bytes(range(64)))
    return 'sample_onnx.py', [f'--onnx_path={s.tmp / "model.onnx"}', '--num_samples=1'], ['not a readable ONNX model']


case('sample_onnx.py on a text file')(lambda s: (
    'sample_onnx.py', [f'--onnx_path={REPO_ROOT}/README.md', '--num_samples=1'], ['not a readable ONNX model']))


@case('bench.py on a dataset that is not prepared')
def bench_without_data(s):
    name = s.dataset('nobench')
    os.remove(os.path.join(data.data_dir(name), 'train.bin'))
    return 'bench.py', [f'--dataset={name}', *BENCH], ['train.bin is missing', '--real_data=False']


@case('plot.py on a damaged metrics.csv')
def damaged_metrics(s):
    (s.tmp / 'metrics.csv').write_bytes(b'\x00\xff garbage\n1,2,3\n')
    return 'plot.py', [f'--out_dir={s.tmp}'], ['metrics.csv', 'damaged']


WRONG_ADVICE = {'evaluate.py --splits=test': 'prepare.py', '--batch_size=four after a config file': 'default'}


@pytest.mark.parametrize('case', sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(case, tmp_path, make_dataset, tiny_run):
    s = Setup(tmp_path, make_dataset, tiny_run)
    script, args, fragments = CASES[case](s)
    before = tree(tmp_path, *s.datasets)
    result = run_inproc(script, *args)
    line = assert_user_error(result, *fragments)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert WRONG_ADVICE.get(case, '\0') not in line
    assert tree(tmp_path, *s.datasets) == before, "a file was created or changed"


def test_the_rule_holds_through_a_real_interpreter(tmp_path, make_dataset):
    """The in-process runner above mirrors the interpreter; once for real: exit 1, one line."""
    name = make_dataset('real')
    rewrite_meta(name, vocab_size='19')
    proc = run_script('train.py', *core_train_args(tmp_path / 'out', dataset=name), check=False, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count('\n') == 1 and proc.stderr.startswith('error: ')
    assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------- a second run

def test_overwrite_replaces_the_run_on_request(copy_run):
    run_inproc('train.py', *core_train_args(copy_run, max_iters=3, eval_interval=100, overwrite=True), check=True)
    latest = checkpoint.load(str(copy_run), 'latest.pt')
    assert latest['iter_num'] == 4 and not (copy_run / 'ckpt.pt').exists()  # the old run's ckpt.pt is gone
    assert [r['iter'] for r in metrics.read_metrics(str(copy_run / 'metrics.csv')) if r['kind'] == 'train'] == \
        [0, 1, 2, 3]  # a new log, not the old one's rows


def test_a_second_training_in_the_same_out_dir_waits_for_the_first_to_end(tmp_path, core_dataset):
    out_dir = tmp_path / 'out'
    first = LiveProcess([sys.executable, 'train.py', *core_train_args(out_dir, max_iters=100000, eval_interval=5)])
    try:
        first.wait_for(r'^saving checkpoint', timeout=300)
        second = run_inproc('train.py', *core_train_args(out_dir, init_from='resume'))
        assert_user_error(second, f'another training (pid {first.pid})', str(out_dir))
        rows = len(metrics.read_metrics(str(out_dir / 'metrics.csv')))
        first.wait_for(r'^iter \d+:', count=len(re.findall(r'^iter \d+:', first.stdout, re.M)) + 3)
        assert len(metrics.read_metrics(str(out_dir / 'metrics.csv'))) > rows  # the first run's log goes on
    finally:
        first.proc.send_signal(signal.SIGKILL)  # killed: its lock must not outlive it
        first.finish()
    resumed = run_inproc('train.py', *core_train_args(out_dir, init_from='resume', max_iters=12), check=True)
    assert 'Resuming training from' in resumed.stdout


def test_resuming_a_finished_run_changes_nothing(copy_run):
    before = tree(copy_run)
    result = run_inproc('train.py', *core_train_args(copy_run, init_from='resume'), check=True)
    assert 'is complete' in result.stdout and '--max_iters' in result.stdout
    assert tree(copy_run) == before
    more = run_inproc('train.py', *core_train_args(copy_run, init_from='resume', max_iters=22), check=True)
    assert 'iter 21:' in more.stdout and 'iter 22:' in more.stdout
    assert checkpoint.load(str(copy_run), 'latest.pt')['iter_num'] == 23


def test_ctrl_c_during_start_up_is_one_line(tmp_path, core_dataset):
    run = LiveProcess([sys.executable, 'train.py', *core_train_args(tmp_path / 'out')])
    import time
    time.sleep(0.5)  # still importing torch
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 130
    assert run.stderr == "interrupted during start-up: no checkpoint was written\n"
    assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------- the vocabulary travels

def test_checkpoints_carry_their_vocabulary(tiny_run):
    state = checkpoint.load(str(tiny_run.out_dir))
    assert state['tokenizer'] == {'kind': 'char', 'itos': sorted(set(core_text()))}


def test_a_character_model_exported_to_hf_samples_with_its_own_vocabulary(tiny_run, tmp_path):
    pytest.importorskip('transformers')
    from transformers import AutoTokenizer
    hf_dir = tmp_path / 'hf'
    run_inproc('export_hf.py', f'--out_dir={tiny_run.out_dir}', f'--output={hf_dir}', check=True)
    assert oct(os.stat(hf_dir / 'model.safetensors').st_mode & 0o777) == '0o644'
    vocab = AutoTokenizer.from_pretrained(str(hf_dir))  # what a transformers user finds
    assert vocab.decode(vocab.encode('the cat sat')) == 'the cat sat'
    assert vocab.encode('the') == [sorted(set(core_text())).index(c) for c in 'the']
    settings = ['--device=cpu', '--num_samples=2', '--max_new_tokens=30', '--top_k=1', '--start=the']
    from_hf = run_inproc('sample.py', f'--init_from={hf_dir}', *settings, check=True).stdout
    from_checkpoint = run_inproc('sample.py', f'--out_dir={tiny_run.out_dir}', *settings, check=True).stdout
    assert from_hf.split('\n', 7)[-1] == from_checkpoint.split('\n', 6)[-1]  # after settings (and 'loading weights')
    assert from_hf.split('\n', 7)[-1].startswith('the')


def test_evaluate_refuses_a_dataset_with_another_vocabulary(copy_run, make_dataset):
    state = checkpoint.load(str(copy_run))
    other = make_dataset('evalvocab', text=core_text().translate(str.maketrans('abc', 'xyz')))
    state['config']['dataset'] = other
    torch.save(state, copy_run / 'ckpt.pt')
    assert_user_error(run_inproc('evaluate.py', f'--out_dir={copy_run}', '--device=cpu'),
                      '19-character vocabulary', other)
