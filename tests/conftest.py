"""Shared fixtures and runners; datasets go to a temporary NANOGPT_DATA_DIR, and the session fails if data/ changed."""
import contextlib
import functools
import gc
import hashlib
import io
import itertools
import os
import pickle
import random
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import uuid

import numpy as np
import pytest
import tiktoken

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get('NANOGPT_SHARED', os.path.join(os.path.dirname(REPO_ROOT), 'shared'))
TINY_SHAKESPEARE = os.path.join(SHARED, 'data', 'tinyshakespeare', 'input.txt')
if os.path.isdir(os.path.join(SHARED, 'tiktoken_cache')):  # else tiktoken downloads GPT-2's files itself
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(SHARED, 'tiktoken_cache'))
# a shell's background job (`pytest &`) ignores Ctrl+C, and so would the scripts it starts: they must stop on it
signal.signal(signal.SIGINT, signal.default_int_handler)
# a core each for torch's threads spins against other jobs on a shared machine: tiny models run 50x slower
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')

# this session's datasets, never the user's (even one they set); data/, so that messages read as a user's do
TEST_ROOT = tempfile.mkdtemp(prefix='nanogpt-tests-')
DATA_ROOT = os.path.join(TEST_ROOT, 'data')
os.mkdir(DATA_ROOT)
os.environ['NANOGPT_DATA_DIR'] = DATA_ROOT
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
import helpers  # noqa: E402
import torch  # noqa: E402  (once OMP_NUM_THREADS is set)
from helpers import checkpoint  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

if helpers.DATA_ROOT != DATA_ROOT:
    raise RuntimeError(f"helpers was imported before conftest.py set NANOGPT_DATA_DIR: it uses {helpers.DATA_ROOT}")

def data_files(top):
    """{path: (size, mtime, sha256 up to 4 MiB: a user's large corpus is not read through)} under top."""
    files = {}
    for root, folders, names in os.walk(top):
        folders[:] = [f for f in folders if f != '__pycache__']
        for path in (os.path.join(root, name) for name in names):
            with contextlib.suppress(FileNotFoundError):   # removed while we looked: the next look sees it gone
                stat = os.stat(path)
                digest = hashlib.sha256(open(path, 'rb').read()).hexdigest() if stat.st_size <= 4 << 20 else None
                files[os.path.relpath(path, os.path.dirname(top))] = (stat.st_size, stat.st_mtime_ns, digest)
    return files

def data_changes(before, after):
    """'<path> created', 'removed' or 'changed' for every file that differs between two data_files()."""
    return [f"{path} {'created' if path not in before else 'removed' if path not in after else 'changed'}"
            for path in sorted(before.keys() | after.keys()) if before.get(path) != after.get(path)]

DATA_BEFORE = data_files(helpers.SCRIPTS_ROOT)
DATA_CHANGED = []

def pytest_configure(config):
    # torch.compile's own use of torch.jit in this torch release, not the project's: a quiet summary
    config.addinivalue_line('filterwarnings', 'ignore:`torch.jit.script_method` is deprecated:DeprecationWarning')

def pytest_sessionfinish(session):
    shutil.rmtree(TEST_ROOT, ignore_errors=True)
    DATA_CHANGED.extend(data_changes(DATA_BEFORE, data_files(helpers.SCRIPTS_ROOT)))
    if DATA_CHANGED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

def pytest_terminal_summary(terminalreporter):
    if DATA_CHANGED:
        terminalreporter.section("the tests changed files under the repository's data/", sep='=', red=True)
        terminalreporter.write_line('\n'.join(DATA_CHANGED))

def exited_0(result, command):
    """Fail, with the ends of its output, unless the command exited 0."""
    assert result.returncode == 0, (f"{command} exited {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}\n"
                                    f"--- stderr ---\n{result.stderr[-4000:]}")
    return result

