"""train.py end to end on a tiny CPU model: the loss falls and checkpoints are written;
resume continues where training stopped, bit for bit; Ctrl+C and SIGTERM stop cleanly."""
import os
import re
import shlex
import signal
import sys

import pytest
import torch

from helpers import checkpoint, metrics
from conftest import (REPO_ROOT, LiveProcess, assert_user_error, checkpoint_files, core_text, core_train_args,
                      run_inproc, run_script)

STEP_LINE = re.compile(r'^step (\d+): train loss ([\d.]+), val loss ([\d.]+) \(evaluation', re.M)
ITER_LINE = re.compile(r'^iter (\d+): loss (\S+), time', re.M)


def step_losses(stdout):
    return {int(m[1]): (float(m[2]), float(m[3])) for m in STEP_LINE.finditer(stdout)}


def iter_lines(stdout):
    """{iteration: loss text} from the log, the time dropped."""
    found = ITER_LINE.findall(stdout)
    its = [int(i) for i, _ in found]
    assert len(its) == len(set(its)), "an iteration was logged twice"
    return {int(i): loss for i, loss in found}


def leftovers(out_dir):
    return [n for n in os.listdir(out_dir) if '.tmp' in n]


def test_tiny_run_lowers_the_loss_and_writes_checkpoints(tiny_run, core_dataset):
    steps = step_losses(tiny_run.stdout)
    assert sorted(steps) == [0, 10, 20]
    assert steps[20][0] < steps[0][0] - 0.3, steps  # train loss
    assert steps[20][1] < steps[0][1] - 0.3, steps  # val loss
    assert sorted(iter_lines(tiny_run.stdout)) == list(range(21))
    assert checkpoint_files(tiny_run.out_dir) == ['ckpt.pt', 'latest.pt']
    ckpt = checkpoint.load(str(tiny_run.out_dir), 'ckpt.pt')
    latest = checkpoint.load(str(tiny_run.out_dir), 'latest.pt')
    assert ckpt['iter_num'] == 20  # written at the evaluation of iteration 20
    assert latest['iter_num'] == 21  # written when the loop ended, after iteration 20
    assert ckpt['best_val_loss'] == pytest.approx(steps[20][1], abs=1e-4)
    assert set(ckpt['model_args']) == set(checkpoint.NANOGPT_MODEL_ARGS)
    assert ckpt['model_args']['vocab_size'] == len(set(core_text()))  # from the dataset's meta.pkl
    assert ckpt['config']['dataset'] == core_dataset and ckpt['config']['batch_size'] == 4
    model = checkpoint.model_from_checkpoint(ckpt)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_continues_from_the_latest_state(copy_run):
    proc = run_inproc('train.py', *core_train_args(copy_run, init_from='resume', max_iters=24), check=True)
    assert f"Resuming training from {os.path.join(str(copy_run), 'latest.pt')}" in proc.stdout
    assert sorted(iter_lines(proc.stdout)) == [21, 22, 23, 24]
    assert checkpoint.load(str(copy_run), 'latest.pt')['iter_num'] == 25
    assert checkpoint.load(str(copy_run), 'ckpt.pt')['iter_num'] == 20  # no evaluation since
    assert not leftovers(copy_run)


def test_resume_reads_ckpt_pt_when_there_is_no_latest(copy_run):
    """An out_dir as nanoGPT leaves it (ckpt.pt only) resumes from ckpt.pt's iteration."""
    os.remove(copy_run / 'latest.pt')
    proc = run_inproc('train.py', *core_train_args(copy_run, init_from='resume', max_iters=21), check=True)
    assert f"Resuming training from {os.path.join(str(copy_run), 'ckpt.pt')}" in proc.stdout
    assert sorted(iter_lines(proc.stdout)) == [20, 21]
    assert sorted(step_losses(proc.stdout)) == [20]


