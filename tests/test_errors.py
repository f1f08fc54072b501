"""Bad input gives one line, `error: ...`, naming the problem and the fix, a non-zero exit, no traceback, and
nothing written or changed; a non-finite loss stops training without writing a NaN model over a good checkpoint."""
import os
import pathlib
import pickle
import shutil
import subprocess

import numpy as np
import pytest
import torch

from helpers import UserError, checkpoint, data, hardware, runs
from conftest import (CORE_DATASET, REPO_ROOT, RunsCode, assert_user_error, checkpoint_files, core_text,
                      core_train_args, run_inproc, run_script)

def test_user_error_is_one_line_and_exit_1_through_a_real_interpreter(tmp_path):
    error = UserError('something is wrong; do this instead')
    assert isinstance(error, SystemExit) and str(error) == 'something is wrong; do this instead'
    assert error.code == 'error: something is wrong; do this instead'
    # run_inproc mirrors the interpreter; once for real
    proc = run_script('train.py', *core_train_args(tmp_path / 'out'), '--nonsense=1', check=False, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count('\n') == 1 and proc.stderr.startswith('error: ')
    assert "'nonsense'" in proc.stderr and not (tmp_path / 'out').exists()

def tree(*folders):
    """Every file (with its bytes) and folder under the folders: what must not change."""
    return {p: p.read_bytes() if p.is_file() else None for folder in folders for p in folder.rglob('*')}

class Case:
    """What a case may use: tmp, the tiny run or a copy in tmp/out (run()), datasets, files, a transformers folder."""

    def __init__(self, tmp, make_dataset, tiny_run):
        self.tmp, self.out, self.make_dataset, self.tiny_run, self.datasets = tmp, tmp / 'out', make_dataset, \
            tiny_run.out_dir, []

    def run(self, *files):
        """The copy of the tiny run, with these files ((name, bytes) pairs) added."""
        shutil.copytree(self.tiny_run, self.out)
        for name, content in files:
            (self.out / name).write_bytes(content)
        return self.out

    def dataset(self, suffix='bad', text=None, remove=None, val_tokens=None, append=None, **meta_extra):
        """The core dataset (or one of text), a file removed, val.bin cut, {file: bytes} appended, more in meta."""
        name = self.make_dataset(suffix, text=text, meta_extra=meta_extra or None)
        folder = data.data_dir(name)
        self.datasets.append(pathlib.Path(folder))
        if remove:
            os.remove(os.path.join(folder, remove))
        if val_tokens is not None:
            os.truncate(os.path.join(folder, 'val.bin'), 2 * val_tokens)
        for file, more in (append or {}).items():
            with open(os.path.join(folder, file), 'ab') as f:
                f.write(more)
        return name

    def file(self, name, content=b''):
        (self.tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (self.tmp / name).write_bytes(content)
        return self.tmp / name

    def hf(self, vocab_size=50257, runs_code=False):
        """A tiny transformers GPT-2 folder; runs_code: in a pytorch_model.bin whose unpickling creates tmp/PWNED."""
        from transformers import GPT2Config, GPT2LMHeadModel
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=vocab_size,
                                           bos_token_id=None, eos_token_id=None))
        model.save_pretrained(self.tmp / 'hf')
        if runs_code:
            torch.save(dict(model.state_dict(), note=RunsCode(self.tmp / 'PWNED')), self.tmp / 'hf/pytorch_model.bin')
            os.remove(self.tmp / 'hf' / 'model.safetensors')
        return self.tmp / 'hf'

@pytest.fixture
def case(tmp_path, make_dataset, tiny_run):
    return Case(tmp_path, make_dataset, tiny_run)

def refused(case, script, args, fragments):
    """script refuses args in one line with each fragment ({out}, {tmp} filled in; '!': absent); nothing changed."""
    before = tree(case.tmp, case.tiny_run, *case.datasets)
    result = run_inproc(script, *args)
    fragments = [f.format(out=case.out, tmp=case.tmp) for f in fragments]
    line = assert_user_error(result, *[f for f in fragments if not f.startswith('!')])
    assert len([s for s in result.stderr.strip().splitlines() if 'it/s]' not in s]) == 1, result.stderr  # tqdm aside
    assert not [f for f in fragments if f.startswith('!') and f[1:] in line], line
    assert tree(case.tmp, case.tiny_run, *case.datasets) == before, "a file was created or changed"