def run_script(*args, env=None, timeout=600, check=True):
    """`python <args>` in a process of its own, as a user runs it: the CompletedProcess, with text output."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED='1', **(env or {})))
    return exited_0(proc, f"python {' '.join(args)}") if check else proc

def place_tiny_shakespeare(dataset):
    """data/<dataset>/input.txt of this session: the offline copy, else downloaded once as prepare.py would."""
    target = os.path.join(DATA_ROOT, dataset, 'input.txt')
    if not os.path.exists(target):
        from helpers.prepare import TINY_SHAKESPEARE_URL, download
        source = TINY_SHAKESPEARE if os.path.exists(TINY_SHAKESPEARE) else \
            download(TINY_SHAKESPEARE_URL, os.path.join(TEST_ROOT, 'tinyshakespeare', 'input.txt'))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target)
    return target

@pytest.fixture(scope='session')
def shakespeare_char():
    """data/shakespeare_char prepared once per test session; returns the prepare's output."""
    place_tiny_shakespeare('shakespeare_char')
    return run_inproc('data/shakespeare_char/prepare.py', check=True).stdout

CORE_DATASET = '_test_core'
CORE_WORDS = ('the', 'cat', 'sat', 'on', 'a', 'mat', 'dog', 'ran', 'far', 'away', 'and', 'then', 'slept')

