"""The paths that GPUs take, run wherever the CPU can run them: the checks of device, processes and
compilation; the peak table behind MFU; device-resident batches; and on 2 ranks over gloo: FSDP
(with activation checkpointing), compiled and 16-bit runs training as DDP, FSDP writing DDP's
checkpoints, exact resume on every rank, evaluation shared by the ranks, and a diverging run that
stops every rank at once."""
import os
import re
import shutil
import socket
import time

import numpy as np
import pytest
import torch

from conftest import (STEP_LINE, TORCHRUN, TORCHRUN_SETTINGS, assert_user_error, core_train_args, forked_ranks,
                      iteration_losses, run_inproc, run_script)
from helpers import UserError, data, hardware, parallel


# ----------------------------------------------------------------------------- checks, without processes

NO_CUDA_GRAPHS = dict(compile_mode='max-autotune-no-cudagraphs')


@pytest.mark.parametrize('settings,fragments,fix', [
    (dict(fsdp=True, compile=True, compile_mode='reduce-overhead'), ['reduce-overhead', 'FSDP', 'no-cudagraphs'],
     NO_CUDA_GRAPHS),
    (dict(fsdp=True, compile=True, compile_mode='max-autotune'), ['max-autotune', 'FSDP'], NO_CUDA_GRAPHS),
    (dict(compile=True, compile_mode='reduce-overhead', gradient_accumulation_steps=4), ['2 micro-steps'],
     dict(gradient_accumulation_steps=2)),
    (dict(device_type='cpu', backend='nccl'), ["backend 'nccl'", '--backend=gloo'], dict(backend='gloo')),
    (dict(device_type='cuda', backend='gloo', fsdp=True), ['nccl', '--backend=nccl'], dict(backend='nccl')),
    (dict(device_type='mps', backend='gloo'), ['mps', '--device=cpu'], dict(device_type='cpu')),
    (dict(backend='mpi'), ["unknown backend 'mpi'"], dict(backend='nccl')),
    (dict(compile_mode='fast'), ["unknown compile_mode 'fast'"], dict(compile_mode='default')),
    (dict(gradient_accumulation_steps=3), ['gradient_accumulation_steps (3)', '--gradient_accumulation_steps=2'],
     dict(gradient_accumulation_steps=2)),
    (dict(optimizer='sgd'), ["unknown optimizer 'sgd'", 'adamw or muon'], dict(optimizer='adamw')),
    (dict(optimizer='muon', fsdp=True), ["optimizer='muon'", 'fsdp=True', '--optimizer=adamw'],
     dict(optimizer='adamw')),
])
def test_what_cannot_work_under_torchrun_is_refused_up_front(monkeypatch, settings, fragments, fix):
    for name, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='2').items():
        monkeypatch.setenv(name, value)
    args = dict(device_type='cuda', backend='nccl', fsdp=False, compile=False, compile_mode='default',
                gradient_accumulation_steps=2)
    args.update(settings)
    with pytest.raises(UserError) as refusal:
        parallel.check(**args)
    for fragment in fragments:
        assert fragment in str(refusal.value), str(refusal.value)
    parallel.check(**{**args, **fix})  # what the message asks for passes


@pytest.mark.parametrize('torchrun_variables, settings, fragments', [
    ({}, dict(fsdp=True), ['fsdp=True shards the model across processes started by torchrun']),
    (dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='2', LOCAL_WORLD_SIZE='2'), dict(gradient_accumulation_steps=3),
     ['gradient_accumulation_steps (3)', 'divisible', '--gradient_accumulation_steps=2']),
])
def test_train_py_refuses_before_the_process_group_starts(monkeypatch, tmp_path, core_dataset, torchrun_variables,
                                                          settings, fragments):
    for name, value in torchrun_variables.items():
        monkeypatch.setenv(name, value)
    result = run_inproc('train.py', *core_train_args(tmp_path / 'out', **settings))
    assert assert_user_error(result, *fragments).startswith('error: ' + fragments[0])
    assert not (tmp_path / 'out').exists()