def case_id(value):
    """A table's cases named by their settings and the first fragment of the error."""
    return None if callable(value) else str(value[0]) if isinstance(value, list) else str(value)

def truncated(path, size):
    os.truncate(path, size)
    return path

def runs_code(path, marker):
    """The checkpoint at path, with an object in its config whose unpickling would create marker."""
    state = torch.load(path, weights_only=True)
    torch.save(dict(state, config=dict(state['config'], note=RunsCode(marker))), path)

BEST = f'--device={hardware.best_device()}'  # what the errors suggest: cpu here, cuda on a GPU machine
POSITIVE = ['batch_size', 'gradient_accumulation_steps', 'max_iters', 'eval_iters', 'block_size', 'n_layer', 'n_head',
            'eval_interval', 'log_interval']
HALF_TOKEN = {'train.bin': b'\x01'}  # a .bin file of an odd size
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
HF_RUNS_CODE = ['{tmp}/hf was refused', 'would run code', 'GLOBAL', 'safetensors']
OTHER_TEXT = 'other characters: XYZ!?\n' * 200  # another vocabulary
OTHER_SAME_SIZE = core_text().translate(str.maketrans('abc', 'xyz'))  # as many characters, other ones

@pytest.mark.parametrize('settings, fragments', ids=case_id, argvalues=[
    (dict(dataset='_test_no_such'), ["unknown dataset '_test_no_such'", CORE_DATASET]),  # lists those there are
    (dict(dataset='char'), ["unknown dataset 'char'", 'data/char/prepare.py --input', '--name']),
    (dict(dataset='bpe'), ["unknown dataset 'bpe'", 'data/char/prepare.py --input', '--name']),
    (dict(dataset=dict(remove='val.bin')), ['val.bin', 'missing', 'prepare']),
    (dict(dataset=dict(val_tokens=32), block_size=32), ['val.bin', '32 tokens', 'block_size+1 = 33', '--block_size']),
    (dict(dataset=dict(append=HALF_TOKEN)), ['train.bin', 'not a whole number of uint16 tokens', 'prepare']),
    (dict(dataset=dict(dtype='float64')), ['float64', 'uint16']),  # meta.pkl naming an unknown token dtype
    (dict(dataset=dict(vocab_size=None)), ['meta.pkl', 'no valid vocab_size', 'None']),
    (dict(dataset=dict(vocab_size='19')), ['vocab_size', "'19'"]),
    (dict(dataset=dict(vocab_size=5, itos=dict(enumerate('\n ade')))), ['train.bin', 'token id 18', 'vocab_size is 5']),
    (lambda c: dict(dataset=c.dataset(itos=RunsCode(c.tmp / 'PWNED'))), ['refused', 'meta.pkl']),
    *[({name: value}, [name, 'positive', str(value)]) for name in POSITIVE for value in (0, -1)],
    (dict(n_embd=30, n_head=4), ['n_embd (30)', 'n_head (4)', 'divisible', '--n_embd=']),
    *[(dict(dropout=value), ['dropout', '[0, 1)']) for value in (1.0, 1.5, -0.1)],
    (dict(learning_rate=-1), ['learning_rate', '-1']),
    (dict(learning_rate='1e999'), ['learning_rate', 'inf']),
    (dict(warmup_iters=-5), ['warmup_iters', '-5']),
    (dict(hellaswag_examples=-1), ['hellaswag_examples', '-1']),  # 0 scores every example
    (dict(device='tpu'), ['unknown device', 'tpu', 'cpu']),
    (dict(device='gpu0'), ['unknown device', 'gpu0']),
    pytest.param(dict(device='cuda'), ['cuda', 'not available', BEST], marks=NO_CUDA),
    (dict(device='cuda:99'), ['cuda:99', BEST] if not torch.cuda.is_available() else ['cuda:99', 'does not exist']),
    pytest.param(dict(device='mps'), ['mps', BEST], marks=pytest.mark.skipif(
        hardware.mps_available(), reason="an Apple GPU is available here")),
    (dict(device='meta'), ['meta', 'not supported']),
    (dict(dtype='float64'), ["unknown dtype 'float64'", 'float32', 'bfloat16']),
    (dict(init_from='restart'), ["unknown init_from 'restart'", 'resume']),
    # a gpt2-like name that is no model: refused before any download is tried
    (dict(init_from='gpt2-huge', dataset=dict(remove='meta.pkl')), ['gpt2-huge', 'gpt2-medium']),
    (lambda c: dict(init_from=c.hf(runs_code=True), dataset=c.dataset('bpe', remove='meta.pkl')), HF_RUNS_CODE),
    (lambda c: dict(out_dir=c.file('a_file', b'not a folder')), ['a_file', 'is a file', '--out_dir']),
    (dict(out_dir='/sys/nanogpt_test_out'), ['cannot write', '/sys/nanogpt_test_out', '--out_dir']),  # even for root
    # CUDA graphs reuse the memory that holds the accumulated gradients (pytorch#169545)
    *[(dict(compile=True, compile_mode=mode, gradient_accumulation_steps=2), [mode, 'CUDA graphs', '2 micro-steps',
       'max-autotune-no-cudagraphs']) for mode in ('reduce-overhead', 'max-autotune')],
])
def test_train_refuses_and_creates_nothing(case, core_dataset, settings, fragments):
    settings = settings(case) if callable(settings) else settings
    if isinstance(settings.get('dataset'), dict):
        settings = dict(settings, dataset=case.dataset(**settings['dataset']))
    refused(case, 'train.py', core_train_args(**{'out_dir': case.out, **settings}), fragments)

