"""Nothing is lost: a second run never destroys the first, two runs never share an out_dir, a
finished run stays finished, checkpoints carry their vocabulary, and two rules hold. Every bad
input: a non-zero exit, one `error:` line on stderr, no traceback, no file created or changed.
Whatever an export or --overwrite=True replaces is gone only once its replacement is whole."""
import collections
import gc
import os
import pickle
import re
import shutil
import signal
import sys

import numpy as np
import pytest
import torch

from conftest import (LiveProcess, REPO_ROOT, RunsCode, assert_user_error, checkpoint_files, core_text,
                      core_train_args, run_inproc, run_script)
from helpers import checkpoint, data, metrics, runs
import tiny_runs


def tree(*folders):
    """Every file under the folders, with its bytes: what must not change."""
    files = {}
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                with open(os.path.join(root, name), 'rb') as f:
                    files[os.path.join(root, name)] = f.read()
    return files


def transformers_folder(folder, vocab_size=50257, runs_code=None):
    """A tiny transformers GPT-2 folder (model.safetensors); with runs_code, its weights instead in a
    pytorch_model.bin whose unpickling would create the file runs_code."""
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=vocab_size,
                                       bos_token_id=None, eos_token_id=None))
    model.save_pretrained(folder)
    if runs_code:
        torch.save(dict(model.state_dict(), note=RunsCode(runs_code)), folder / 'pytorch_model.bin')
        os.remove(folder / 'model.safetensors')


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

    def dataset(self, suffix, meta=True):
        name = self.make_dataset(suffix)
        self.datasets.append(data.data_dir(name))
        if not meta:  # a GPT-2 BPE dataset, as far as the scripts can tell
            os.remove(os.path.join(data.data_dir(name), 'meta.pkl'))
        return name

    def folder(self, name, *files):
        """A folder in tmp holding these (empty) files."""
        (self.tmp / name).mkdir()
        for file in files:
            (self.tmp / name / file).write_text('')
        return self.tmp / name

    def binary_file(self, zeros=False):
        """4 MiB of bytes, valid UTF-8 (zeros) or, from 3 MiB on, not."""
        path = self.tmp / 'binary.dat'
        path.write_bytes(bytes(4 << 20) if zeros else b'a' * (3 << 20) + bytes(range(128, 256)) * 8192)
        return path

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
case('learning_rate of 1e999 (inf)')(lambda s: (
    'train.py', core_train_args(s.out, dataset=s.dataset('lri'), learning_rate='1e999'), ['learning_rate', 'inf']))
case('negative warmup_iters')(lambda s: (
    'train.py', core_train_args(s.out, dataset=s.dataset('wu'), warmup_iters=-5), ['warmup_iters', '-5']))
case('a new run into an out_dir that holds one')(lambda s: (
    'train.py', core_train_args(s.run()),
    ['already holds a run', 'latest.pt after iteration 20', '--init_from=resume', '--overwrite=True', '--out_dir']))


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


# exports write only where nothing but an earlier export of their own would be replaced
case('export_hf.py --output a folder holding other files')(lambda s: (
    'export_hf.py', [f'--out_dir={s.run()}', f'--output={s.folder("mine", "notes.txt")}'],
    ['mine', 'notes.txt', 'no export_hf.py export wrote', 'new or empty folder']))
case('export_hf.py --output the out_dir itself')(lambda s: (
    'export_hf.py', [f'--out_dir={s.run()}', f'--output={s.out}'], ['ckpt.pt', 'latest.pt', 'move those files away']))
case('export_hf.py --output where nothing can be written')(lambda s: (
    'export_hf.py', [f'--out_dir={s.run()}', '--output=/sys/nanogpt_test_hf'], ['cannot write', '/sys']))
case('export_onnx.py --output an existing folder')(lambda s: (
    'export_onnx.py', [f'--out_dir={s.run()}', f'--output={s.tmp}'], ['is a folder', f'--output={s.tmp}/model.onnx']))
