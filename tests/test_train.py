"""train.py end to end on a tiny CPU model: the loss falls, the log says how far the run is, and checkpoints are
written; resume continues where training stopped, bit for bit; Ctrl+C and SIGTERM stop cleanly."""
import os
import random
import re
import shlex
import signal
import sys
import types

import numpy as np
import pytest
import torch

from helpers import checkpoint, metrics
from conftest import (REPO_ROOT, LiveProcess, assert_user_error, checkpoint_files, core_text, core_train_args,
                      iteration_losses, run_inproc, step_losses)

def leftovers(out_dir):
    return [n for n in os.listdir(out_dir) if '.tmp' in n]

def test_tiny_run_learns_says_how_far_it_is_and_writes_checkpoints(tiny_run, core_dataset):
    stdout, steps = tiny_run.stdout, step_losses(tiny_run.stdout)
    assert sorted(steps) == [0, 10, 20] and all(steps[20][k] < steps[0][k] - 0.3 for k in (0, 1)), steps
    # what the run will cost, said before its first evaluation; then every log line (nanoGPT's start kept)
    assert re.search(r'^estimate on cpu: [\d.]+s per iteration, \S+ per evaluation; 0% done, \S+ left', stdout, re.M)
    assert stdout.index('estimate on cpu') < stdout.index('step 0:') and 'this run is long for a CPU' not in stdout
    lines = re.findall(r'^iter (\d+): loss [\d.]+, time [\d.]+ms, ([\d,]+) tokens/s, (\d+)% done, (\S+) left$', stdout,
                       re.M)
    assert [int(it) for it, *_ in lines] == sorted(iteration_losses(stdout)) == list(range(21))
    assert [int(done) for _, _, done, _ in lines] == [round(100 * (it + 1) / 21) for it in range(21)]
    assert lines[-1][3] == '0s' and all(re.fullmatch(r'(\d+h)?(\d+m)?\d+s|\d+h\d+m', left) for *_, left in lines)
    assert all(int(tokens.replace(',', '')) > 0 for _, tokens, _, _ in lines)  # on a CPU: tokens/s, not "mfu n/a"
    # evaluations report their own time and the time since the command started; the last line says it all
    assert len(re.findall(r'^step \d+: train loss [\d.]+, val loss [\d.]+[^(]* \(evaluation [\d.]+s, elapsed \d+s\)$',
                          stdout, re.M)) == 3
    assert re.search(r'^finished iteration 20 after \d+s$', stdout, re.M)
    assert checkpoint_files(tiny_run.out_dir) == ['ckpt.pt', 'latest.pt']
    ckpt, latest = (checkpoint.load(str(tiny_run.out_dir), name) for name in ('ckpt.pt', 'latest.pt'))
    assert (ckpt['iter_num'], latest['iter_num']) == (20, 21)  # at the evaluation of iteration 20; after the loop
    assert ckpt['best_val_loss'] == pytest.approx(steps[20][1], abs=1e-4)
    assert set(ckpt['model_args']) == set(checkpoint.NANOGPT_MODEL_ARGS)
    assert ckpt['model_args']['vocab_size'] == len(set(core_text()))  # from the dataset's meta.pkl
    assert ckpt['config']['dataset'] == core_dataset and ckpt['config']['batch_size'] == 4
    assert all(torch.isfinite(p).all() for p in checkpoint.model_from_checkpoint(ckpt).parameters())

