"""The GPU paths on the CPU: device, process and compile checks, MFU's peaks, resident batches; on 2 ranks over gloo,
FSDP, compiled and 16-bit runs train, resume and evaluate as DDP; under torchrun, every rank stops at once."""
import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import sys
import time

import numpy as np
import pytest
import torch

from conftest import (TORCHRUN, TORCHRUN_SETTINGS, LiveProcess, assert_user_error, checkpoint_files, core_train_args,
                      forked_ranks, free_port, iteration_losses, run_inproc, run_script, step_losses)
from helpers import UserError, checkpoint, data, hardware, parallel

NO_CUDA_GRAPHS = dict(compile_mode='max-autotune-no-cudagraphs')

@pytest.mark.parametrize('settings,fragments,fix', [
    (dict(fsdp=True, compile=True, compile_mode='reduce-overhead'), ['reduce-overhead', 'FSDP', 'no-cudagraphs'],
     NO_CUDA_GRAPHS),
    (dict(fsdp=True, compile=True, compile_mode='max-autotune'), ['max-autotune', 'FSDP'], NO_CUDA_GRAPHS),
    (dict(compile=True, compile_mode='reduce-overhead', gradient_accumulation_steps=4, optimizer='muon'),
     ['2 micro-steps'], dict(gradient_accumulation_steps=2)),
    (dict(device_type='cpu', backend='nccl', fsdp=True), ["backend 'nccl'", '--backend=gloo'], dict(backend='gloo')),
    (dict(device_type='cuda', backend='gloo', fsdp=True), ['nccl', '--backend=nccl'], dict(backend='nccl')),
    (dict(device_type='mps', backend='gloo'), ['mps', '--device=cpu'], dict(device_type='cpu')),
    (dict(backend='mpi'), ["unknown backend 'mpi'"], dict(backend='nccl')),
    (dict(compile_mode='fast'), ["unknown compile_mode 'fast'"], dict(compile_mode='default')),
    (dict(optimizer='sgd'), ["unknown optimizer 'sgd'", 'adamw or muon'], dict(optimizer='adamw')),
    (dict(optimizer='muon', fsdp=True), ["optimizer='muon'", 'fsdp=True', '--optimizer=adamw'],
     dict(optimizer='adamw')),
])
def test_what_cannot_work_under_torchrun_is_refused_up_front(monkeypatch, settings, fragments, fix):
    for name, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='2').items():
        monkeypatch.setenv(name, value)
    args = dict(dict(device_type='cuda', backend='nccl', fsdp=False, compile=False, compile_mode='default',
                     gradient_accumulation_steps=2), **settings)
    with pytest.raises(UserError) as refusal:
        parallel.check(**args)
    assert all(fragment in str(refusal.value) for fragment in fragments), str(refusal.value)
    parallel.check(**{**args, **fix})  # the fix the message asks for passes

@pytest.mark.parametrize('torchrun_variables, settings, fragments', [
    ({}, dict(fsdp=True), ['fsdp=True shards the model across processes started by torchrun']),
    (dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='2', LOCAL_WORLD_SIZE='2'), dict(gradient_accumulation_steps=3),
     ['gradient_accumulation_steps (3)', 'divisible by the number of processes (2)',
      '--gradient_accumulation_steps=2']),
])
def test_train_py_refuses_before_the_process_group_starts(monkeypatch, tmp_path, core_dataset, torchrun_variables,
                                                          settings, fragments):
    for name, value in torchrun_variables.items():
        monkeypatch.setenv(name, value)
    result = run_inproc('train.py', *core_train_args(tmp_path / 'out', **settings))
    assert assert_user_error(result, *fragments).startswith('error: ' + fragments[0])
    assert not (tmp_path / 'out').exists() and 'iter 0' not in result.stdout

@pytest.mark.parametrize('name,dtype,peak', [
    ('NVIDIA H200 NVL', 'bfloat16', 835e12), ('NVIDIA H200', 'bfloat16', 989e12),
    ('NVIDIA H800 PCIe', 'bfloat16', 756e12), ('NVIDIA H100 80GB HBM3', 'float16', 989e12),
    ('NVIDIA H100 80GB HBM3', 'float32', 495e12), ('NVIDIA A100-SXM4-40GB', 'float32', 156e12),
    ('Tesla V100-SXM2-16GB', 'float32', 15.7e12), ('Tesla T4', 'float16', 65e12),
    ('NVIDIA GeForce GTX 1080', 'float16', None),
])
def test_mfu_is_measured_against_the_peak_of_the_gpu_and_the_dtype(monkeypatch, name, dtype, peak):
    """And none for the CPU, which trains in float32 unless asked."""
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: name)
    assert hardware.peak_flops('cuda', dtype) == peak and hardware.peak_flops('cpu', dtype) is None
    assert hardware.default_dtype('cpu') == hardware.setup('cpu')[0] == 'float32'
    assert hardware.setup('cpu', dtype)[0] == dtype