case('export_onnx.py --output over a checkpoint')(lambda s: (
    'export_onnx.py', [f'--out_dir={s.run()}', f'--output={s.out / "ckpt.pt"}'],
    ['ckpt.pt exists', 'export_onnx.py did not write it', '--output']))
case('export_onnx.py --output where nothing can be written')(lambda s: (
    'export_onnx.py', [f'--out_dir={s.run()}', '--output=/sys/nanogpt_test.onnx'], ['cannot write', '/sys']))
case('export_onnx.py --seed=-1')(lambda s: ('export_onnx.py', [f'--out_dir={s.run()}', '--seed=-1'], ['seed', '-1']))


# checkpoints that are not what they seem
def sample_from_file(s, content, fragments):
    s.out.mkdir()
    (s.out / 'ckpt.pt').write_bytes(content)
    return 'sample.py', [f'--out_dir={s.out}', '--device=cpu'], fragments


NOT_OURS = ['ckpt.pt', 'not a checkpoint that this project or nanoGPT wrote', 'not loaded']
case('sample.py on a pickled dict')(lambda s: sample_from_file(s, pickle.dumps({'a': 1}), NOT_OURS))
case('sample.py on a pickled numpy array')(lambda s: sample_from_file(s, pickle.dumps(np.zeros(3)), NOT_OURS))


def damaged_beside_whole(s, damaged, script):
    out = s.run()
    (out / damaged).write_bytes((out / damaged).read_bytes()[:5000])
    other = 'ckpt.pt' if damaged == 'latest.pt' else 'latest.pt'
    args = core_train_args(out, init_from='resume') if script == 'train.py' else [f'--out_dir={out}', '--device=cpu']
    return script, args, [f'{damaged} is truncated or corrupt', f'{other} beside it loads', 'iter',
                          f'mv {out / damaged} {out / damaged}.damaged']


case('resume with a damaged latest.pt beside a whole ckpt.pt')(lambda s: damaged_beside_whole(
    s, 'latest.pt', 'train.py'))
case('sample.py with a damaged ckpt.pt beside a whole latest.pt')(lambda s: damaged_beside_whole(
    s, 'ckpt.pt', 'sample.py'))


# the run that --overwrite=True moved aside, before the new run saved
def only_replaced(s):
    s.run()
    runs.claim_out_dir(str(s.out), resuming=False, overwrite=True).close()
    return s.out


RESTORE = ['replaced/', 'latest.pt after iteration 20', 'where --overwrite=True moved it', 'to restore it: mv ']
case('sample.py on an out_dir whose run is in replaced/')(lambda s: (
    'sample.py', [f'--out_dir={only_replaced(s)}', '--device=cpu'], ['no checkpoint', *RESTORE]))
case('resume of an out_dir whose run is in replaced/')(lambda s: (
    'train.py', core_train_args(only_replaced(s), init_from='resume'), ['no checkpoint', *RESTORE]))
case('a new run into an out_dir whose run is in replaced/')(lambda s: (
    'train.py', core_train_args(only_replaced(s)), ['holds no checkpoint', *RESTORE, '--overwrite=True']))


# transformers folders whose weights would run code: refused before anything runs (the marker would be a new file)
def code_in_weights(s, script):
    folder = s.tmp / 'hf'
    transformers_folder(folder, runs_code=s.tmp / 'PWNED')
    args = core_train_args(s.out, init_from=folder, dataset=s.dataset('bpe', meta=False)) if script == 'train.py' \
        else [f'--init_from={folder}', '--device=cpu']
    return script, args, [f'{folder} was refused', 'would run code', 'GLOBAL', 'safetensors']


case('sample.py --init_from a folder whose weights run code')(lambda s: code_in_weights(s, 'sample.py'))
case('train.py --init_from a folder whose weights run code')(lambda s: code_in_weights(s, 'train.py'))


@case('sample.py --init_from a folder whose model.safetensors was cut short')
def cut_safetensors(s):
    transformers_folder(s.tmp / 'hf')
    weights = s.tmp / 'hf' / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:1000])
    return 'sample.py', [f'--init_from={s.tmp / "hf"}', '--device=cpu'], ['model.safetensors is truncated or corrupt']