def test_bfloat16_autocast_on_cpu_and_a_val_bin_of_block_size_plus_one_tokens(tmp_path, case):
    """An opt-in on a CPU, with no GradScaler (float16's: test_parallel); 33 val tokens do for block_size 32."""
    out = run_inproc('train.py', *core_train_args(tmp_path / 'out', dataset=case.dataset(val_tokens=33),
                                                  dtype='bfloat16', max_iters=1, eval_interval=100), check=True).stdout
    assert "dtype='bfloat16'" in out
    assert torch.load(tmp_path / 'out' / 'latest.pt', weights_only=True)['scaler'] == {}

def beside(damaged, whole):
    """The refusal of a damaged checkpoint (cut short) beside a whole one."""
    return [f'{damaged} is truncated or corrupt', f'{whole} beside it loads', 'iter',
            f'mv {{out}}/{damaged} {{out}}/{damaged}.damaged']

def only_replaced(out):  # by --overwrite=True, before the new run saved
    runs.claim_out_dir(str(out), resuming=False, overwrite=True).close()

RESTORE = ['the run that was in {out} (latest.pt after iteration 20', 'replaced/', 'where --overwrite=True moved it',
           'to restore it: mv ']

@pytest.mark.parametrize('prepare, fragments', ids=case_id, argvalues=[
    (lambda c: dict(block_size=64), ['block_size=64', 'checkpoint has 32']),
    (lambda c: dict(n_layer=3), ['n_layer=3', 'checkpoint has 2', 'new --out_dir']),
    (lambda c: dict(dataset=c.dataset('vocab', text=OTHER_TEXT)), ['vocabulary', '_test_core_vocab']),
    # the same number of characters, other characters: only the stored vocabulary can tell
    (lambda c: dict(dataset=c.dataset('vocab', text=OTHER_SAME_SIZE)), ['19-character vocabulary', '_test_core_vocab']),
    (lambda c: os.remove(c.out / 'latest.pt') or dict(out_dir=truncated(c.out / 'ckpt.pt', 5000).parent),
     ['ckpt.pt', 'truncated or corrupt']),
    (lambda c: dict(out_dir=truncated(c.out / 'latest.pt', 5000).parent), beside('latest.pt', 'ckpt.pt')),
    (lambda c: runs_code(c.out / 'latest.pt', c.tmp / 'PWNED'), ['latest.pt', 'refused', 'would run code']),
    (lambda c: shutil.rmtree(c.out) or c.out.mkdir(), ['no checkpoint', 'ckpt.pt']),
    (lambda c: dict(out_dir=c.out / 'never_trained'), ['does not exist', '{out}/never_trained']),
    (lambda c: only_replaced(c.out), ['no checkpoint at {out}/ckpt.pt: the run', *RESTORE]),
    (lambda c: dict(init_from=None), ['already holds a run', 'latest.pt after iteration 20', '--init_from=resume',
                                      '--overwrite=True', '--out_dir']),  # a new run
    (lambda c: only_replaced(c.out) or dict(init_from=None),
     ['holds no checkpoint, but the run that was in', *RESTORE, '--overwrite=True']),
    (lambda c: c.file('out/replaced/ckpt.pt', b'my own backup') and dict(init_from=None, overwrite=True),
     ['replaced was not made by --overwrite=True', 'move it away']),  # never deleted
])
def test_resume_refuses_and_changes_nothing(case, prepare, fragments):
    case.run()
    settings = prepare(case) or {}
    refused(case, 'train.py', core_train_args(**{'out_dir': case.out, 'init_from': 'resume', **settings}), fragments)