def test_what_can_work_passes_the_checks(monkeypatch):
    """FSDP on GPUs with a compile mode without CUDA graphs, FSDP on the CPU (its own mesh, see
    parallel.wrap; float16 included, see the torchrun tests), Muon under DDP."""
    for name, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='2').items():
        monkeypatch.setenv(name, value)
    parallel.check('cuda', 'nccl', True, True, 'max-autotune-no-cudagraphs', 2)
    parallel.check('cpu', 'gloo', True, False, 'default', 2)
    parallel.check('cuda', 'nccl', False, True, 'reduce-overhead', 2, optimizer='muon')


@pytest.mark.parametrize('name,dtype,peak', [
    ('NVIDIA H200 NVL', 'bfloat16', 835e12), ('NVIDIA H200', 'bfloat16', 989e12),
    ('NVIDIA H800 PCIe', 'bfloat16', 756e12), ('NVIDIA H100 80GB HBM3', 'float16', 989e12),
    ('NVIDIA H100 80GB HBM3', 'float32', 495e12), ('NVIDIA A100-SXM4-40GB', 'float32', 156e12),
    ('Tesla V100-SXM2-16GB', 'float32', 15.7e12), ('Tesla T4', 'float16', 65e12), ('NVIDIA GeForce GTX 1080', 'float16', None),
])
def test_mfu_is_measured_against_the_peak_of_the_gpu_and_the_dtype(monkeypatch, name, dtype, peak):
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: name)
    assert hardware.peak_flops('cuda', dtype) == peak
    assert hardware.peak_flops('cpu', dtype) is None


def test_the_cpu_trains_in_float32_unless_asked():
    assert hardware.default_dtype('cpu') == 'float32'
    assert hardware.setup('cpu')[0] == 'float32'
    assert hardware.setup('cpu', 'bfloat16')[0] == 'bfloat16'


# ----------------------------------------------------------------------------- device-resident batches

