"""Shared fixtures: the offline copies in ../shared (else downloads, as the scripts do), tiny datasets and runs,
and runners for the project's scripts as a user would call them. The tests never touch your data: before anything
imports helpers, NANOGPT_DATA_DIR points at a temporary folder, and the session fails if the repository's data/
changed anyway."""
import contextlib
import functools
import gc
import hashlib
import io
import os
import pickle
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
import types

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get('NANOGPT_SHARED', os.path.join(os.path.dirname(REPO_ROOT), 'shared'))
TINY_SHAKESPEARE = os.path.join(SHARED, 'data', 'tinyshakespeare', 'input.txt')
if os.path.isdir(os.path.join(SHARED, 'tiktoken_cache')):  # else tiktoken downloads GPT-2's files itself
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(SHARED, 'tiktoken_cache'))

# This session's datasets, and nobody else's: set even when the user has set it, since theirs is theirs too.
# The folder is called data/ so that messages naming data/<name>/ read as they do for a user.
TEST_ROOT = tempfile.mkdtemp(prefix='nanogpt-tests-')
DATA_ROOT = os.path.join(TEST_ROOT, 'data')
os.mkdir(DATA_ROOT)
os.environ['NANOGPT_DATA_DIR'] = DATA_ROOT
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
import helpers  # noqa: E402

if helpers.DATA_ROOT != DATA_ROOT:
    raise RuntimeError(f"helpers was imported before tests/conftest.py set NANOGPT_DATA_DIR; its datasets are in "
                       f"{helpers.DATA_ROOT}, which the tests must not touch")

def data_files(top):
    """{path: (size, mtime, sha256 up to 4 MiB: a user's large corpus is not read through)} under top."""
    files = {}
    for root, folders, names in os.walk(top):
        folders[:] = [f for f in folders if f != '__pycache__']
        for name in names:
            path = os.path.join(root, name)
            try:
                stat = os.stat(path)
            except FileNotFoundError:   # removed while we looked: the next look sees it gone
                continue
            digest = None
            if stat.st_size <= 4 << 20:
                with open(path, 'rb') as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
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
        terminalreporter.section("files under the repository's data/ changed during the tests, which must never "
                                 "touch it", sep='=', red=True)
        for line in DATA_CHANGED:
            terminalreporter.write_line(line)

def run_script(*args, cwd=REPO_ROOT, env=None, timeout=600, check=True):
    """Run `python <args>` like a user would; return the CompletedProcess with text output."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc

def place_tiny_shakespeare(dataset):
    """Put tiny shakespeare where data/<dataset>/prepare.py reads it, in this session's data folder:
    the offline copy when there is one, else the file prepare.py downloads, fetched once as it fetches it."""
    target = os.path.join(DATA_ROOT, dataset, 'input.txt')
    if os.path.exists(target):
        return target
    source = TINY_SHAKESPEARE
    if not os.path.exists(source):
        from helpers import UserError
        from helpers.prepare import TINY_SHAKESPEARE_URL, download
        try:
            source = download(TINY_SHAKESPEARE_URL, os.path.join(TEST_ROOT, 'tinyshakespeare', 'input.txt'))
        except UserError as e:
            pytest.fail(f"tiny shakespeare is neither at {TINY_SHAKESPEARE} (the offline copy; NANOGPT_SHARED names "
                        f"its folder) nor downloadable from {TINY_SHAKESPEARE_URL}: {e}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(source, target)
    return target

@pytest.fixture(scope='session')
def shakespeare_char():
    """data/shakespeare_char prepared once per test session (in its data folder); returns the prepare output."""
    place_tiny_shakespeare('shakespeare_char')
    return run_script('data/shakespeare_char/prepare.py').stdout

# -----------------------------------------------------------------------------
# a tiny dataset and tiny model settings, and the scripts run in this process

# A 2-core machine shared with other jobs: torch's default of one thread per core spins
# against the other processes and makes tiny models 50x slower. One thread is plenty here.
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')
# torch.compile's compile workers are threads of this process, which a forked rank (forked_ranks) does not have:
# with a cold compile cache it would wait for them forever. Compiling in the calling thread has no such wait.
os.environ['TORCHINDUCTOR_COMPILE_THREADS'] = '1'

CORE_DATASET = '_test_core'
CORE_WORDS = ('the', 'cat', 'sat', 'on', 'a', 'mat', 'dog', 'ran', 'far', 'away', 'and', 'then', 'slept')

def write_char_dataset(name, text, val_fraction=0.1, meta_extra=None):
    """data/<name>/{train,val}.bin (uint16) and a nanoGPT-style meta.pkl for a character vocabulary,
    in this session's data folder."""
    import numpy as np
    folder = os.path.join(DATA_ROOT, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
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
    import random
    rng = random.Random(seed)
    return ' '.join(rng.choice(CORE_WORDS) for _ in range(n_words)) + '\n'

@pytest.fixture(scope='session')
def core_dataset():
    """Name of a tiny character dataset in data/, removed after the session."""
    folder = write_char_dataset(CORE_DATASET, core_text())
    yield CORE_DATASET
    shutil.rmtree(folder, ignore_errors=True)

@pytest.fixture
def make_dataset():
    """Factory for throw-away datasets data/_test_core_<suffix>, removed after the test."""
    made = []

    def make(suffix, text=None, **kwargs):
        name = f'{CORE_DATASET}_{suffix}'
        made.append(write_char_dataset(name, core_text() if text is None else text, **kwargs))
        return name
    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)