def test_ckpt_pt_is_only_written_on_improvement_without_always_save(tmp_path, core_dataset):
    """nanoGPT's rule for ckpt.pt; latest.pt is written at every evaluation regardless. With a
    learning rate of 0 the val loss never improves on the first evaluation's."""
    out_dir = tmp_path / 'out'
    proc = run_inproc('train.py', *core_train_args(out_dir, learning_rate=0.0, always_save_checkpoint=False,
                                                   max_iters=6, eval_interval=3), check=True)
    assert sorted(step_losses(proc.stdout)) == [0, 3, 6]
    assert checkpoint_files(out_dir) == ['latest.pt']
    assert checkpoint.load(str(out_dir), 'latest.pt')['iter_num'] == 7


# -----------------------------------------------------------------------------
# exact resume: N iterations straight == N/2, stop, resume, the rest; bit for bit

EXACT = dict(dropout=0.1, gradient_accumulation_steps=2, eval_interval=3, always_save_checkpoint=False,
             learning_rate=3e-3, decay_lr=True, warmup_iters=2, lr_decay_iters=14, min_lr=3e-4)
EXACT_LAST = 13


@pytest.fixture(scope='module')
def straight_run(core_dataset, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp('straight') / 'out'
    proc = run_inproc('train.py', *core_train_args(out_dir, max_iters=EXACT_LAST, **EXACT), check=True)
    lines = iter_lines(proc.stdout)
    assert sorted(lines) == list(range(EXACT_LAST + 1))
    return proc.stdout


def test_exact_resume(straight_run, tmp_path):
    """The straight run and the first half run in this process; the second half in a new one,
    so nothing but the checkpoint carries state across the stop."""
    out_dir = tmp_path / 'out'
    first = run_inproc('train.py', *core_train_args(out_dir, max_iters=6, **EXACT), check=True)
    second = run_script('train.py', *core_train_args(out_dir, max_iters=EXACT_LAST, init_from='resume', **EXACT),
                        timeout=300)
    straight = iter_lines(straight_run)
    a, b = iter_lines(first.stdout), iter_lines(second.stdout)
    assert sorted(a) == list(range(7)) and sorted(b) == list(range(7, EXACT_LAST + 1))
    assert {**a, **b} == straight
    # evaluations agree as well, including the val loss tracking behind ckpt.pt
    assert {**step_losses(first.stdout), **step_losses(second.stdout)} == step_losses(straight_run)
    # the losses really move: dropout and the data differ per iteration
    assert len(set(straight.values())) > EXACT_LAST // 2


def test_exact_resume_checkpoint_holds_rng_and_sampler_state(straight_run, tmp_path):
    out_dir = tmp_path / 'out'
    run_inproc('train.py', *core_train_args(out_dir, max_iters=2, **EXACT), check=True)
    state = checkpoint.load(str(out_dir), 'latest.pt')
    rng = state['rng_states']
    assert {'python', 'numpy', 'torch'} <= set(rng)
    assert rng['torch'].dtype == torch.uint8
    assert state['iter_num'] == 3  # the batch sampler is seeded per iteration: iter_num is its state
    # restoring what was captured reproduces the same random draws
    import random
    import numpy as np
    before = checkpoint.capture_rng_states('cpu')
    checkpoint.restore_rng_states(rng, 'cpu')
    draws = (random.random(), np.random.rand(), torch.rand(3))
    checkpoint.restore_rng_states(rng, 'cpu')
    assert (random.random(), np.random.rand()) == draws[:2] and torch.equal(torch.rand(3), draws[2])
    checkpoint.restore_rng_states(before, 'cpu')


# -----------------------------------------------------------------------------
# interrupts

@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_and_resume_continues(signum, straight_run, tmp_path):
    out_dir = tmp_path / 'out'
    run = LiveProcess([sys.executable, 'train.py', *core_train_args(out_dir, max_iters=100000, **EXACT)])
    run.wait_for(r'^iter 1:')
    run.proc.send_signal(signum)
    assert run.finish() == 0, run.stderr[-3000:]
    stdout, err = run.stdout, run.stderr
    assert 'Traceback' not in err
    name = signal.Signals(signum).name
    match = re.search(rf'^stopped by {name} after iteration (\d+); to continue:\n(.+)$', stdout, re.M)
    assert match, stdout[-2000:]
    last_done, command = int(match[1]), shlex.split(match[2])
    assert command[:2] == ['python', 'train.py'] and command[-1] == '--init_from=resume', command
    assert f"{name} received" in stdout
    state = checkpoint.load(str(out_dir), 'latest.pt')
    assert state['iter_num'] == last_done + 1  # nanoGPT's iter_num: the iterations done
    assert f"saving checkpoint to {os.path.join(str(out_dir), 'latest.pt')}" in stdout
    assert not leftovers(out_dir)
    logged = iter_lines(stdout)
    assert sorted(logged) == list(range(last_done + 1))  # the interrupted iteration was finished
    # resuming continues at the next iteration, with the losses of an uninterrupted run: by the
    # printed command as it is, or by the short one, the checkpoint bringing the run's settings
    last = max(last_done + 2, 8)
    if signum == signal.SIGINT:
        args = command[2:]
    else:
        args = ['--init_from=resume', f'--out_dir={out_dir}', '--device=cpu']
    resumed = run_inproc('train.py', *args, f'--max_iters={last}', check=True)
    more = iter_lines(resumed.stdout)
    assert sorted(more) == list(range(last_done + 1, last + 1))
    straight = iter_lines(straight_run)
    for it, loss in {**logged, **more}.items():
        if it in straight:
            assert loss == straight[it], f"iteration {it}"


def test_the_log_says_how_far_the_run_is_and_how_long_is_left(tiny_run):
    lines = re.findall(r'^iter (\d+): loss [\d.]+, time [\d.]+ms, ([\d,]+) tokens/s, (\d+)% done, (\S+) left$',
                       tiny_run.stdout, re.M)
    assert [int(it) for it, *_ in lines] == list(range(21))  # every log line, with nanoGPT's start kept as it was
    assert [int(done) for _, _, done, _ in lines] == [round(100 * (it + 1) / 21) for it in range(21)]
    assert lines[-1][3] == '0s' and all(re.fullmatch(r'(\d+h)?(\d+m)?\d+s|\d+h\d+m', left) for *_, left in lines)
    assert all(int(tokens.replace(',', '')) > 0 for _, tokens, _, _ in lines)  # on a CPU: tokens/s, not "mfu n/a"
    # evaluations report their own time and the time since the command started; the last line says it all
    assert len(re.findall(r'^step \d+: train loss [\d.]+, val loss [\d.]+ \(evaluation [\d.]+s, elapsed \d+s\)$',
                          tiny_run.stdout, re.M)) == 3
    assert re.search(r'^finished iteration 20 after \d+s$', tiny_run.stdout, re.M)


def test_time_left_counts_the_iterations_and_evaluations_to_come(monkeypatch):
    """progress() from train.py, on its own: 100 iterations of 0.5 s and 4 evaluations of 10 s are left
    after iteration 399 of 0..499 with evaluations every 25."""
    source = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'train.py')).read()
    namespace = {'metrics': metrics}
    exec(re.search(r'^def progress\(.*?(?=^\S)', source, re.M | re.S).group(0), namespace)
    namespace.update(max_iters=499, eval_interval=25, iter_seconds=0.5, eval_seconds=10.0)
    assert namespace['progress'](399) == '80% done, 1m30s left'  # 100 x 0.5 s + evaluations at 400, 425, 450, 475
    assert metrics.duration(3725) == '1h02m' and metrics.duration(59.6) == '1m00s'