def write_char_dataset(name, text, val_fraction=0.1, meta_extra=None):
    """data/<name>/{train,val}.bin (uint16) and a nanoGPT-style meta.pkl for a character vocabulary."""
    folder = os.path.join(DATA_ROOT, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    chars = sorted(set(text))
    stoi, itos = {ch: i for i, ch in enumerate(chars)}, dict(enumerate(chars))
    ids = np.array([stoi[ch] for ch in text], dtype=np.uint16)
    n_train = int(len(ids) * (1 - val_fraction))
    ids[:n_train].tofile(os.path.join(folder, 'train.bin'))
    ids[n_train:].tofile(os.path.join(folder, 'val.bin'))
    meta = {'vocab_size': len(chars), 'itos': itos, 'stoi': stoi, **(meta_extra or {})}
    with open(os.path.join(folder, 'meta.pkl'), 'wb') as f:
        pickle.dump(meta, f)
    return folder

def core_text(n_words=6000, seed=0):
    """Words drawn from a small list: learnable quickly, so a few iterations lower the loss."""
    rng = random.Random(seed)
    return ' '.join(rng.choice(CORE_WORDS) for _ in range(n_words)) + '\n'

@pytest.fixture(scope='session')
def core_dataset():
    """Name of a tiny character dataset in data/, removed after the session."""
    folder = write_char_dataset(CORE_DATASET, core_text())
    yield CORE_DATASET
    shutil.rmtree(folder, ignore_errors=True)

@pytest.fixture
def scratch():
    """A factory of dataset names, unique (data/_test_<tag>_<8 hex digits>) or as given; removed after the test."""
    names = []
    def make(tag='ds', name=None):
        names.append(name or f'_test_{tag}_{uuid.uuid4().hex[:8]}')
        return names[-1]
    yield make
    for name in names:
        shutil.rmtree(os.path.join(DATA_ROOT, name), ignore_errors=True)

@pytest.fixture
def make_dataset(scratch):
    """Factory for throw-away character datasets data/_test_core_<suffix>, of core_text() unless text is given."""
    def make(suffix, text=None, **kwargs):
        name = scratch(name=f'{CORE_DATASET}_{suffix}')
        write_char_dataset(name, core_text() if text is None else text, **kwargs)
        return name
    return make

CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz ,.;:!?'\nABCDEFGHIJ"))

@pytest.fixture(scope='session')
def char_dataset():
    """data/_test_chars: 6000 train, 1003 val tokens over CHARS, in runs of two letters (a few steps lower the loss)."""
    ids = np.random.default_rng(0).integers(0, len(CHARS), 7003)
    ids[1::2] = ids[0::2][:len(ids[1::2])]
    folder = write_char_dataset('_test_chars', ''.join(CHARS[i] for i in ids), val_fraction=1003 / 7003)
    yield '_test_chars'
    shutil.rmtree(folder, ignore_errors=True)

def make_model(activation='gelu', bias=True, block_size=16, n_layer=2, n_head=2, n_embd=32, seed=0,
               vocab_size=len(CHARS)):
    """A GPT with large random weights (logits of order 10): a wrong GELU, bias or transpose shows above tolerances."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                          bias=bias, activation=activation))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('ln_1.weight', 'ln_2.weight', 'ln_f.weight')):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.normal_(0.0, 0.3)  # biases
            elif 'wte' in name or 'wpe' in name:
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 1.5 / p.shape[1] ** 0.5)  # unit-ish gain per Linear
    return model.eval()

def save_checkpoint(model, out_dir, dataset_name, iter_num=100):
    os.makedirs(out_dir, exist_ok=True)
    torch.save({'model': model.state_dict(), 'optimizer': {}, **checkpoint.architecture_entries(model.config),
                'iter_num': iter_num, 'best_val_loss': 9.9,
                'config': {'dataset': dataset_name, 'batch_size': 4, 'eval_iters': 3, 'seed': 1337}},
               os.path.join(out_dir, 'ckpt.pt'))
    return os.path.join(out_dir, 'ckpt.pt')

def full_logits(model, idx):
    """Every position's logits from GPT.forward itself (targets make it return them all)."""
    with torch.no_grad():
        return model(idx, idx)[0]

CORE_TRAIN_SETTINGS = dict(dataset=CORE_DATASET, device='cpu', dtype='float32', compile=False, wandb_log=False,
                           n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, dropout=0.0, batch_size=4,
                           gradient_accumulation_steps=1, eval_iters=2, eval_interval=10, log_interval=1,
                           learning_rate=1e-2, decay_lr=False, warmup_iters=0, max_iters=20, seed=1337)

def core_train_args(out_dir, **overrides):
    """train.py arguments for a tiny CPU run into out_dir; overrides replace settings (None drops one)."""
    settings = dict(CORE_TRAIN_SETTINGS, out_dir=str(out_dir), **overrides)
    return [f'--{k}={v}' for k, v in settings.items() if v is not None]

def run_inproc(script, *args, check=False):
    """`python <script> <args>` in a fresh namespace here: returncode, stdout, stderr; other exceptions propagate."""
    if 'torch._dynamo' in sys.modules:  # no compiled graph of an earlier run serves this one
        sys.modules['torch._dynamo'].reset()
    saved = sys.argv, os.getcwd(), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out, err, code = io.StringIO(), io.StringIO(), 0
    gc.freeze()  # what exists now is out of the collections' sight: they go through what this run made, not the
    try:         # whole heap (torch, transformers, onnx: half a second a run)
        os.chdir(REPO_ROOT)
        sys.argv = [script, *map(str, args)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(os.path.join(REPO_ROOT, script), run_name='__main__')
            except SystemExit as e:
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
                    code = 1
    finally:
        gc.collect()  # what a process exit would release: files the script left open (train.py's lock),
        gc.collect()  # some only once the first collection has broken the cycles that held them
        gc.unfreeze()
        sys.argv = saved[0]
        os.chdir(saved[1])
        for s, handler in saved[2].items():
            signal.signal(s, handler)
    result = types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
    return exited_0(result, f"{script} {' '.join(map(str, args))}") if check else result

def compiled_graphs(script, *args):
    """(run_inproc's result, the number of graphs torch.compile built): a compiled run, not a quietly eager one."""
    import torch._dynamo   # run_inproc resets it
    torch._dynamo.utils.counters.clear()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # no quiet fall-back to eager either
        result = run_inproc(script, *args, check=True)
    return result, torch._dynamo.utils.counters['stats']['unique_graphs']

def assert_user_error(result, *fragments):
    """Non-zero exit, no traceback, and stderr's last line 'error: ...' holds each fragment (any case)."""
    assert result.returncode != 0, f"expected a failure, got exit 0\n{result.stdout[-2000:]}"
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    last = (result.stderr.strip().splitlines() or ['(nothing on stderr)'])[-1]
    assert last.startswith('error: '), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment.lower() in last.lower(), f"{fragment!r} not in {last!r}"
    return last

@pytest.fixture(scope='session')
def tiny_run(core_dataset, tmp_path_factory):
    """One tiny run (evaluations at 0, 10, 20): its out_dir and stdout. Tests that write there use copy_run."""
    out_dir = tmp_path_factory.mktemp('tiny_run') / 'out'
    proc = run_inproc('train.py', *core_train_args(out_dir), check=True)
    return types.SimpleNamespace(out_dir=out_dir, stdout=proc.stdout)

@pytest.fixture
def copy_run(tiny_run, tmp_path):
    """A private copy of tiny_run's out_dir."""
    return shutil.copytree(tiny_run.out_dir, tmp_path / 'out')

class LiveProcess:
    """A script in the background whose output is collected as it comes: wait for a line, then act (a signal)."""

    def __init__(self, args, new_session=False):
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        self.proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=new_session)
        self.pid = self.proc.pid
        self._out, self._err = [], []
        self._threads = [threading.Thread(target=sink.extend, args=(stream,), daemon=True)
                         for stream, sink in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for thread in self._threads:
            thread.start()

    stdout = property(lambda self: ''.join(self._out))
    stderr = property(lambda self: ''.join(self._err))

    def wait_for(self, pattern, count=1, timeout=180):
        """Block until `pattern` (a regex, multiline) has matched `count` times in stdout."""
        deadline = time.time() + timeout
        while len(re.findall(pattern, self.stdout, re.M)) < count:
            if self.proc.poll() is not None or time.time() > deadline:
                self.kill()
                raise AssertionError(f"{pattern!r} did not appear {count} times (exit {self.proc.poll()}):\n"
                                     f"{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}")
            time.sleep(0.05)

    def kill(self):
        with contextlib.suppress(ProcessLookupError):
            if self.proc.poll() is None and self.proc.pid == os.getpgid(self.proc.pid):
                os.killpg(self.proc.pid, signal.SIGKILL)  # a session of its own: all its processes
            elif self.proc.poll() is None:
                self.proc.kill()
        self.proc.wait()

    def finish(self, timeout=180):
        """Wait for the exit; returns the exit status (stdout and stderr are complete after)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        for thread in self._threads:
            thread.join(timeout=30)
        return self.proc.returncode

def checkpoint_files(out_dir):
    """The checkpoints and checkpoint temporaries in out_dir (not the other outputs, such as metrics.csv)."""
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    return sorted(n for n in names if n.endswith('.pt') or '.pt.tmp' in n)

STEP_LINE = re.compile(r'^step (\d+): train loss ([\d.]+), val loss ([\d.]+)', re.M)

def iteration_losses(stdout):
    """{iteration: loss} of train.py's log lines (the printed digits: equal losses are equal to the bit)."""
    found = re.findall(r'^iter (\d+): loss ([\d.]+),', stdout, re.M)
    assert len(found) == len({i for i, _ in found}), "an iteration was logged twice"
    return {int(i): float(loss) for i, loss in found}

def step_losses(stdout):
    """{iteration: (train loss, val loss)} of train.py's evaluations."""
    return {int(i): (float(train), float(val)) for i, train, val in STEP_LINE.findall(stdout)}

class RunsCode:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))