CORE_TRAIN_SETTINGS = dict(
    dataset=CORE_DATASET, device='cpu', dtype='float32', compile=False, wandb_log=False,
    n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, dropout=0.0,
    batch_size=4, gradient_accumulation_steps=1, eval_iters=2, eval_interval=10, log_interval=1,
    learning_rate=1e-2, decay_lr=False, warmup_iters=0, max_iters=20, seed=1337,
)

def core_train_args(out_dir, **overrides):
    """train.py arguments for a tiny CPU run into out_dir; overrides replace or add settings
    (a value of None drops that setting)."""
    settings = dict(CORE_TRAIN_SETTINGS, out_dir=str(out_dir), **overrides)
    return [f'--{k}={v}' for k, v in settings.items() if v is not None]

def run_inproc(script, *args, check=False):
    """Run `python <script> <args>` in this process, afresh in a new namespace as a new process would, without the
    seconds of an interpreter's and torch's start-up. returncode, stdout and stderr as the interpreter gives them (a
    UserError: its line on stderr, exit 1); any other exception propagates, as it would print a traceback."""
    if 'torch._dynamo' in sys.modules:  # no compiled graph of an earlier run serves this one
        sys.modules['torch._dynamo'].reset()
    saved = sys.argv, os.getcwd(), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out, err = io.StringIO(), io.StringIO()
    code = 0
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
    if check and code != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} exited {code}\n--- stdout ---\n"
                             f"{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}")
    return result

def compiled_graphs(script, *args):
    """Run script in this process (check=True); (its result, the number of graphs torch.compile built
    for it), which tells a compiled run from one that quietly ran eagerly."""
    import torch._dynamo
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # no quiet fall-back to eager either
        result = run_inproc(script, *args, check=True)
    return result, torch._dynamo.utils.counters['stats']['unique_graphs']

def assert_user_error(result, *fragments):
    """A bad-input failure: non-zero exit, stderr's last line is one 'error: ...' line naming the
    problem (each fragment, case-insensitive), and no traceback."""
    assert result.returncode != 0, f"expected a failure, got exit 0\n{result.stdout[-2000:]}"
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    last = (result.stderr.strip().splitlines() or ['(nothing on stderr)'])[-1]
    assert last.startswith('error: '), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment.lower() in last.lower(), f"{fragment!r} not in {last!r}"
    return last

@pytest.fixture(scope='session')
def tiny_run(core_dataset, tmp_path_factory):
    """One tiny training run (21 iterations, evaluations at 0, 10, 20): its out_dir and stdout.
    Tests that write into an out_dir must copy it first (copy_run)."""
    out_dir = tmp_path_factory.mktemp('tiny_run') / 'out'
    proc = run_inproc('train.py', *core_train_args(out_dir), check=True)
    return types.SimpleNamespace(out_dir=out_dir, stdout=proc.stdout)

@pytest.fixture
def copy_run(tiny_run, tmp_path):
    """A private copy of tiny_run's out_dir."""
    return shutil.copytree(tiny_run.out_dir, tmp_path / 'out')