def test_the_run_says_up_front_what_it_will_cost(tiny_run):
    estimate = re.search(r'^estimate on cpu: ([\d.]+)s per iteration, \S+ per evaluation; 0% done, \S+ left', tiny_run.stdout,
                         re.M)
    assert estimate and tiny_run.stdout.index('estimate on cpu') < tiny_run.stdout.index('step 0:')
    assert 'this run is long for a CPU' not in tiny_run.stdout


def test_a_config_far_too_heavy_for_the_cpu_names_the_laptop_config(tmp_path, core_dataset):
    """nanoGPT's GPU config on a CPU: said before its first evaluation, which alone takes minutes."""
    run = LiveProcess([sys.executable, 'train.py', 'config/train_shakespeare_char.py', f'--dataset={core_dataset}',
                       '--device=cpu', f'--out_dir={tmp_path / "out"}', '--block_size=64'])
    try:
        run.wait_for(r'^this run is long for a CPU: .*config/train_shakespeare_char_cpu\.py', timeout=300)
        assert 'step 0:' not in run.stdout
        section = re.search(r"\(README: '(.+)'\)$", run.stdout, re.M)[1]  # names a section that is there
        with open(os.path.join(REPO_ROOT, 'README.md')) as f:
            assert f'\n## {section}\n' in f.read()
    finally:
        run.kill()