# numbers at the edges, and files that are not what the flag wants
case('sample.py --seed=2**64')(lambda s: (
    'sample.py', [f'--out_dir={s.run()}', '--device=cpu', f'--seed={2 ** 64}'], ['seed', str(2 ** 64)]))
case('sample_onnx.py --seed=-1')(lambda s: ('sample_onnx.py', [f'--onnx_path={s.tmp}', '--seed=-1'], ['seed', '-1']))
case('sample.py --temperature=1e999')(lambda s: (
    'sample.py', [f'--out_dir={s.run()}', '--device=cpu', '--temperature=1e999'], ['temperature', 'finite', 'inf']))
case('sample.py --start=FILE:<a folder>')(lambda s: (
    'sample.py', [f'--out_dir={s.run()}', '--device=cpu', f'--start=FILE:{s.tmp}'], ['prompt file', 'is a folder']))
case('sample.py --prompts=<a large binary file>')(lambda s: (
    'sample.py', [f'--out_dir={s.run()}', '--device=cpu', f'--prompts={s.binary_file()}'],
    ['not valid UTF-8', 'at byte offset 3145728', 'save the prompts file as UTF-8']))
case('sample.py --prompts=<a file of zeros>')(lambda s: (
    'sample.py', [f'--out_dir={s.run()}', '--device=cpu', f'--prompts={s.binary_file(zeros=True)}'],
    ['prompts file', 'NUL bytes', 'binary']))
case('sample.py --out_dir=<a transformers folder>')(lambda s: (
    'sample.py', [f'--out_dir={s.folder("hf", "config.json")}', '--device=cpu'],
    ['no checkpoint', 'holds a transformers model', f'--init_from={s.tmp / "hf"}']))
case('sample_onnx.py --onnx_path=<a folder>')(lambda s: (
    'sample_onnx.py', [f'--onnx_path={s.tmp}'], ['is a folder', '--onnx_path']))

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


# ----------------------------------------------------------------------------- safe replacement
# Each case makes an old output under tmp, then replaces it twice: once stopped or failing half-way
# (interrupted), after which every old file is still there byte for byte (a run moved aside: in
# replaced/), and once whole, after which the replacement is in place, checked by check(old, new)
# with both trees, and nothing temporary is left beside it.

Replacement = collections.namedtuple('Replacement', 'interrupted whole check moved', defaults=(lambda path: path,))
REPLACEMENTS = {}


def replacement(title, *marks):
    def register(fn):
        REPLACEMENTS[title] = (fn, marks)
        return fn
    return register


def bpe_checkpoint(s):
    """An out_dir whose checkpoint is a GPT-2 BPE model (no tokenizer files in its export)."""
    out = s.tmp / 'bpe_run'
    tiny_runs.save_checkpoint(tiny_runs.make_model(vocab_size=50304, n_embd=16, block_size=16), str(out), '_no_meta')
    return out


def ctrl_c_after(monkeypatch, owner, name):
    """Make owner.name do its work, then raise KeyboardInterrupt, as a Ctrl+C right after it would."""
    real = getattr(owner, name)

    def then_interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(owner, name, then_interrupted)


def stopped(script, *args):
    with pytest.raises(KeyboardInterrupt):
        run_inproc(script, *args)


def hf_export(s, out_dir):
    return ['export_hf.py', f'--out_dir={out_dir}', f'--output={s.tmp / "hf"}']


def hf_replaced_whole(old, new):
    """The character export (with its tokenizer.json) replaced by the BPE one: no file of the old kind left."""
    names = {os.path.basename(p) for p in new if os.path.dirname(p).endswith('hf')}
    assert 'tokenizer.json' not in names and {'config.json', 'model.safetensors', 'export_hf.json'} <= names
    config = [p for p in new if p.endswith(os.path.join('hf', 'config.json'))][0]
    assert b'"vocab_size": 50304' in new[config]