class LiveProcess:
    """A script started in the background whose output is collected as it comes, so a test can
    wait for a line (say, an iteration) and then act on the running process (send a signal)."""

    def __init__(self, args, new_session=False):
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        self.proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=new_session)
        self.pid = self.proc.pid
        self._out, self._err = [], []
        self._threads = [threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
                         for stream, sink in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink.append(line)

    @property
    def stdout(self):
        return ''.join(self._out)

    @property
    def stderr(self):
        return ''.join(self._err)

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
        try:
            if self.proc.poll() is None and self.proc.pid == os.getpgid(self.proc.pid):
                os.killpg(self.proc.pid, signal.SIGKILL)  # a session of its own: all its processes
            elif self.proc.poll() is None:
                self.proc.kill()
        except ProcessLookupError:
            pass
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
    if not os.path.isdir(out_dir):
        return []
    return sorted(n for n in os.listdir(out_dir) if n.endswith('.pt') or '.pt.tmp' in n)

ITER_LINE = re.compile(r'^iter (\d+): loss ([\d.]+),', re.M)
STEP_LINE = re.compile(r'^step (\d+): train loss ([\d.]+), val loss ([\d.]+)', re.M)

def iteration_losses(stdout):
    """{iteration: loss} of train.py's log lines (the printed digits: equal losses are equal to the bit)."""
    found = ITER_LINE.findall(stdout)
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
    """Attention written out, softmax(q k^T / sqrt(head_size)) v over the keys each query may see: the
    reference that scaled_dot_product_attention's fused kernels are checked against."""
    import torch
    if is_causal:
        attn_mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
    att = (q @ k.transpose(-2, -1)) / k.size(-1) ** 0.5
    if attn_mask is not None:
        att = att.masked_fill(~attn_mask, float('-inf'))
    return torch.nn.functional.dropout(att.softmax(dim=-1), p=dropout_p) @ v

@contextlib.contextmanager
def attention(flash):
    """The model's attention as it is (flash=True), or through explicit_attention."""
    import torch.nn.functional as F
    real = F.scaled_dot_product_attention
    if not flash:
        F.scaled_dot_product_attention = explicit_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = real

@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    """A private, offline Hugging Face cache, for scripts run in this process (datasets read its settings at
    import) and in processes of their own (the environment returned)."""
    import datasets
    import huggingface_hub
    monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', str(tmp_path / 'hf_home' / 'datasets'))
    monkeypatch.setattr(datasets.config, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    return {'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'HF_HOME': str(tmp_path / 'hf_home')}

# -----------------------------------------------------------------------------
# train.py on 2 CPU processes over gloo: under torchrun where the processes' behaviour is tested (signals, exit
# codes, a failing rank); else as ranks forked from this process, each kind of run once a session.
TORCHRUN = ('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py')
# evaluations at 0, 3 and 6 (ckpt.pt then holds the weights before iteration 6), over an odd number of batches
TORCHRUN_SETTINGS = dict(max_iters=8, eval_interval=3, eval_iters=3, gradient_accumulation_steps=2, learning_rate=3e-3)

def forked_ranks(*args):
    """train.py <args> on 2 ranks with the variables torchrun sets, forked from this process, where torch is
    imported already: no interpreter starts (seconds each here). Fails unless both exit 0; returns their stdout
    and stderr (rank 0's, then rank 1's)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    logs = {rank: [os.path.join(TEST_ROOT, f'rank{rank}-{port}.{out}') for out in ('out', 'err')] for rank in '01'}
    pids = [_fork_rank(dict(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE='2', LOCAL_WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                            MASTER_PORT=str(port)), args, *logs[rank]) for rank in '01']
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    stdout, stderr = (''.join(open(logs[rank][i]).read() for rank in '01') for i in (0, 1))
    assert codes == [0, 0], (f"train.py {' '.join(args)} on 2 ranks exited {codes}\n--- stdout ---\n"
                             f"{stdout[-4000:]}\n--- stderr ---\n{stderr[-4000:]}")
    return types.SimpleNamespace(stdout=stdout, stderr=stderr)

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
        for fd, path in ((1, stdout), (2, stderr)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT), fd)
        sys.stdout, sys.stderr = (open(fd, 'w', buffering=1, closefd=False) for fd in (1, 2))
        os.chdir(REPO_ROOT)
        sys.argv = ['train.py', *args]
        runpy.run_path('train.py', run_name='__main__')
        code = 0
    except BaseException:  # SystemExit too: a rank that finishes exits in parallel.leave, not through here
        import traceback
        traceback.print_exc()
    finally:
        os._exit(code)  # never back into pytest

@pytest.fixture(scope='session')
def parallel_run(core_dataset, tmp_path_factory):
    """run(**settings): train.py on forked_ranks with TORCHRUN_SETTINGS and settings, once a session for all the
    tests that read it (which copy out_dir to write there); its out_dir, stdout, losses and steps (step_losses)."""
    @functools.cache
    def run(**settings):
        out_dir = tmp_path_factory.mktemp('parallel_run') / 'out'
        stdout = forked_ranks(*core_train_args(out_dir, **{**TORCHRUN_SETTINGS, **settings})).stdout
        return types.SimpleNamespace(out_dir=out_dir, stdout=stdout, losses=iteration_losses(stdout),
                                     steps=step_losses(stdout))
    return run