def run_of(c, dataset, nanogpt=True):
    """tmp/out/ckpt.pt: the tiny run's for dataset, as nanoGPT writes it (no vocabulary of its own) or as we do."""
    state = checkpoint.load(str(c.tiny_run), 'ckpt.pt')
    if nanogpt:
        del state['tokenizer']
    state['config']['dataset'] = dataset
    checkpoint.save(state, str(c.out))
    return c.out

@pytest.mark.parametrize('prepare, fragments', ids=case_id, argvalues=[
    (lambda c: dict(out_dir=c.tmp / 'nothing'), ['does not exist']),
    (lambda c: dict(out_dir=c.file('notes/notes.txt').parent), ['no checkpoint']),
    (lambda c: dict(out_dir=c.file('cut/ckpt.pt', (c.tiny_run / 'ckpt.pt').read_bytes()[:1000]).parent),
     ['ckpt.pt', 'truncated or corrupt']),
    (lambda c: dict(out_dir=c.file('d/ckpt.pt', pickle.dumps({'a': 1})).parent),
     ['ckpt.pt', 'not a checkpoint that this project or nanoGPT wrote', 'not loaded']),
    (lambda c: dict(out_dir=truncated(c.run() / 'ckpt.pt', 5000).parent), beside('ckpt.pt', 'latest.pt')),
    (lambda c: runs_code(c.run() / 'ckpt.pt', c.tmp / 'PWNED') or dict(out_dir=c.out), ['ckpt.pt', 'refused']),
    (lambda c: only_replaced(c.run()) or dict(out_dir=c.out), ['no checkpoint at {out}/ckpt.pt: the run', *RESTORE]),
    # a nanoGPT checkpoint (no vocabulary of its own) whose dataset's meta.pkl would run code, or has another size
    (lambda c: dict(out_dir=run_of(c, c.dataset(itos=RunsCode(c.tmp / 'PWNED')))), ['refused', 'meta.pkl']),
    (lambda c: dict(out_dir=run_of(c, c.dataset(text=OTHER_TEXT))), ['vocab_size', 'meta.pkl']),
    (lambda c: dict(out_dir=run_of(c, c.dataset(itos=None))), ['meta.pkl has no character vocabulary']),
    (lambda c: dict(out_dir=c.file('hf/config.json').parent),
     ['no checkpoint', 'holds a transformers model', '--init_from={tmp}/hf']),
    (lambda c: dict(init_from=c.hf(runs_code=True), out_dir=None), HF_RUNS_CODE),
    (lambda c: dict(init_from=truncated(c.hf() / 'model.safetensors', 1000).parent, out_dir=None),
     ['model.safetensors is truncated or corrupt']),
    (lambda c: dict(init_from=c.hf(vocab_size=19)),
     ['has 19 tokens', "too few for GPT-2's BPE", 'no tokenizer.json', 'export_hf.py']),
    (lambda c: dict(start=f"FILE:{c.file('p/p.txt')}"), ['prompt file', 'empty']),
    (lambda c: dict(start=f"FILE:{c.tmp / 'none.txt'}"), ['prompt file', 'not found']),
    (lambda c: dict(start=f'FILE:{c.tmp}'), ['prompt file', 'is a folder']),
    (dict(start=''), ['prompt is empty', '--start']),
    (dict(start='Quiet'), ['outside', "'Q'"]),
    *[(lambda c, content=content: dict(prompts=c.file('p.txt', content)), ['prompts file', 'no prompt'])
      for content in (b'', b'\n\n  \n')],
    (lambda c: dict(prompts=c.file('binary.dat', b'a' * (3 << 20) + bytes(range(128, 256)) * 8192)),
     ['not valid UTF-8', 'at byte offset 3145728', 'save the prompts file as UTF-8']),
    (lambda c: dict(prompts=c.file('binary.dat', bytes(4 << 20))), ['prompts file', 'NUL bytes', 'binary']),
    (dict(prompts='no_such_prompts.txt'), ['prompts file', 'not found']),
    (dict(prompts='tests/conftest.py', start='x'), ['--start', '--prompts', 'not both']),
    (dict(device='tpu'), ['unknown device']),
    (dict(num_samples=0), ['num_samples', 'positive']),
    (dict(max_new_tokens=-1), ['max_new_tokens', 'positive']),
    (dict(temperature=0.0), ['temperature', 'top_k=1']),
    (dict(temperature='1e999'), ['temperature', 'finite', 'inf']),
    (dict(top_k=0), ['top_k']),
    (dict(init_from='scratch'), ["unknown init_from 'scratch'"]),
    (dict(seed=2 ** 64), ['seed', str(2 ** 64)]),
    *[(dict(top_p=top_p), ['top_p', '(0, 1]']) for top_p in (0, 1.5)],
    *[(dict(stop=stop), ['stop', 'non-empty']) for stop in ("''", "['END', '']", '[]')],
    (dict(stop='5'), ['stop', '5']),
    (dict(stop="['\\n\\n', 'THE END'"), ["--stop=['\\n\\n', 'THE END' starts like", '--stop="[']),
    (dict(max_new_tokenz=5), ["'max_new_tokenz'"]),
])
def test_sample_refuses_and_writes_nothing(case, prepare, fragments):
    settings = dict(out_dir=case.tiny_run, device='cpu', num_samples=1, max_new_tokens=5)
    settings.update(prepare(case) if callable(prepare) else prepare)
    refused(case, 'sample.py', [f'--{k}={v}' for k, v in settings.items() if v is not None], fragments)