def old_hf_export(s):
    run_inproc(*hf_export(s, s.run()), check=True)
    assert (s.tmp / 'hf' / 'tokenizer.json').exists()
    return bpe_checkpoint(s)


@replacement('export_hf.py stopped by Ctrl+C after writing the weights')
def hf_ctrl_c(s):
    import transformers
    bpe = old_hf_export(s)
    return Replacement(
        lambda m: (ctrl_c_after(m, transformers.GPT2LMHeadModel, 'save_pretrained'), stopped(*hf_export(s, bpe))),
        lambda: run_inproc(*hf_export(s, bpe), check=True), hf_replaced_whole)


@replacement('export_hf.py whose check fails')
def hf_check_fails(s):
    bpe = old_hf_export(s)
    return Replacement(
        lambda m: assert_user_error(run_inproc(*hf_export(s, bpe), '--tolerance=-1'), 'so it was not kept'),
        lambda: run_inproc(*hf_export(s, bpe), check=True), hf_replaced_whole)


def onnx_export(s, out_dir):
    return ['export_onnx.py', f'--out_dir={out_dir}', f'--output={s.tmp / "model.onnx"}', '--dynamo=False']


def onnx_replaced_whole(old, new):
    import onnx
    path = [p for p in new if p.endswith('model.onnx')][0]
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta['nanogpt.tokenizer'] == 'gpt2' and old[path] != new[path]


@replacement('export_onnx.py stopped by Ctrl+C during its check')
def onnx_ctrl_c(s):
    import onnxruntime
    run_inproc(*onnx_export(s, s.run()), check=True)
    bpe = bpe_checkpoint(s)
    return Replacement(lambda m: (ctrl_c_after(m, onnxruntime, 'InferenceSession'), stopped(*onnx_export(s, bpe))),
                       lambda: run_inproc(*onnx_export(s, bpe), check=True), onnx_replaced_whole)


@replacement('export_onnx.py whose check fails')
def onnx_check_fails(s):
    run_inproc(*onnx_export(s, s.run()), check=True)
    bpe = bpe_checkpoint(s)
    return Replacement(
        lambda m: assert_user_error(run_inproc(*onnx_export(s, bpe), '--tolerance=-1'), 'so it was not kept'),
        lambda: run_inproc(*onnx_export(s, bpe), check=True), onnx_replaced_whole)


def moved_aside(s):
    """Where --overwrite=True keeps the old run's files until the new run has saved (the lock is no run's)."""
    return lambda path: None if path.endswith('train.lock') else \
        os.path.join(os.path.dirname(path), 'replaced', os.path.basename(path))


def overwritten_whole(old, new):
    assert not [p for p in new if f'{os.sep}replaced{os.sep}' in p], "the old run outlived the new run's first save"
    assert [p for p in new if p.endswith('latest.pt')]


FAILS_AT_FIRST_EVAL = dict(overwrite=True, learning_rate=1e30, eval_interval=2, max_iters=10)


@replacement('--overwrite=True whose new run fails before its first save')
def overwrite_fails(s):
    s.run()
    return Replacement(
        lambda m: assert_user_error(run_inproc('train.py', *core_train_args(s.out, **FAILS_AT_FIRST_EVAL)), 'nan'),
        lambda: run_inproc('train.py', *core_train_args(s.out, overwrite=True, max_iters=3), check=True),
        overwritten_whole, moved_aside(s))


@replacement('--overwrite=True failing twice before a first save')
def overwrite_fails_twice(s):
    s.run()

    def twice(m):
        for _ in range(2):
            assert_user_error(run_inproc('train.py', *core_train_args(s.out, **FAILS_AT_FIRST_EVAL)), 'nan')
            gc.collect()  # the failed run's lock, held by objects run_inproc's one collection leaves for the next
    return Replacement(
        twice, lambda: run_inproc('train.py', *core_train_args(s.out, overwrite=True, max_iters=3), check=True),
        overwritten_whole, moved_aside(s))


@pytest.mark.parametrize('case', [pytest.param(title, marks=marks)
                                  for title, (_, marks) in sorted(REPLACEMENTS.items())])