def test_elapsed_counts_the_run_across_resumes(copy_run):
    before = checkpoint.load(str(copy_run), 'latest.pt')['elapsed_seconds']
    resumed = run_inproc('train.py', *core_train_args(copy_run, init_from='resume', max_iters=30), check=True).stdout
    elapsed = re.search(r'^step 30: .*elapsed (\d+)s\)$', resumed, re.M)
    after = checkpoint.load(str(copy_run), 'latest.pt')['elapsed_seconds']
    assert elapsed and int(elapsed[1]) >= round(before) and after > before
    seconds = [r['seconds'] for r in metrics.read_metrics(copy_run / 'metrics.csv')]
    assert seconds == sorted(seconds) and seconds[-1] == pytest.approx(after, abs=2)


def test_muon_resumes_exactly_and_keeps_both_states(straight_run, tmp_path):
    settings = dict(EXACT, optimizer='muon')
    straight = iter_lines(run_inproc('train.py', *core_train_args(tmp_path / 'a', max_iters=8, **settings),
                                     check=True).stdout)
    first = iter_lines(run_inproc('train.py', *core_train_args(tmp_path / 'b', max_iters=4, **settings),
                                  check=True).stdout)
    state = checkpoint.load(str(tmp_path / 'b'), 'latest.pt')['optimizer']
    assert set(state) == {'muon', 'adamw'} and state['muon']['state'] and state['adamw']['state']
    resumed = run_script('train.py', '--init_from=resume', f'--out_dir={tmp_path / "b"}', '--device=cpu',
                         '--max_iters=8')
    assert {**first, **iter_lines(resumed.stdout)} == straight
    adamw = iter_lines(straight_run)
    assert any(straight[i] != adamw[i] for i in straight)  # Muon really stepped


# -----------------------------------------------------------------------------
# nanoGPT's own checkpoints, and a switch of optimizer on resume

NANOGPT_CONFIG_KEYS = ('out_dir', 'eval_interval', 'log_interval', 'eval_iters', 'eval_only', 'always_save_checkpoint',
                       'init_from', 'wandb_log', 'wandb_project', 'wandb_run_name', 'dataset',
                       'gradient_accumulation_steps', 'batch_size', 'block_size', 'n_layer', 'n_head', 'n_embd',
                       'dropout', 'bias', 'learning_rate', 'max_iters', 'weight_decay', 'beta1', 'beta2', 'grad_clip',
                       'decay_lr', 'warmup_iters', 'lr_decay_iters', 'min_lr', 'backend', 'device', 'dtype', 'compile')