def test_resident_batches_are_the_batches_read_from_disk(core_dataset):
    path = data.bin_path(core_dataset, 'train')
    dtype = data.token_dtype(None)
    tokens = data.load_to_device(path, dtype, 'cpu', chunk_tokens=1000)  # several chunks
    assert tokens.dtype == torch.int32 and torch.equal(tokens, torch.from_numpy(np.fromfile(path, dtype).astype(np.int32)))
    for seed in (0, 1, 2):
        from_disk = data.get_batch(path, dtype, 8, 32, 'cpu', torch.Generator().manual_seed(seed))
        resident = data.get_resident_batch(tokens, 8, 32, torch.Generator().manual_seed(seed))
        assert all(torch.equal(a, b) for a, b in zip(from_disk, resident))
    assert data.fits_on_device([path], dtype, 'cpu')
    assert not data.fits_on_device([path] * (data.RESIDENT_BYTES // os.path.getsize(path)), dtype, 'cpu')


def test_training_on_resident_batches_equals_training_from_disk(tiny_run, tmp_path):
    resident = run_inproc('train.py', *core_train_args(tmp_path / 'out', data_on_device=True), check=True).stdout
    assert 'keeping the dataset in cpu memory' in resident
    assert iteration_losses(resident) == iteration_losses(tiny_run.stdout) and len(iteration_losses(resident)) == 21


# ----------------------------------------------------------------------------- 2 ranks over gloo

@pytest.mark.parametrize('reference, settings, tolerance', [
    # FSDP keeps float32 parameters under the same autocast as DDP (a bf16 parameter policy would make the
    # residual stream bf16), and float16's GradScaler works across its shards
    (dict(dtype='bfloat16'), dict(dtype='bfloat16', fsdp=True), 1e-3),
    (dict(dtype='float16'), dict(dtype='float16', fsdp=True), 1e-3),
    # without grad_clip's unscale_, the GradScaler hands its scale to fused AdamW's step, on FSDP's shards too
    (dict(dtype='float16', grad_clip=0.0), dict(dtype='float16', grad_clip=0.0, fsdp=True), 1e-3),
    # compiled: under DDP the whole model, under FSDP block by block (its hooks stay out of the graphs), with and
    # without activation checkpointing, whose recomputation compiles too; 9 blocks, more than torch's recompile
    # limit of 8, share one compiled code
    ({}, dict(compile=True, activation_checkpointing=True), 2e-3),
    ({}, dict(compile=True, fsdp=True), 2e-3),
    (dict(n_layer=9), dict(n_layer=9, compile=True, fsdp=True, activation_checkpointing=True), 2e-3),
    # activation checkpointing under FSDP: the recomputation draws the same dropout masks
    (dict(dropout=0.1), dict(dropout=0.1, fsdp=True, activation_checkpointing=True), 1e-4),
])
def test_fsdp_compiled_and_16_bit_runs_train_as_ddp(parallel_run, reference, settings, tolerance):
    # inherited by the forked ranks: a compiled run fails at a third compilation of one code (training's, then
    # evaluation's without gradients), where torch would go on eagerly past its limit
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        ddp, run = parallel_run(**reference), parallel_run(**settings)
    assert sorted(ddp.losses) == sorted(run.losses) == list(range(9)) and run.losses[8] < run.losses[0]
    assert all(run.losses[i] == pytest.approx(ddp.losses[i], abs=tolerance) for i in ddp.losses), (ddp, run)
    assert [(s, pytest.approx(float(t), abs=tolerance), pytest.approx(float(v), abs=tolerance))
            for s, t, v in ddp.steps] == [(s, float(t), float(v)) for s, t, v in run.steps] and len(run.steps) == 3
    state = torch.load(run.out_dir / 'latest.pt', weights_only=True)
    assert all(v.dtype == torch.float32 for v in state['model'].values())
    assert (state['scaler'] != {}) == (settings.get('dtype') == 'float16')


def test_fsdp_writes_ddps_checkpoint_which_resumes_in_one_process(parallel_run, tmp_path):
    """The same full-state format, and numbers, as DDP's (a DDP checkpoint resumed under FSDP: below)."""
    ddp, fsdp = parallel_run(dropout=0.1), parallel_run(dropout=0.1, fsdp=True, activation_checkpointing=True)
    a, b = (torch.load(run.out_dir / 'latest.pt', weights_only=True) for run in (ddp, fsdp))
    assert sorted(a) == sorted(b) and list(a['model']) == list(b['model'])
    for name, tensor in a['model'].items():
        torch.testing.assert_close(b['model'][name], tensor, rtol=0, atol=1e-5)
    assert a['optimizer']['param_groups'] == b['optimizer']['param_groups']
    assert sorted(a['optimizer']['state']) == sorted(b['optimizer']['state'])
    for i, state in a['optimizer']['state'].items():
        torch.testing.assert_close(b['optimizer']['state'][i]['exp_avg'], state['exp_avg'], rtol=0, atol=1e-6)
    assert b['iter_num'] == a['iter_num'] == 9
    shutil.copytree(fsdp.out_dir, tmp_path / 'out')
    single = run_inproc('train.py', *core_train_args(tmp_path / 'out', init_from='resume', max_iters=9), check=True)
    assert re.search(r'^iter 9: loss', single.stdout, re.M)


@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])  # muon: the GradScaler through the Muon + AdamW pair
def test_float16_resumes_exactly_with_its_scaler(tiny_run, tmp_path, optimizer):
    settings = dict(dtype='float16', dropout=0.1, max_iters=8, eval_interval=4, optimizer=optimizer)
    straight = iteration_losses(run_inproc('train.py', *core_train_args(tmp_path / 'a', **settings), check=True).stdout)
    first = iteration_losses(run_inproc('train.py', *core_train_args(tmp_path / 'b', **dict(settings, max_iters=3)),
                              check=True).stdout)
    # the dtype is the machine's unless the command says (a CPU's is float32): float16 asked for again
    resumed = run_inproc('train.py', '--init_from=resume', f'--out_dir={tmp_path / "b"}', '--device=cpu',
                         '--dtype=float16', '--max_iters=8', check=True)
    # every iteration logged: a loss that is nan or inf stops the run, and none matches ITER_LINE
    assert {**first, **iteration_losses(resumed.stdout)} == straight and len(straight) == 9
    assert straight[8] < straight[0] - 0.3, straight
    states = [torch.load(tmp_path / run / 'latest.pt', weights_only=True) for run in 'ab']
    assert all(('muon' in state['optimizer']) == (optimizer == 'muon') for state in states)
    scalers = [state['scaler'] for state in states]
    assert scalers[0]['_growth_tracker'] > 4 and scalers[0] == scalers[1]  # counted on, not from 0