def explicit_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
    """softmax(q k^T / sqrt(head_size)) v written out: the reference for scaled_dot_product_attention's kernels."""
    if is_causal:
        attn_mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
    att = (q @ k.transpose(-2, -1)) / k.size(-1) ** 0.5
    if attn_mask is not None:
        att = att.masked_fill(~attn_mask, float('-inf'))
    return torch.nn.functional.dropout(att.softmax(dim=-1), p=dropout_p) @ v

@contextlib.contextmanager
def attention(flash):
    """The model's attention as it is (flash=True), or through explicit_attention."""
    F, real = torch.nn.functional, torch.nn.functional.scaled_dot_product_attention
    if not flash:
        F.scaled_dot_product_attention = explicit_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = real

@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    """A private, offline Hugging Face cache, here and in subprocesses (the environment returned)."""
    import datasets
    import huggingface_hub
    monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', str(tmp_path / 'hf_home' / 'datasets'))
    monkeypatch.setattr(datasets.config, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    return {'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'HF_HOME': str(tmp_path / 'hf_home')}

# train.py on 2 CPU ranks over gloo: torchrun where signals and exit codes are tested, else forked_ranks, once a session
TORCHRUN = ('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py')
# evaluations at 0, 3 and 6 (ckpt.pt then holds the weights before iteration 6), over an odd number of batches
TORCHRUN_SETTINGS = dict(max_iters=8, eval_interval=3, eval_iters=3, gradient_accumulation_steps=2, learning_rate=3e-3)

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def forked_ranks(*args):
    """train.py <args> on 2 ranks forked from this process with torchrun's variables; both must exit 0."""
    port = free_port()
    logs = {rank: [os.path.join(TEST_ROOT, f'rank{rank}-{port}.{out}') for out in ('out', 'err')] for rank in '01'}
    pids = [_fork_rank(dict(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE='2', LOCAL_WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                            MASTER_PORT=str(port)), args, *logs[rank]) for rank in '01']
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    stdout, stderr = (''.join(open(logs[rank][i]).read() for rank in '01') for i in (0, 1))
    result = types.SimpleNamespace(returncode=0 if codes == [0, 0] else codes, stdout=stdout, stderr=stderr)
    return exited_0(result, f"train.py {' '.join(args)} on 2 ranks")

def _fork_rank(variables, args, stdout, stderr):
    """The pid of a child that runs train.py as one rank would, and exits with its status (after 5 minutes, hung)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.alarm(300)
        os.environ.update(variables)
        if 'torch._dynamo' in sys.modules:  # compiled afresh, as in a new process
            sys.modules['torch._dynamo'].reset()
        # the fork has none of this process's compile threads: a kernel handed to them would wait forever
        os.environ['TORCHINDUCTOR_COMPILE_THREADS'] = '1'
        if 'torch._inductor.config' in sys.modules:
            sys.modules['torch._inductor.config'].compile_threads = 1
        for fd, path in ((1, stdout), (2, stderr)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT), fd)
        sys.stdout, sys.stderr = (open(fd, 'w', buffering=1, closefd=False) for fd in (1, 2))
        os.chdir(REPO_ROOT)
        sys.argv = ['train.py', *args]
        runpy.run_path('train.py', run_name='__main__')
        code = 0
    except BaseException:  # SystemExit too: a rank that finishes exits in parallel.leave, not through here
        traceback.print_exc()
    finally:
        os._exit(code)  # never back into pytest

@pytest.fixture(scope='session')
def parallel_run(core_dataset, tmp_path_factory):
    """run(**settings): train.py on forked_ranks with TORCHRUN_SETTINGS, once a session (copy out_dir to write)."""
    @functools.cache
    def run(**settings):
        out_dir = tmp_path_factory.mktemp('parallel_run') / 'out'
        stdout = forked_ranks(*core_train_args(out_dir, **{**TORCHRUN_SETTINGS, **settings})).stdout
        return types.SimpleNamespace(out_dir=out_dir, stdout=stdout, losses=iteration_losses(stdout),
                                     steps=step_losses(stdout))
    return run

def prep(script, *args, check=True):
    return run_inproc(f'data/{script}/prepare.py', *args, check=check)

def gpt2_tokens(docs):
    """docs' tokens computed without the code under test: encode_ordinary, then 50256; rows of None skipped."""
    enc = tiktoken.get_encoding('gpt2')
    return np.array([t for doc in docs if doc is not None for t in enc.encode_ordinary(doc) + [enc.eot_token]],
                    dtype=np.uint16)

# prepare.py SIGSTOPs itself at its Nth Output.write: interrupted where the test chooses, not where a race has got to
STOP_AT_WRITE = """import itertools, os, runpy, signal, sys
from helpers import prepare
write, writes, stop_at = prepare.Output.write, itertools.count(1), int(sys.argv[1])
def write_or_stop(self, split, ids):
    if next(writes) == stop_at:
        os.kill(os.getpid(), signal.SIGSTOP)
    write(self, split, ids)
prepare.Output.write = write_or_stop
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')"""

def stopped_prepare(script, at_write, *args, env=None):
    proc = subprocess.Popen([sys.executable, '-c', STOP_AT_WRITE, str(at_write), f'data/{script}/prepare.py',
                             *map(str, args)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED='1', **(env or {})))
    assert os.WIFSTOPPED(os.waitpid(proc.pid, os.WUNTRACED)[1]), proc.communicate()
    return proc

def ctrl_c(*done, **kwargs):
    """A Ctrl+C once the calls in its arguments are done."""
    raise KeyboardInterrupt

def killed_at(step, folder, action):
    """Whether action(), forked, reached its step-th rename or removal under folder, where it SIGKILLs itself."""
    folder = os.path.abspath(folder)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            calls = itertools.count(1)
            def dies_at_step(fn):
                def call(*args, **kwargs):
                    paths = [os.path.abspath(a) for a in args[:2] if isinstance(a, (str, os.PathLike))]
                    if any(p.startswith(folder) for p in paths) and next(calls) == step:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return fn(*args, **kwargs)
                return call
            for name in ('replace', 'rename', 'remove', 'unlink', 'rmdir'):
                setattr(os, name, dies_at_step(getattr(os, name)))
            shutil.rmtree = dies_at_step(shutil.rmtree)
            for fd in (1, 2):
                os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
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