def test_what_is_replaced_goes_only_once_its_replacement_is_whole(case, tmp_path, make_dataset, tiny_run, monkeypatch):
    s = Setup(tmp_path, make_dataset, tiny_run)
    r = REPLACEMENTS[case][0](s)
    old = tree(tmp_path)
    with monkeypatch.context() as m:
        r.interrupted(m)
    after = tree(tmp_path)
    lost = [path for path, content in old.items() if r.moved(path) and after.get(r.moved(path)) != content]
    assert not lost, f"lost before the replacement was whole: {lost}"
    gc.collect()  # a failed run's lock, held by objects run_inproc's one collection leaves for the next
    r.whole()
    new = tree(tmp_path)
    assert not [p for p in new if re.search(r'\.(tmp|old)\.', p)], "temporary files were left"
    r.check(old, new)


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


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_is_one_line(tmp_path, core_dataset, signum):
    run = LiveProcess([sys.executable, 'train.py', *core_train_args(tmp_path / 'out')])
    import time
    time.sleep(0.5)  # still importing torch
    run.proc.send_signal(signum)
    assert run.finish() == 128 + signum
    assert run.stderr == f"{signal.Signals(signum).name} during start-up: no checkpoint was written\n"
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_long_evaluation_saves_within_seconds(copy_run, signum):
    """Schedulers send SIGKILL some seconds after SIGTERM: the evaluation is left at once and the
    last finished iteration saved. Resumed at 21 with evaluations every 7, the first thing the run
    does is an evaluation of a million batches."""
    import time
    before = checkpoint.load(str(copy_run), 'latest.pt')
    run = LiveProcess([sys.executable, 'train.py', *core_train_args(copy_run, init_from='resume', max_iters=40,
                                                                    eval_interval=7, eval_iters=10 ** 6)])
    run.wait_for(r'^estimate on cpu')
    time.sleep(1)  # well into the evaluation
    sent = time.time()
    run.proc.send_signal(signum)
    assert run.finish() == 0 and time.time() - sent < 20, run.stderr[-2000:]
    name = signal.Signals(signum).name
    assert re.search(rf'^stopped by {name} after iteration 20; to continue:\npython train.py .*--init_from=resume$',
                     run.stdout, re.M), run.stdout[-2000:]
    assert 'step 21:' not in run.stdout and 'Traceback' not in run.stderr
    after = checkpoint.load(str(copy_run), 'latest.pt')
    assert after['iter_num'] == 21 and all(torch.equal(after['model'][k], v) for k, v in before['model'].items())


def test_a_signal_in_the_first_evaluation_leaves_no_checkpoint(tmp_path, core_dataset):
    import time
    run = LiveProcess([sys.executable, 'train.py', *core_train_args(tmp_path / 'out', eval_iters=10 ** 6)])
    run.wait_for(r'^estimate on cpu')
    time.sleep(1)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 0, run.stderr[-2000:]
    assert 'stopped by SIGTERM before the first iteration; nothing to save' in run.stdout
    assert checkpoint_files(tmp_path / 'out') == []


def test_a_dataset_prepared_again_during_a_run_does_not_reach_it(tmp_path, make_dataset, tiny_run):
    """The run keeps reading the token files it opened: the text prepared over them meanwhile (other
    characters, another vocabulary) changes neither its losses nor the vocabulary its checkpoints
    carry."""
    name = make_dataset('moving')
    run = LiveProcess([sys.executable, 'train.py', *core_train_args(tmp_path / 'out', dataset=name, eval_iters=200)])
    run.wait_for(r'^iter 2:')  # before the evaluation at 10, which reads val.bin again
    folder = data.data_dir(name)
    other = make_dataset('other', text='ZYXWVUTSRQPONMLKJIHGFEDCBA 0123456789\n' * 400)
    for file in ('train.bin', 'val.bin', 'meta.pkl'):  # the way a prepare replaces them: renamed over
        shutil.copyfile(os.path.join(data.data_dir(other), file), os.path.join(folder, file + '.new'))
        os.replace(os.path.join(folder, file + '.new'), os.path.join(folder, file))
    assert run.finish() == 0, run.stderr[-2000:]
    straight = run_inproc('train.py', *core_train_args(tmp_path / 'straight', eval_iters=200), check=True).stdout
    assert re.findall(r'^(?:iter|step) \d+: .*?loss [\d.]+', run.stdout, re.M) == \
        re.findall(r'^(?:iter|step) \d+: .*?loss [\d.]+', straight, re.M)
    assert checkpoint.load(str(tmp_path / 'out'))['tokenizer']['itos'] == sorted(set(core_text()))


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


