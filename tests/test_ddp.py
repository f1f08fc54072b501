"""train.py under torchrun: 2 CPU processes over gloo. A Ctrl+C stops every rank cleanly with
one checkpoint from rank 0; resuming under torchrun runs to the end; a signal sent to the
workers alone leaves torchrun exiting 0; the gradient accumulation check."""
import os
import re
import signal
import sys

import pytest

from helpers import checkpoint
from conftest import REPO_ROOT, LiveProcess, assert_user_error, checkpoint_files, core_train_args, run_inproc

ITER_LINE = re.compile(r'^iter (\d+): loss', re.M)


def torchrun(out_dir, **overrides):
    settings = dict(n_layer=1, n_embd=16, block_size=16, batch_size=2, gradient_accumulation_steps=2,
                    eval_interval=100000, eval_iters=1)
    settings.update(overrides)
    # a session of its own: its process group stands for what a terminal's Ctrl+C reaches
    return LiveProcess([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        'train.py', *core_train_args(out_dir, **settings)], new_session=True)


def children(pid):
    kids = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(')', 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def finish(run):
    run.finish()
    # every process of the run is gone: torchrun and both ranks
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)
    return run.stdout, run.stderr


def logged_iterations(stdout):
    return sorted(int(i) for i in ITER_LINE.findall(stdout))


def test_ctrl_c_stops_every_rank_then_resume_finishes(tmp_path, core_dataset):
    out_dir = tmp_path / 'out'
    run = torchrun(out_dir, max_iters=100000)
    run.wait_for(r'^iter \d+: loss', count=2)
    assert len(children(run.pid)) == 2
    # a terminal's Ctrl+C goes to its foreground process group: torchrun's. torchrun starts each
    # rank in a session of its own and forwards the signal to them.
    os.killpg(run.pid, signal.SIGINT)
    stdout, err = finish(run)
    stops = re.findall(r'^stopped by SIGINT after iteration (\d+); to continue:\ntorchrun --standalone '
                       r'--nproc_per_node=2 train.py .* --init_from=resume$', stdout, re.M)
    assert len(stops) == 1, stdout[-3000:] + err[-3000:]  # printed by rank 0 only
    stopped_at = int(stops[0]) + 1  # the checkpoint's iter_num: the iterations done
    assert stdout.count('saving checkpoint to') == 1  # one checkpoint, written by rank 0
    assert checkpoint_files(out_dir) == ['latest.pt']
    assert checkpoint.load(str(out_dir), 'latest.pt')['iter_num'] == stopped_at
    assert logged_iterations(stdout) == list(range(stopped_at))
    # no rank died of the signal or of a peer that went away
    for sign in ('KeyboardInterrupt', 'ChildFailedError', 'Connection closed', 'exitcode'):
        assert sign not in err, err[-3000:]
    # torchrun re-raises the signal it received once its workers have exited, so its own exit
    # status is 1 with a SignalException traceback: torch's launcher, not train.py
    assert run.proc.returncode == 0 or 'SignalException: Process' in err, err[-3000:]

    # resumed under torchrun, the run goes on from there and ends normally
    last = stopped_at + 2
    run = torchrun(out_dir, max_iters=last, init_from='resume')
    stdout, err = finish(run)
    assert run.proc.returncode == 0, stdout[-2000:] + err[-3000:]
    assert logged_iterations(stdout) == list(range(stopped_at, last + 1))
    assert stdout.count('saving checkpoint to') == 1
    assert checkpoint_files(out_dir) == ['latest.pt']
    assert checkpoint.load(str(out_dir), 'latest.pt')['iter_num'] == last + 1


def test_sigterm_to_the_workers_lets_torchrun_exit_0(tmp_path, core_dataset):
    """What a scheduler that signals the training processes (not the launcher) sees: a clean
    stop, a checkpoint, and a successful torchrun."""
    out_dir = tmp_path / 'out'
    run = torchrun(out_dir, max_iters=100000)
    run.wait_for(r'^iter \d+: loss', count=2)
    workers = children(run.pid)
    assert len(workers) == 2, workers
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    stdout, err = finish(run)
    assert run.proc.returncode == 0, stdout[-2000:] + err[-3000:]
    stops = re.findall(r'stopped by SIGTERM after iteration (\d+)', stdout)
    assert len(stops) == 1, stdout[-3000:]
    assert checkpoint.load(str(out_dir), 'latest.pt')['iter_num'] == int(stops[0]) + 1
    assert 'Traceback' not in err


def test_gradient_accumulation_must_divide_by_world_size(tmp_path, core_dataset, monkeypatch):
    """The check runs before the process group starts, on the variables torchrun sets."""
    for name, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='2', LOCAL_WORLD_SIZE='2').items():
        monkeypatch.setenv(name, value)
    out_dir = tmp_path / 'out'
    result = run_inproc('train.py', *core_train_args(out_dir, gradient_accumulation_steps=3))
    assert_user_error(result, 'gradient_accumulation_steps (3)', 'divisible', '--gradient_accumulation_steps=2')
    assert not out_dir.exists()


def test_gradient_accumulation_error_under_torchrun(tmp_path, core_dataset):
    """The same through torchrun: the ranks print the one-line error and exit 1 (torchrun stops
    the other rank as soon as one has failed, so it may be cut short before printing it), no rank
    starts training, nothing is written; torchrun then reports the failure in its own words."""
    out_dir = tmp_path / 'out'
    run = torchrun(out_dir, gradient_accumulation_steps=3, max_iters=5)
    stdout, err = finish(run)
    assert run.proc.returncode != 0
    message = ('error: gradient_accumulation_steps (3) must be divisible by the number of processes (2); '
               'e.g. --gradient_accumulation_steps=2')
    assert message in err, err[-3000:]
    assert os.path.join(REPO_ROOT, 'train.py') not in err  # no traceback through train.py
    assert 'iter 0' not in stdout
    assert not out_dir.exists()


def test_ranks_agree_to_stop_at_a_log_step(tmp_path, core_dataset):
    """The stop flag travels over the training backend, and only at log steps, where the loop
    waits for the device anyway: a Ctrl+C ends the run right after one."""
    out_dir = tmp_path / 'out'
    run = torchrun(out_dir, max_iters=100000, log_interval=4)
    run.wait_for(r'^iter \d+: loss', count=2)
    os.killpg(run.pid, signal.SIGINT)
    stdout, err = finish(run)
    assert 'at the next log step' in stdout
    stopped_at = checkpoint.load(str(out_dir), 'latest.pt')['iter_num']
    assert (stopped_at - 1) % 4 == 0 and stopped_at > 4, stdout[-2000:]


def test_eval_only_under_torchrun_shares_the_batches_and_gives_one_process_numbers(copy_run):
    """Every rank scores its share of the evaluation batches (none waits alone for rank 0 in a
    collective), and the numbers are the single process's."""
    step = re.compile(r'^step (\d+): train loss ([\d.]+), val loss ([\d.]+)', re.M)
    settings = dict(init_from='resume', eval_only=True, eval_iters=6, n_layer=None, n_embd=None, block_size=None,
                    batch_size=4, gradient_accumulation_steps=2)
    single = run_inproc('train.py', *core_train_args(copy_run, **settings), check=True).stdout
    run = LiveProcess([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                       'train.py', *core_train_args(copy_run, **settings)], new_session=True)
    stdout, err = finish(run)
    assert run.proc.returncode == 0, err[-3000:]
    assert step.findall(stdout) == step.findall(single) and len(step.findall(single)) == 1, (stdout, single)
