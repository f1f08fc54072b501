"""train.py under torchrun, as processes: 2 CPU processes over gloo. A Ctrl+C stops every rank at a
log step with one checkpoint from rank 0; a SIGTERM sent to the workers alone leaves torchrun exiting
0; a rank's one-line error stops the run."""
import contextlib
import glob
import os
import re
import signal
import sys

import pytest

from helpers import checkpoint
from conftest import REPO_ROOT, TORCHRUN, LiveProcess, checkpoint_files, core_train_args, iteration_losses

def torchrun(out_dir, **overrides):
    settings = dict(n_layer=1, n_embd=16, block_size=16, batch_size=2, gradient_accumulation_steps=2,
                    eval_interval=100000, eval_iters=1, max_iters=100000)
    # a session of its own: its process group stands for what a terminal's Ctrl+C reaches
    return LiveProcess([sys.executable, *TORCHRUN, *core_train_args(out_dir, **dict(settings, **overrides))],
                       new_session=True)


def children(pid):
    stats = {}
    for path in glob.glob('/proc/[0-9]*/stat'):
        with contextlib.suppress(OSError), open(path) as f:
            stats[int(path.split('/')[2])] = f.read()
    return [kid for kid, stat in stats.items() if int(stat.rsplit(')', 1)[1].split()[1]) == pid]


def finish(run):
    run.finish()
    # every process of the run is gone: torchrun and both ranks
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)
    return run.stdout, run.stderr


def stopped(run, out_dir, signal_name):
    """finish(run), stopped by signal_name: one stop line from rank 0 with the command that continues, and one
    checkpoint, rank 0's, of the iterations done. Returns the last iteration, stdout and stderr."""
    stdout, err = finish(run)
    stops = re.findall(rf'^stopped by {signal_name} after iteration (\d+); to continue:\ntorchrun --standalone '
                       r'--nproc_per_node=2 train.py .* --init_from=resume$', stdout, re.M)
    assert len(stops) == 1, stdout[-3000:] + err[-3000:]
    assert stdout.count('saving checkpoint to') == 1 and checkpoint_files(out_dir) == ['latest.pt'], stdout[-3000:]
    assert checkpoint.load(str(out_dir), 'latest.pt')['iter_num'] == int(stops[0]) + 1
    return int(stops[0]), stdout, err


def test_ctrl_c_stops_every_rank_at_a_log_step_and_sigterm_to_the_workers_lets_torchrun_exit_0(tmp_path, core_dataset):
    """The stop flag travels over the training backend, and only at log steps, where the loop waits
    for the device anyway. Resumed, the run goes on from there, until what a scheduler that signals
    the training processes (not the launcher) sees: a clean stop, a checkpoint, a successful torchrun."""
    out_dir = tmp_path / 'out'
    run = torchrun(out_dir, log_interval=4)
    run.wait_for(r'^iter \d+: loss', count=2)
    assert len(children(run.pid)) == 2
    # a terminal's Ctrl+C goes to its foreground process group: torchrun's. torchrun starts each
    # rank in a session of its own and forwards the signal to them.
    os.killpg(run.pid, signal.SIGINT)
    last, stdout, err = stopped(run, out_dir, 'SIGINT')
    assert 'at the next log step' in stdout and last % 4 == 0 and last >= 4, stdout[-2000:]
    assert sorted(iteration_losses(stdout)) == list(range(0, last + 1, 4))
    # no rank died of the signal or of a peer that went away
    for sign in ('KeyboardInterrupt', 'ChildFailedError', 'Connection closed', 'exitcode'):
        assert sign not in err, err[-3000:]
    # torchrun re-raises the signal it received once its workers have exited, so its own exit
    # status is 1 with a SignalException traceback: torch's launcher, not train.py
    assert run.proc.returncode == 0 or 'SignalException: Process' in err, err[-3000:]

    run = torchrun(out_dir, init_from='resume')
    run.wait_for(r'^iter \d+: loss', count=2)
    workers = children(run.pid)
    assert len(workers) == 2, workers
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    resumed_last, stdout, err = stopped(run, out_dir, 'SIGTERM')
    assert run.proc.returncode == 0 and 'Traceback' not in err, stdout[-2000:] + err[-3000:]
    assert sorted(iteration_losses(stdout)) == list(range(last + 1, resumed_last + 1))


def test_gradient_accumulation_error_under_torchrun(tmp_path, core_dataset):
    """The ranks print the one-line error and exit 1 (torchrun stops the other rank as soon as one has
    failed, so it may be cut short before printing it), no rank starts training, nothing is written;
    torchrun then reports the failure in its own words."""
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