def test_a_ddp_run_resumes_exactly_and_evaluates_as_one_process(parallel_run, tmp_path):
    """Each rank's dropout masks continue after a resume: rank 1's state is saved too, and its masks
    shape the averaged gradients that rank 0's losses show; resumed under FSDP, the same training to
    rounding. Every rank scores its share of the 3 evaluation batches (under FSDP all run as many
    forwards, as the shards meet in each), and the numbers are one process's."""
    straight = parallel_run(dropout=0.1)
    assert len(torch.load(straight.out_dir / 'ckpt.pt', weights_only=True)['rng_states_by_rank']) == 2

    def resumed(name, run=forked_ranks, **settings):  # from step 6's ckpt.pt: a copy without latest.pt
        shutil.copytree(straight.out_dir, tmp_path / name, ignore=shutil.ignore_patterns('latest.pt'))
        stdout = run(*core_train_args(tmp_path / name, init_from='resume', dropout=0.1, **TORCHRUN_SETTINGS,
                                      **settings)).stdout
        return iteration_losses(stdout), [(int(s), float(t), float(v)) for s, t, v in STEP_LINE.findall(stdout)]
    ddp, ddp_steps = resumed('ddp')
    fsdp, fsdp_steps = resumed('fsdp', fsdp=True)
    _, fsdp_eval = resumed('fsdp_eval', fsdp=True, eval_only=True)
    _, single_eval = resumed('single_eval', lambda *args: run_inproc('train.py', *args, check=True), eval_only=True)
    assert ddp == {i: straight.losses[i] for i in (6, 7, 8)}, (straight.losses, ddp)
    assert sorted(fsdp) == [6, 7, 8] and all(fsdp[i] == pytest.approx(ddp[i], abs=1e-4) for i in fsdp), (ddp, fsdp)
    step, train, val = straight.steps[2]
    assert single_eval == ddp_steps == [(6, float(train), float(val))] and step == '6', (single_eval, ddp_steps)
    for sharded in (fsdp_steps, fsdp_eval):
        assert sharded == [(6, pytest.approx(float(train), abs=1e-4), pytest.approx(float(val), abs=1e-4))]


def test_a_diverging_run_stops_every_rank_at_once(core_dataset, tmp_path):
    start = time.time()
    result = run_script(*TORCHRUN, *core_train_args(tmp_path / 'out', learning_rate=1e4, grad_clip=0.0, max_iters=1000,
                                                    gradient_accumulation_steps=2), check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and re.match(r'error: (val )?loss is (nan|inf)', errors[0]), result.stderr[-3000:]
    assert os.path.join('train.py') + '", line' not in result.stderr  # no traceback through train.py
    assert 'SIGABRT' not in result.stderr and 'exitcode  : -6' not in result.stderr
    assert time.time() - start < 120  # not a collective timing out
    assert not any(name.endswith('.pt') for name in os.listdir(tmp_path / 'out'))


# ----------------------------------------------------------------------------- waits and checks between ranks

def test_only_the_wait_for_rank_0s_save_is_long(monkeypatch):
    """The run's collectives keep the backend's default timeout, so that the others stop soon when a
    rank dies; the wait for rank 0's save, on a group of its own, has an hour."""
    import torch.distributed as dist
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    for name, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                            MASTER_PORT=str(port)).items():
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
    if not refused:
        parallel._same_checkpoint(state, 'cpu')
        return
    with pytest.raises(UserError) as refusal:
        parallel._same_checkpoint(state, 'cpu')
    assert str(refusal.value).startswith(f"rank 1 on node node-b resumes from another checkpoint (after iteration "
                                         f"{rank_1[0] - 1}) than rank 0 on node {socket.gethostname()} (after "
                                         "iteration 20)") and 'storage that every node sees' in str(refusal.value)