BENCH = ['--device=cpu', '--compile=False', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16',
         '--batch_size=2', '--bench_iters=1', '--warmup_iters=0']
DAMAGED_CSV, DAMAGED_ONNX = b'\x00\xff garbage\n1,2,3\n', b'\x08\x07\x12\x03onnx' + bytes(range(64))
FOREIGN_PNG = b'\x89PNG\r\n\x1a\n' + bytes(64)  # a PNG's signature, without plot.py's mark
ID_19 = {'val.bin': np.array([19], dtype=np.uint16).tobytes()}  # past the run's vocabulary
BENCHMARK_RUN = 'shakespeare-char' if torch.cuda.is_available() else 'laptop'  # a run folder it would replace

def not_written(path, script, option):
    return [f'{path} exists and {script} did not write it; pass another {option}']

@pytest.mark.parametrize('command, fragments', ids=case_id, argvalues=[
    (lambda c: ('train.py', [c.file('my_config.py', b'batch_size = 64\n'), '--batch_size=four']),
     ['batch_size', 'sets 64', "'four'", '!default']),
    (lambda c: ('train.py', [c.file('my_config.py', b'n_layer = 3\n'), *core_train_args(
        c.run(), init_from='resume', n_layer=None)]), ['n_layer=3', 'set by {tmp}/my_config.py', 'checkpoint has 2']),
    (lambda c: ('bench.py', ['--max_new_tokenz=5']), ["'max_new_tokenz'"]),
    (lambda c: ('bench.py', [f"--dataset={c.dataset('odd', append=HALF_TOKEN)}", *BENCH]),
     ['train.bin', 'not a whole number of uint16 tokens', 'prepare']),
    (lambda c: ('bench.py', [f"--dataset={c.dataset('nobench', remove='train.bin')}", *BENCH]),
     ['train.bin is missing', '--real_data=False']),
    (lambda c: ('evaluate.py', [f'--out_dir={c.run()}', '--device=cpu', '--splits=test']),
     ['test.bin', 'train.bin and val.bin', '--splits=val', '!prepare.py']),
    (lambda c: ('evaluate.py', [f'--out_dir={c.run()}', '--device=cpu', f'--results_file={c.tmp}/no/r.json']),
     ['results_file', 'does not exist']),
    (lambda c: ('evaluate.py', [f'--out_dir={c.run()}', f"--dataset={c.dataset('ids', append=ID_19)}", '--device=cpu',
                                '--full_pass=True']), ['val.bin', 'token id 19', 'vocab_size is 19']),
    (lambda c: ('evaluate.py', [f"--out_dir={run_of(c, c.dataset('vocab', text=OTHER_SAME_SIZE), nanogpt=False)}",
                                '--device=cpu']), ['19-character vocabulary', '_test_core_vocab']),
    # a full pass over a val.bin too short for any window: no block_size can help
    *[(lambda c, n=n: ('evaluate.py', [f"--out_dir={run_of(c, c.dataset('short', val_tokens=n), nanogpt=False)}",
                                       '--full_pass=True', '--device=cpu', f'--results_file={c.tmp}/r.json']),
       [f'val.bin holds {n} token', 'needs more text', 'prepare the dataset again', '!smaller']) for n in (0, 1)],
    (lambda c: ('evaluate.py', [f'--out_dir={c.run()}', f'--results_file={c.out}/latest.pt']),
     not_written('{out}/latest.pt', 'evaluate.py', '--results_file')),
    (lambda c: ('evaluate.py', [f"--out_dir={c.run(('mine.json', b'[1.5]'))}", f'--results_file={c.out}/mine.json']),
     not_written('{out}/mine.json', 'evaluate.py', '--results_file')),
    (lambda c: ('plot.py', [f"--out_dir={c.run(('loss.png', FOREIGN_PNG))}"]),
     not_written('{out}/loss.png', 'plot.py', '--output')),
    (lambda c: ('plot.py', [f"--out_dir={c.file('metrics.csv', DAMAGED_CSV).parent}"]), ['metrics.csv', 'damaged']),
    (lambda c: ('plot.py', [f'--out_dir={c.tmp}/missing']), ['missing']),
    (lambda c: ('plot.py', [f"--out_dir={c.file('empty/notes.txt').parent}"]), ['no metrics.csv']),
    *[(lambda c, x=x: ('plot.py', [f'--out_dir={c.run()}', f'--x={x}']),
       ['iter, tokens, seconds', '--x=seconds', f'got {x!r}']) for x in ('time', 'iter,iter', '', 'iter,,tokens')],
    (lambda c: ('benchmarks/performance.py', ['--only=laptop',
                                              f"--runs_dir={c.file(f'{BENCHMARK_RUN}/n').parent.parent}"]),
     not_written('{tmp}/' + BENCHMARK_RUN, 'benchmarks/performance.py', '--runs_dir')),
    # exports write only where nothing but an earlier export of their own would be replaced
    (lambda c: ('export_hf.py', [f'--out_dir={c.run()}', f'--output={c.out}/ckpt.pt']), ['--output', 'is a file']),
    (lambda c: ('export_hf.py', [f'--out_dir={c.run()}', f"--output={c.file('mine/notes.txt').parent}"]),
     ['mine', 'notes.txt', 'no export_hf.py export wrote', 'new or empty folder']),
    (lambda c: ('export_hf.py', [f'--out_dir={c.run()}', f'--output={c.out}']),
     ['ckpt.pt', 'latest.pt', 'move those files away']),
    (lambda c: ('export_hf.py', [f'--out_dir={c.run()}', '--output=/sys/nanogpt_test_hf']), ['cannot write', '/sys']),
    (lambda c: ('export_onnx.py', [f'--out_dir={c.run()}', f'--output={c.tmp}']),
     ['is a folder', '--output={tmp}/model.onnx']),
    (lambda c: ('export_onnx.py', [f'--out_dir={c.run()}', f'--output={c.out}/ckpt.pt']),
     ['ckpt.pt exists', 'export_onnx.py did not write it', '--output']),
    (lambda c: ('export_onnx.py', [f'--out_dir={c.run()}', '--output=/sys/nanogpt.onnx']), ['cannot write', '/sys']),
    (lambda c: ('export_onnx.py', [f'--out_dir={c.run()}', '--seed=-1']), ['seed', '-1']),
    (lambda c: ('sample_onnx.py', [f"--onnx_path={c.file('model.onnx', DAMAGED_ONNX)}", '--num_samples=1']),
     ['not a readable ONNX model']),
    (lambda c: ('sample_onnx.py', [f'--onnx_path={REPO_ROOT}/README.md', '--num_samples=1']),
     ['not a readable ONNX model']),
    (lambda c: ('sample_onnx.py', [f'--onnx_path={c.tmp}', '--seed=-1']), ['seed', '-1']),
    (lambda c: ('sample_onnx.py', [f'--onnx_path={c.tmp}']), ['is a folder', '--onnx_path']),
])
def test_the_other_scripts_refuse_and_change_nothing(case, core_dataset, command, fragments):
    refused(case, *command(case), fragments)