# -----------------------------------------------------------------------------
# Changes of several files survive a kill at every step: each is run in a forked child that SIGKILLs
# itself (no clean-up code runs) just before its n-th rename or removal under the folder that changes,
# for n = 1, 2, ... until it finishes unkilled; after each kill the next command must find the old
# state or the new one, whole.

def killed_at(step, folder, action):
    """Run action() in a forked child killed before its step-th rename/removal under folder: True if it
    was killed there, False if it finished first."""
    folder = os.path.abspath(folder)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            calls = [0]

            def dies_at_step(fn):
                def call(*args, **kwargs):
                    if any(os.path.abspath(a).startswith(folder) for a in args[:2] if isinstance(a, (str, os.PathLike))):
                        calls[0] += 1
                        if calls[0] == step:
                            os.kill(os.getpid(), signal.SIGKILL)
                    return fn(*args, **kwargs)
                return call
            for name in ('replace', 'rename', 'remove', 'unlink', 'rmdir'):
                setattr(os, name, dies_at_step(getattr(os, name)))
            shutil.rmtree = dies_at_step(shutil.rmtree)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            action()
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, f"the action failed at step {step}"
    return os.WIFSIGNALED(status)


def every_kill(folder, setup, action):
    """setup() the old state, then kill action at each step in turn; yields after each kill."""
    for step in range(1, 100):
        setup()
        if not killed_at(step, folder, action):
            return
        yield step
    raise AssertionError("the action never finished")


def files_in(folder, skip=('train.lock', 'prepare.lock')):
    return {os.path.relpath(p, folder): b for p, b in tree(folder).items() if os.path.basename(p) not in skip}


def test_a_swap_killed_at_any_step_is_completed_by_the_next_command(tmp_path):
    from helpers import files
    folder = tmp_path / 'f'
    old = {'a': b'old a', 'b': b'old b', 'sub/x': b'old x', 'gone': b'old gone'}
    new = {'a': b'new a', 'b': b'new b', 'sub/y': b'new y'}

    def setup():
        shutil.rmtree(folder, ignore_errors=True)
        for name, content in list(old.items()) + [('a.new', b'new a'), ('b.new', b'new b'), ('sub.new/y', b'new y')]:
            os.makedirs(os.path.dirname(folder / name), exist_ok=True)
            (folder / name).write_bytes(content)
    swap = lambda: files.swap(folder, [('a.new', 'a'), ('b.new', 'b'), ('sub.new', 'sub')], removes=['gone'])  # noqa
    kills, moved = 0, tmp_path / 'moved'
    for step in every_kill(folder, setup, swap):
        kills += 1
        shutil.rmtree(moved, ignore_errors=True)
        os.rename(folder, moved)  # the journal holds paths relative to its folder, wherever that is now
        files.finish_swaps(str(moved))
        os.rename(moved, folder)
        state = files_in(folder)
        assert state == new or (step == 1 and state == dict(old, **{'a.new': b'new a', 'b.new': b'new b',
                                                                     'sub.new/y': b'new y'})), (step, state)
    assert kills >= 6  # the journal, three moves (the folder's two renames), the removal, the journal's removal
    assert files_in(folder) == new