def as_nanogpt_checkpoint(state):
    """state (this project's checkpoint) as nanoGPT's train.py writes it on a CPU: its keys only, its config
    (dtype='float16', which it records and never uses there), compiled names, and the optimizer state of a
    non-fused AdamW over its two parameter groups holding the same moments."""
    config = state['config']
    model = checkpoint.model_from_checkpoint(state)
    params = [p for p in model.parameters() if p.requires_grad]
    adamw = torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2], 'weight_decay': config['weight_decay']},
                               {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}],
                              lr=config['learning_rate'], betas=(config['beta1'], config['beta2']), fused=False)
    return {'model': {'_orig_mod.' + k: v for k, v in state['model'].items()},
            'optimizer': {'state': state['optimizer']['state'], 'param_groups': adamw.state_dict()['param_groups']},
            'model_args': state['model_args'], 'iter_num': state['iter_num'], 'best_val_loss': state['best_val_loss'],
            'config': dict({k: config[k] for k in NANOGPT_CONFIG_KEYS}, dtype='float16', device='cpu', compile=True)}


@pytest.mark.parametrize('dtype', [None, 'float16'])
def test_a_nanogpt_checkpoint_resumes_as_this_projects_own(copy_run, tmp_path, dtype):
    """The same state, once in this project's checkpoint and once in nanoGPT's, trains on to the same losses:
    on the run's float32 (the float16 nanoGPT records is not this machine's), and with float16 asked for
    (the GradScaler through this machine's fused AdamW)."""
    os.remove(copy_run / 'latest.pt')
    nanogpt_dir = tmp_path / 'nanogpt'
    os.mkdir(nanogpt_dir)
    torch.save(as_nanogpt_checkpoint(checkpoint.load(str(copy_run), 'ckpt.pt')), nanogpt_dir / 'ckpt.pt')
    args = ['--init_from=resume', '--device=cpu', '--max_iters=23'] + ([f'--dtype={dtype}'] if dtype else [])
    own = run_inproc('train.py', *args, f'--out_dir={copy_run}', check=True).stdout
    theirs = run_inproc('train.py', *args, f'--out_dir={nanogpt_dir}', check=True).stdout
    assert sorted(iter_lines(theirs)) == [20, 21, 22, 23]
    assert iter_lines(theirs) == iter_lines(own) and step_losses(theirs) == step_losses(own)
    if dtype is None:
        assert "dtype='float32' for this machine (the run had 'float16'; set --dtype to choose)" in theirs
        assert "compile=False for this machine (the run had True; set --compile to choose)" in theirs


@pytest.mark.parametrize('before, after', [('adamw', 'muon'), ('muon', 'adamw')])
def test_resuming_with_the_other_optimizer_starts_its_state_afresh(tmp_path, core_dataset, before, after):
    out_dir = tmp_path / 'out'
    run_inproc('train.py', *core_train_args(out_dir, max_iters=2, optimizer=before), check=True)
    resumed = run_inproc('train.py', '--init_from=resume', f'--out_dir={out_dir}', '--device=cpu', '--max_iters=4',
                         f'--optimizer={after}', check=True).stdout
    assert f"optimizer: {after} now, the run had {before}: its optimizer state starts afresh" in resumed
    assert f"optimizer={after!r} from the command line (the run had {before!r})" in resumed
    assert sorted(iter_lines(resumed)) == [3, 4]
    state = checkpoint.load(str(out_dir), 'latest.pt')
    assert state['iter_num'] == 5 and state['config']['optimizer'] == after
    assert ('muon' in state['optimizer']) == (after == 'muon')


def test_a_negative_hellaswag_examples_is_refused(tmp_path, core_dataset):
    """0 scores every example; a negative number is no count at all."""
    assert_user_error(run_inproc('train.py', *core_train_args(tmp_path / 'out', hellaswag_examples=-1)),
                      'hellaswag_examples', '-1')
    assert not (tmp_path / 'out').exists()