def test_performance_replaces_the_run_folders_it_made(tmp_path, monkeypatch):
    fake = subprocess.CompletedProcess([], 0, stdout='step 4: train loss 2.0, val loss 2.5\n', stderr='')
    monkeypatch.setattr(subprocess, 'run', lambda *args, **kwargs: fake)  # no training: its folders are the point
    (tmp_path / BENCHMARK_RUN).mkdir()  # empty: nothing in it to lose
    for _ in range(2):
        run_inproc('benchmarks/performance.py', '--only=laptop', f'--runs_dir={tmp_path}', check=True)
    assert {name: os.listdir(tmp_path / name) for name in os.listdir(tmp_path)} == \
        {name: ['made_by_performance.txt'] for name in os.listdir(tmp_path)}

@pytest.mark.parametrize('resume, settings, fragments', ids=case_id, argvalues=[
    # resumed at iteration 21: the first update makes the weights explode, the loss of iteration 22 is NaN
    (True, dict(max_iters=40), ['loss is nan at iteration 22', 'nothing was saved', '--learning_rate']),
    # with the loss not logged, the evaluation catches it
    (False, dict(log_interval=1000, eval_interval=2, max_iters=40), ['val loss is nan at iteration 2']),
    # neither logged nor evaluated before the end: the final save refuses non-finite weights
    (False, dict(log_interval=1000, eval_interval=1000, max_iters=3),
     ['NaN or infinite', 'after iteration 3', 'nothing was saved']),
])
def test_a_non_finite_loss_stops_and_keeps_the_good_checkpoints(copy_run, resume, settings, fragments):
    out_dir = copy_run if resume else copy_run.parent / 'new'
    before = {name: (out_dir / name).read_bytes() for name in checkpoint_files(out_dir)}
    result = run_inproc('train.py', *core_train_args(out_dir, init_from='resume' if resume else None,
                                                     learning_rate=1e30, **settings))
    assert_user_error(result, *fragments)
    assert {name: (out_dir / name).read_bytes() for name in checkpoint_files(out_dir)} == before
    for name in before:
        model = checkpoint.model_from_checkpoint(checkpoint.load(str(out_dir), name))
        assert all(p.isfinite().all() for p in model.parameters())