@pytest.mark.parametrize('resume_from, max_iters', [('latest.pt', 30), ('ckpt.pt', 21)])
def test_resume_continues_from_the_latest_state_and_its_elapsed_time(copy_run, resume_from, max_iters):
    """From latest.pt (the finished run, resumed as it is, stays as it was) or from ckpt.pt alone (as nanoGPT's)."""
    files = lambda: {p.name: p.read_bytes() for p in copy_run.iterdir() if p.name != 'train.lock'}  # noqa: E731
    if resume_from == 'ckpt.pt':
        os.remove(copy_run / 'latest.pt')
    else:
        before, result = files(), run_inproc('train.py', *core_train_args(copy_run, init_from='resume'), check=True)
        assert 'is complete' in result.stdout and '--max_iters' in result.stdout and files() == before
    start = checkpoint.load(str(copy_run), resume_from)
    stdout = run_inproc('train.py', *core_train_args(copy_run, init_from='resume', max_iters=max_iters),
                        check=True).stdout
    assert f"Resuming training from {copy_run / resume_from}" in stdout
    assert sorted(iteration_losses(stdout)) == list(range(start['iter_num'], max_iters + 1))
    assert sorted(step_losses(stdout)) == [max_iters // 10 * 10]
    latest = checkpoint.load(str(copy_run), 'latest.pt')
    assert latest['iter_num'] == max_iters + 1 and not leftovers(copy_run)
    assert checkpoint.load(str(copy_run), 'ckpt.pt')['iter_num'] == max_iters // 10 * 10  # at evaluations only
    elapsed = re.search(rf'^step {max_iters // 10 * 10}: .*elapsed (\d+)s\)$', stdout, re.M)
    assert int(elapsed[1]) >= round(start['elapsed_seconds']) and latest['elapsed_seconds'] > start['elapsed_seconds']
    seconds = [r['seconds'] for r in metrics.read_metrics(copy_run / 'metrics.csv')]
    assert seconds == sorted(seconds) and seconds[-1] == pytest.approx(latest['elapsed_seconds'], abs=2)

def test_ckpt_pt_is_only_written_on_improvement_without_always_save(tmp_path, core_dataset):
    """nanoGPT's rule (lr 0: no improvement); in the log and lock of a run that never saved, a new log of its own."""
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    (out_dir / 'metrics.csv').write_text(','.join(metrics.COLUMNS) + '\n50,train,1,2.0,,0.1,1.0,\n')
    (out_dir / 'train.lock').write_text('12345\n')
    proc = run_inproc('train.py', *core_train_args(out_dir, learning_rate=0.0, always_save_checkpoint=False,
                                                   max_iters=6, eval_interval=3), check=True)
    assert sorted(step_losses(proc.stdout)) == [0, 3, 6] and checkpoint_files(out_dir) == ['latest.pt']
    assert checkpoint.load(str(out_dir), 'latest.pt')['iter_num'] == 7
    assert [r['iter'] for r in metrics.read_metrics(str(out_dir / 'metrics.csv'))] == [0, 0, 1, 2, 3, 3, 4, 5, 6, 6]

# exact resume: stopped and resumed == straight through
EXACT = dict(dropout=0.1, gradient_accumulation_steps=2, eval_interval=3, always_save_checkpoint=False,
             learning_rate=3e-3, decay_lr=True, warmup_iters=2, lr_decay_iters=14, min_lr=3e-4)
EXACT_LAST = 16

@pytest.fixture(scope='module')
def straight_run(core_dataset, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp('straight') / 'out'
    stdout = run_inproc('train.py', *core_train_args(out_dir, max_iters=EXACT_LAST, **EXACT), check=True).stdout
    assert sorted(iteration_losses(stdout)) == list(range(EXACT_LAST + 1))
    assert len(set(iteration_losses(stdout).values())) > EXACT_LAST // 2  # dropout and the data differ per iteration
    return types.SimpleNamespace(out_dir=out_dir, losses=iteration_losses(stdout), steps=step_losses(stdout))

def test_the_checkpoint_holds_the_rng_and_sampler_state(straight_run):
    """Restored states give the same draws; the batch sampler is seeded per iteration (iter_num is its state)."""
    state = checkpoint.load(str(straight_run.out_dir), 'latest.pt')
    rng = state['rng_states']
    assert {'python', 'numpy', 'torch'} <= set(rng) and rng['torch'].dtype == torch.uint8
    assert state['iter_num'] == EXACT_LAST + 1
    before = checkpoint.capture_rng_states('cpu')
    checkpoint.restore_rng_states(rng, 'cpu')
    draws = (random.random(), np.random.rand(), torch.rand(3))
    checkpoint.restore_rng_states(rng, 'cpu')
    assert (random.random(), np.random.rand()) == draws[:2] and torch.equal(torch.rand(3), draws[2])
    checkpoint.restore_rng_states(before, 'cpu')

@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_cleanly_and_the_resume_is_exact(signum, straight_run, tmp_path):
    """Stopped in a subprocess, resumed here (only the checkpoint carries state): the unstopped run's losses."""
    out_dir = tmp_path / 'out'
    run = LiveProcess([sys.executable, 'train.py', *core_train_args(out_dir, max_iters=100000, **EXACT)])
    run.wait_for(r'^iter 1:')
    run.proc.send_signal(signum)
    assert run.finish() == 0 and 'Traceback' not in run.stderr, run.stderr[-3000:]
    name = signal.Signals(signum).name
    match = re.search(rf'^stopped by {name} after iteration (\d+); to continue:\n(.+)$', run.stdout, re.M)
    assert match and f"{name} received" in run.stdout, run.stdout[-2000:]
    last_done, command = int(match[1]), shlex.split(match[2])
    assert command[:2] == ['python', 'train.py'] and command[-1] == '--init_from=resume', command
    assert checkpoint.load(str(out_dir), 'latest.pt')['iter_num'] == last_done + 1  # nanoGPT's: iterations done
    assert f"saving checkpoint to {out_dir / 'latest.pt'}" in run.stdout and not leftovers(out_dir)
    assert sorted(iteration_losses(run.stdout)) == list(range(last_done + 1))  # the interrupted one was finished
    assert last_done < EXACT_LAST, "stopped too late to compare the resumed iterations"
    # by the printed command as it is, or by the short one, the checkpoint bringing the run's settings
    args = command[2:] if signum == signal.SIGINT else ['--init_from=resume', f'--out_dir={out_dir}', '--device=cpu']
    resumed = run_inproc('train.py', *args, f'--max_iters={EXACT_LAST}', check=True).stdout
    assert sorted(iteration_losses(resumed)) == list(range(last_done + 1, EXACT_LAST + 1))
    assert {**iteration_losses(run.stdout), **iteration_losses(resumed)} == straight_run.losses
    assert {**step_losses(run.stdout), **step_losses(resumed)} == straight_run.steps

def test_time_left_counts_the_iterations_and_evaluations_to_come(monkeypatch):
    """progress() from train.py, on its own: after iteration 399 of 0..499, evaluations every 25."""
    source = open(os.path.join(REPO_ROOT, 'train.py')).read()
    namespace = {'metrics': metrics}
    exec(re.search(r'^def progress\(.*?(?=^\S)', source, re.M | re.S).group(0), namespace)
    namespace.update(max_iters=499, eval_interval=25, iter_seconds=0.5, eval_seconds=10.0)
    assert namespace['progress'](399) == '80% done, 1m30s left'  # 100 x 0.5 s + evaluations at 400, 425, 450, 475
    assert metrics.duration(3725) == '1h02m' and metrics.duration(59.6) == '1m00s'

def test_a_config_far_too_heavy_for_the_cpu_names_the_laptop_config_and_holds_its_out_dir(tmp_path, core_dataset):
    """Said before the first evaluation (minutes); meanwhile its out_dir is locked, and SIGKILL leaves no lock."""
    out_dir = tmp_path / 'out'
    run = LiveProcess([sys.executable, 'train.py', 'config/train_shakespeare_char.py', f'--dataset={core_dataset}',
                       '--device=cpu', f'--out_dir={out_dir}', '--block_size=64'])
    try:
        run.wait_for(r'^this run is long for a CPU: .*config/train_shakespeare_char_cpu\.py', timeout=300)
        assert 'step 0:' not in run.stdout
        section = re.search(r"\(README: '(.+)'\)$", run.stdout, re.M)[1]  # names a section that is there
        with open(os.path.join(REPO_ROOT, 'README.md')) as f:
            assert f'\n## {section}\n' in f.read()
        second = run_inproc('train.py', *core_train_args(out_dir))
        assert_user_error(second, f'another training (pid {run.pid})', str(out_dir))
        assert run.proc.poll() is None
    finally:
        run.kill()
    run_inproc('train.py', *core_train_args(out_dir, max_iters=2), check=True)

@pytest.mark.parametrize('before, after', [('adamw', 'muon'), ('muon', 'adamw')])
def test_resuming_with_the_other_optimizer_starts_its_state_afresh(tmp_path, core_dataset, before, after):
    out_dir = tmp_path / 'out'
    run_inproc('train.py', *core_train_args(out_dir, max_iters=2, optimizer=before), check=True)
    resumed = run_inproc('train.py', '--init_from=resume', f'--out_dir={out_dir}', '--device=cpu', '--max_iters=4',
                         f'--optimizer={after}', check=True).stdout
    assert f"optimizer: {after} now, the run had {before}: its optimizer state starts afresh" in resumed
    assert f"optimizer={after!r} from the command line (the run had {before!r})" in resumed
    assert sorted(iteration_losses(resumed)) == [3, 4]
    state = checkpoint.load(str(out_dir), 'latest.pt')
    assert state['iter_num'] == 5 and state['config']['optimizer'] == after
    assert ('muon' in state['optimizer']) == (after == 'muon')