def test_prepare_force_killed_at_any_step_leaves_the_old_dataset_or_the_new_one(tmp_path, make_dataset):
    import runpy
    name = make_dataset('killed_force', text='abc abc\n' * 300)
    folder = data.data_dir(name)
    old = files_in(folder)
    text = tmp_path / 'new.txt'
    text.write_text('xyz, XYZ; 0123\n' * 400)

    def prepare():
        sys.argv = ['prepare.py', '--input', str(text), '--name', name, '--force']
        runpy.run_path(os.path.join(REPO_ROOT, 'data', 'char', 'prepare.py'), run_name='__main__')
    shutil.copytree(folder, tmp_path / 'old')
    restore = lambda: (shutil.rmtree(folder), shutil.copytree(tmp_path / 'old', folder))  # noqa: E731
    restore()
    assert not killed_at(10 ** 6, folder, prepare)
    new = files_in(folder)
    assert set(new) == {'train.bin', 'val.bin', 'meta.pkl'} and new != old
    for step in every_kill(folder, restore, prepare):
        meta = data.read_meta(name)  # the next command's first look at the dataset
        state = {k: v for k, v in files_in(folder).items() if k in old}  # not what a killed prepare left unfinished
        assert state in (old, new), (step, sorted(state))
        assert meta == data.load_meta(os.path.join(folder, 'meta.pkl'))


def test_overwrite_killed_at_any_step_keeps_the_old_run_whole_in_one_place(tmp_path, copy_run):
    out = str(copy_run)
    old = files_in(out)
    assert {'ckpt.pt', 'latest.pt', 'metrics.csv'} <= set(old)
    backup = tmp_path / 'backup'
    shutil.copytree(out, backup)
    restore = lambda: (shutil.rmtree(out), shutil.copytree(backup, out))  # noqa: E731
    new_state = checkpoint.load(out, 'latest.pt')
    new_state['iter_num'] = 1

    def overwrite_then_save():
        runs.claim_out_dir(out, resuming=False, overwrite=True)
        checkpoint.save(new_state, out, checkpoint.LATEST_NAME)
        runs.discard_replaced(out)
    for step in every_kill(out, restore, overwrite_then_save):
        runs.resume_name(out)  # the next command's first look at out_dir
        here, aside = files_in(out), files_in(os.path.join(out, 'replaced'))
        aside.pop('README.txt', None)
        old_here = {k: v for k, v in here.items() if k in old}
        if aside:  # moved aside: whole, and nothing of the old run left in out_dir
            assert aside == old and not (old_here and here.get('latest.pt') == old['latest.pt']), step
        elif here.get('latest.pt') == old['latest.pt']:  # not moved yet: whole in out_dir
            assert old_here == old, step
        else:  # the new run saved and deleted the old one
            assert checkpoint.load(out, 'latest.pt')['iter_num'] == 1 and 'ckpt.pt' not in here, step
    assert not os.path.exists(os.path.join(out, 'replaced'))


def test_export_hf_killed_at_any_step_leaves_the_old_export_or_the_new_one(tmp_path, copy_run):
    import runpy
    hf = tmp_path / 'exports' / 'hf'
    args = ['export_hf.py', f'--out_dir={copy_run}', f'--output={hf}', '--verify=False']
    run_inproc(*args, check=True)
    old = files_in(hf)
    backup = tmp_path / 'backup'
    shutil.copytree(hf.parent, backup)
    state = checkpoint.load(str(copy_run), 'ckpt.pt')
    state['model']['lm_head.weight'] += 1.0  # another model: other weights
    checkpoint.save(state, str(copy_run))
    restore = lambda: (shutil.rmtree(hf.parent), shutil.copytree(backup, hf.parent))  # noqa: E731

    def export():
        sys.argv = args
        runpy.run_path(os.path.join(REPO_ROOT, 'export_hf.py'), run_name='__main__')
    restore()
    assert not killed_at(10 ** 6, hf.parent, export)
    new = files_in(hf)
    assert new != old
    for step in every_kill(hf.parent, restore, export):
        checkpoint.pretrained(str(hf))  # the next command that reads the export
        assert files_in(hf) in (old, new), step
    run_inproc(*args, check=True)  # and the next export leaves nothing of the killed ones behind
    assert sorted(os.listdir(hf.parent)) == ['hf']