def test_resident_batches_are_the_batches_read_from_disk_and_train_alike(tiny_run, core_dataset, tmp_path):
    """With activation checkpointing too: the recomputation gives the same numbers (compiled: test_model)."""
    path, dtype = data.bin_path(core_dataset, 'train'), data.token_dtype(None)
    tokens = data.load_to_device(path, dtype, 'cpu', chunk_tokens=1000)  # several chunks
    assert tokens.dtype == torch.int32
    assert torch.equal(tokens, torch.from_numpy(np.fromfile(path, dtype).astype(np.int32)))
    for seed in (0, 1, 2):
        from_disk = data.get_batch(path, dtype, 8, 32, 'cpu', torch.Generator().manual_seed(seed))
        resident = data.get_resident_batch(tokens, 8, 32, torch.Generator().manual_seed(seed))
        assert all(torch.equal(a, b) for a, b in zip(from_disk, resident))
    assert data.fits_on_device([path], dtype, 'cpu')
    assert not data.fits_on_device([path] * (data.RESIDENT_BYTES // os.path.getsize(path)), dtype, 'cpu')
    resident = run_inproc('train.py', *core_train_args(tmp_path / 'out', data_on_device=True,
                                                       activation_checkpointing=True), check=True).stdout
    assert 'keeping the dataset in cpu memory' in resident
    assert iteration_losses(resident) == iteration_losses(tiny_run.stdout) and len(iteration_losses(resident)) == 21

def flat(steps):
    """step_losses as {(step, 0 for train or 1 for val): loss}, which pytest.approx compares."""
    return {(step, k): loss for step, losses in steps.items() for k, loss in enumerate(losses)}

@pytest.mark.parametrize('reference, settings, tolerance', [
    # FSDP keeps float32 parameters under DDP's autocast (a bf16 parameter policy would make the residual stream
    # bf16); float16's GradScaler works across its shards, and without grad_clip hands its scale to fused AdamW
    (dict(dtype='bfloat16'), dict(dtype='bfloat16', fsdp=True), 1e-3),
    (dict(dtype='float16'), dict(dtype='float16', fsdp=True), 1e-3),
    (dict(dtype='float16', grad_clip=0.0), dict(dtype='float16', grad_clip=0.0, fsdp=True), 1e-3),
    # compiled: DDP's whole model, FSDP's block by block (its hooks outside the graphs), with activation
    # checkpointing's recomputation too; 9 blocks, past torch's recompile limit of 8, share one compiled code
    ({}, dict(compile=True, activation_checkpointing=True), 2e-3),
    ({}, dict(compile=True, fsdp=True), 2e-3),
    (dict(n_layer=9), dict(n_layer=9, compile=True, fsdp=True, activation_checkpointing=True), 2e-3),
    # activation checkpointing under FSDP: the recomputation draws the same dropout masks
    (dict(dropout=0.1), dict(dropout=0.1, fsdp=True, activation_checkpointing=True), 1e-4),
])
def test_fsdp_compiled_and_16_bit_runs_train_as_ddp(parallel_run, reference, settings, tolerance):
    # inherited by the forked ranks: a third compilation of one code fails, where torch would go on eagerly
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        ddp, run = parallel_run(**reference), parallel_run(**settings)
    assert sorted(ddp.losses) == sorted(run.losses) == list(range(9)) and run.losses[8] < run.losses[0]
    assert all(run.losses[i] == pytest.approx(ddp.losses[i], abs=tolerance) for i in ddp.losses), (ddp, run)
    assert sorted(run.steps) == [0, 3, 6] and flat(run.steps) == pytest.approx(flat(ddp.steps), abs=tolerance)
    state = torch.load(run.out_dir / 'latest.pt', weights_only=True)
    assert all(v.dtype == torch.float32 for v in state['model'].values())
    assert (state['scaler'] != {}) == (settings.get('dtype') == 'float16')

def test_fsdp_writes_ddps_checkpoint_and_either_resumes_exactly_and_evaluates_as_one(parallel_run, tmp_path):
    """FSDP's checkpoint: DDP's format and numbers, resumed in one process; rank 1's dropout state is saved. Each rank
    scores its share of the 3 evaluation batches (FSDP's ranks as many forwards), as one process."""
    straight, fsdp = parallel_run(dropout=0.1), parallel_run(dropout=0.1, fsdp=True, activation_checkpointing=True)
    a, b = (torch.load(run.out_dir / 'latest.pt', weights_only=True) for run in (straight, fsdp))
    assert sorted(a) == sorted(b) and list(a['model']) == list(b['model'])
    torch.testing.assert_close(b['model'], a['model'], rtol=0, atol=1e-5)
    assert a['optimizer']['param_groups'] == b['optimizer']['param_groups']
    torch.testing.assert_close(*({i: s['exp_avg'] for i, s in state['optimizer']['state'].items()} for state in (b, a)),
                               rtol=0, atol=1e-6)
    assert b['iter_num'] == a['iter_num'] == 9
    shutil.copytree(fsdp.out_dir, tmp_path / 'out')
    single = run_inproc('train.py', *core_train_args(tmp_path / 'out', init_from='resume', max_iters=9), check=True)
    assert re.search(r'^iter 9: loss', single.stdout, re.M)
    assert len(torch.load(straight.out_dir / 'ckpt.pt', weights_only=True)['rng_states_by_rank']) == 2
    def resumed(name, run=forked_ranks, **settings):  # from step 6's ckpt.pt: a copy without latest.pt
        shutil.copytree(straight.out_dir, tmp_path / name, ignore=shutil.ignore_patterns('latest.pt'))
        stdout = run(*core_train_args(tmp_path / name, init_from='resume', dropout=0.1, **TORCHRUN_SETTINGS,
                                      **settings)).stdout
        return iteration_losses(stdout), step_losses(stdout)
    ddp, ddp_steps = resumed('ddp')
    fsdp, fsdp_steps = resumed('fsdp', fsdp=True)
    _, fsdp_eval = resumed('fsdp_eval', fsdp=True, eval_only=True)
    _, single_eval = resumed('single_eval', lambda *args: run_inproc('train.py', *args, check=True), eval_only=True)
    assert ddp == {i: straight.losses[i] for i in (6, 7, 8)}, (straight.losses, ddp)
    assert sorted(fsdp) == [6, 7, 8] and all(fsdp[i] == pytest.approx(ddp[i], abs=1e-4) for i in fsdp), (ddp, fsdp)
    assert single_eval == ddp_steps == {6: straight.steps[6]}, (single_eval, ddp_steps)
    for sharded in (fsdp_steps, fsdp_eval):
        assert flat(sharded) == pytest.approx(flat({6: straight.steps[6]}), abs=1e-4), sharded

def test_float16_resumes_exactly_with_its_scaler_and_either_optimizer(tmp_path):
    """Muon: the GradScaler through the Muon + AdamW pair, both of whose states the checkpoint keeps."""
    straight = {}
    for optimizer in ('adamw', 'muon'):
        a, b = tmp_path / optimizer / 'a', tmp_path / optimizer / 'b'
        settings = dict(dtype='float16', dropout=0.1, max_iters=8, eval_interval=4, optimizer=optimizer)
        straight[optimizer] = iteration_losses(run_inproc('train.py', *core_train_args(a, **settings),
                                                          check=True).stdout)
        first = run_inproc('train.py', *core_train_args(b, **dict(settings, max_iters=3)), check=True).stdout
        # the dtype is the machine's unless the command says (a CPU's is float32): float16 asked for again
        resumed = run_inproc('train.py', '--init_from=resume', f'--out_dir={b}', '--device=cpu', '--dtype=float16',
                             '--max_iters=8', check=True).stdout
        # every iteration logged: a loss that is nan or inf stops the run, and none matches the log line
        assert {**iteration_losses(first), **iteration_losses(resumed)} == straight[optimizer]
        assert sorted(straight[optimizer]) == list(range(9)) and straight[optimizer][8] < straight[optimizer][0] - 0.3
        states = [torch.load(run / 'latest.pt', weights_only=True) for run in (a, b)]
        kept = {'muon', 'adamw'} if optimizer == 'muon' else {'state', 'param_groups'}
        assert all(set(state['optimizer']) == kept for state in states)
        assert optimizer == 'adamw' or all(states[1]['optimizer'][name]['state'] for name in kept)
        assert states[0]['scaler']['_growth_tracker'] > 4 and states[0]['scaler'] == states[1]['scaler']  # counted on
    assert straight['muon'] != straight['adamw']  # Muon really stepped

def test_a_diverging_run_stops_every_rank_at_once(core_dataset, tmp_path):
    start = time.time()
    result = run_script(*TORCHRUN, *core_train_args(tmp_path / 'out', learning_rate=1e4, grad_clip=0.0, max_iters=1000,
                                                    gradient_accumulation_steps=2), check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]
    assert re.match(r'error: (val )?loss is (nan|inf)', errors[0]) and 'train.py", line' not in result.stderr
    assert 'SIGABRT' not in result.stderr and 'exitcode  : -6' not in result.stderr
    assert time.time() - start < 120  # not a collective timing out
    assert not any(name.endswith('.pt') for name in os.listdir(tmp_path / 'out'))

def torchrun(out_dir, **overrides):
    """train.py under torchrun in a session of its own: its process group is what a terminal's Ctrl+C reaches."""
    settings = dict(n_layer=1, n_embd=16, block_size=16, batch_size=2, gradient_accumulation_steps=2,
                    eval_interval=100000, eval_iters=1, max_iters=100000)
    return LiveProcess([sys.executable, *TORCHRUN, *core_train_args(out_dir, **dict(settings, **overrides))],
                       new_session=True)

def children(pid):
    stats = {}
    for path in glob.glob('/proc/[0-9]*/stat'):
        with contextlib.suppress(OSError), open(path) as f:
            stats[int(path.split('/')[2])] = f.read()
    return [kid for kid, stat in stats.items() if int(stat.rsplit(')', 1)[1].split()[1]) == pid]

def stopped(run, out_dir, signal_name):
    """Once all are gone, rank 0's one stop line and one checkpoint: the last iteration, stdout, stderr."""
    run.finish()
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)
    stops = re.findall(rf'^stopped by {signal_name} after iteration (\d+); to continue:\ntorchrun --standalone '
                       r'--nproc_per_node=2 train.py .* --init_from=resume$', run.stdout, re.M)
    assert len(stops) == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count('saving checkpoint to') == 1 and checkpoint_files(out_dir) == ['latest.pt'], run.stdout
    assert checkpoint.load(str(out_dir), 'latest.pt')['iter_num'] == int(stops[0]) + 1
    return int(stops[0]), run.stdout, run.stderr

def test_ctrl_c_stops_every_rank_at_a_log_step_and_sigterm_to_the_workers_lets_torchrun_exit_0(tmp_path, core_dataset):
    """The stop flag travels over the training backend at log steps only, where the loop waits for the device anyway.
    Resumed, then SIGTERM to the ranks (as a scheduler sends it): a clean stop, a checkpoint, torchrun exits 0."""
    out_dir = tmp_path / 'out'
    run = torchrun(out_dir, log_interval=4)
    run.wait_for(r'^iter \d+: loss', count=2)
    assert len(children(run.pid)) == 2
    os.killpg(run.pid, signal.SIGINT)  # a terminal's Ctrl+C: torchrun's group, which forwards it to the ranks' own
    last, stdout, err = stopped(run, out_dir, 'SIGINT')
    assert 'at the next log step' in stdout and last % 4 == 0 and last >= 4, stdout[-2000:]
    assert sorted(iteration_losses(stdout)) == list(range(0, last + 1, 4))
    for sign in ('KeyboardInterrupt', 'ChildFailedError', 'Connection closed', 'exitcode'):  # no rank died of it
        assert sign not in err, err[-3000:]
    # torchrun re-raises the signal once its workers have exited: exit 1 with its own SignalException traceback
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

def test_only_the_wait_for_rank_0s_save_is_long(monkeypatch):
    """Collectives keep the default timeout (the others stop soon when a rank dies); the save's group has an hour."""
    import torch.distributed as dist
    for name, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(parallel, '_save_group', None)
    used = []
    monkeypatch.setattr(dist, 'all_reduce', lambda *args, group=None, **kwargs: used.append(group))
    try:
        parallel.start('gloo', 'cpu')
        groups = (dist.group.WORLD, parallel._save_group)
        timeouts = [g._get_backend(torch.device('cpu')).options._timeout for g in groups]
        assert timeouts == [dist.distributed_c10d._get_default_timeout('gloo'), parallel.SAVE_TIMEOUT]
        parallel.stop_together(None, 'cpu')
        parallel.stop_together(None, 'cpu', after_save=True)
        assert used == [None, parallel._save_group]
    finally:
        dist.destroy_process_group()

@pytest.mark.parametrize('rank_1, refused', [((21, 1.5, 30.0), False), ((11, 1.7, 12.0), True),
                                             ((21, 1.6, 30.0), True), ((21, 1.5, None), True)])
def test_every_rank_must_resume_from_the_same_checkpoint(monkeypatch, rank_1, refused):
    """A node whose out_dir is its own disk reads an older checkpoint, or another run's: named in one line."""
    state = dict(iter_num=21, best_val_loss=torch.tensor(1.5), elapsed_seconds=30.0)
    monkeypatch.setattr(parallel, 'all_objects', lambda mine: [mine, ('node-b', *rank_1)])
    with pytest.raises(UserError) if refused else contextlib.nullcontext() as refusal:
        parallel._same_checkpoint(state, 'cpu')
    assert not refused or str(refusal.value).startswith(
        f"rank 1 on node node-b resumes from another checkpoint (after iteration {rank_1[0] - 1}) than rank 0 on node "
        f"{socket.gethostname()} (after iteration 20)") and 'storage that every node sees' in str(refusal.value)
