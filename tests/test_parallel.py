"""The paths that GPUs take, run wherever the CPU can run them: the checks of device, processes and
compilation; the peak table behind MFU; device-resident batches; and under torchrun over gloo:
DDP and FSDP in 16-bit precision, compiled DDP, exact resume on every rank, evaluation shared
by FSDP's ranks, and a diverging run that stops every rank at once."""
import os
import re
import time

import numpy as np
import pytest
import torch

from conftest import core_train_args, iteration_losses, run_inproc, run_script
from helpers import UserError, data, hardware, parallel

TORCHRUN = ('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py')
STEP_LINE = re.compile(r'^step (\d+): train loss ([\d.]+), val loss ([\d.]+)', re.M)


def torchrun(out_dir, **settings):
    return run_script(*TORCHRUN, *core_train_args(out_dir, **settings), timeout=900)


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


# ----------------------------------------------------------------------------- torchrun over gloo

SHORT = dict(max_iters=6, eval_interval=3, gradient_accumulation_steps=2, learning_rate=3e-3)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_fsdp_in_16_bits_computes_what_ddp_computes(core_dataset, tmp_path, dtype):
    """FSDP keeps float32 parameters under the same autocast as DDP (a bf16 parameter policy would
    make the residual stream bf16), and float16's GradScaler works across its shards."""
    ddp = iteration_losses(torchrun(tmp_path / 'ddp', dtype=dtype, **SHORT).stdout)
    fsdp = torchrun(tmp_path / 'fsdp', dtype=dtype, fsdp=True, **SHORT)
    assert sorted(ddp) == sorted(iteration_losses(fsdp.stdout)) == list(range(7))
    assert all(iteration_losses(fsdp.stdout)[i] == pytest.approx(ddp[i], abs=1e-3) for i in ddp), (ddp, fsdp.stdout)
    state = torch.load(tmp_path / 'fsdp' / 'latest.pt', weights_only=True)
    assert all(v.dtype == torch.float32 for v in state['model'].values())
    assert (state['scaler'] != {}) == (dtype == 'float16')


def test_float16_resumes_exactly_with_its_scaler(tiny_run, tmp_path):
    settings = dict(dtype='float16', dropout=0.1, max_iters=8, eval_interval=4)
    straight = iteration_losses(run_inproc('train.py', *core_train_args(tmp_path / 'a', **settings), check=True).stdout)
    first = iteration_losses(run_inproc('train.py', *core_train_args(tmp_path / 'b', **dict(settings, max_iters=3)),
                              check=True).stdout)
    resumed = run_inproc('train.py', '--init_from=resume', f'--out_dir={tmp_path / "b"}', '--device=cpu',
                         '--max_iters=8', check=True)
    assert "dtype='float16'" in resumed.stdout  # the run's dtype, from its checkpoint
    assert {**first, **iteration_losses(resumed.stdout)} == straight and len(straight) == 9
    scalers = [torch.load(tmp_path / run / 'latest.pt', weights_only=True)['scaler'] for run in 'ab']
    assert scalers[0]['_growth_tracker'] > 4 and scalers[0] == scalers[1]  # counted on, not from 0


def test_ddp_resumes_exactly_on_every_rank(core_dataset, tmp_path):
    """Each rank's dropout masks continue after a resume: rank 1's state is saved too, and its
    masks shape the averaged gradients that rank 0's losses show."""
    settings = dict(SHORT, dropout=0.2, max_iters=8, eval_interval=4)
    straight = iteration_losses(torchrun(tmp_path / 'a', **settings).stdout)
    torchrun(tmp_path / 'b', **dict(settings, max_iters=3))
    assert len(torch.load(tmp_path / 'b' / 'latest.pt', weights_only=True)['rng_states_by_rank']) == 2
    resumed = iteration_losses(torchrun(tmp_path / 'b', **dict(settings, init_from='resume')).stdout)
    assert sorted(resumed) == list(range(4, 9)) and all(resumed[i] == straight[i] for i in resumed), (straight, resumed)


def test_fsdp_evaluation_shares_the_batches_and_gives_one_process_numbers(copy_run):
    settings = dict(init_from='resume', eval_only=True, eval_iters=5, n_layer=None, n_embd=None, block_size=None,
                    gradient_accumulation_steps=2)
    single = STEP_LINE.findall(run_inproc('train.py', *core_train_args(copy_run, **settings), check=True).stdout)
    sharded = STEP_LINE.findall(run_script(*TORCHRUN, *core_train_args(copy_run, fsdp=True, **settings)).stdout)
    assert len(single) == 1 and [(s, float(t), float(v)) for s, t, v in sharded] == \
        [(s, pytest.approx(float(t), abs=1e-4), pytest.approx(float(v), abs=1e-4)) for s, t, v in single]


def test_compiled_ddp_and_fsdp_train_as_eager_ddp(core_dataset, tmp_path):
    """Compiled under DDP (the whole model) and under FSDP (block by block, as its hooks stay out of
    the graphs): eager DDP's losses, to the compiler's rounding."""
    eager = iteration_losses(torchrun(tmp_path / 'eager', **SHORT).stdout)
    for fsdp in (False, True):
        compiled = iteration_losses(torchrun(tmp_path / f'compiled_{fsdp}', compile=True, fsdp=fsdp, **SHORT).stdout)
        assert sorted(compiled) == list(range(7))
        assert all(compiled[i] == pytest.approx(eager[i], abs=2e-3) for i in eager), (fsdp, eager, compiled)


def test_a_diverging_run_stops_every_rank_at_once(core_dataset, tmp_path):
    start = time.time()
    result = run_script(*TORCHRUN, *core_train_args(tmp_path / 'out', learning_rate=1e4, grad_clip=0.0,
                                                    max_iters=1000, gradient_accumulation_steps=2),
                        check=False, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and re.match(r'error: (val )?loss is (nan|inf)', errors[0]), result.stderr[-3000:]
    assert os.path.join('train.py') + '", line' not in result.stderr  # no traceback through train.py
    assert 'SIGABRT' not in result.stderr and 'exitcode  : -6' not in result.stderr
    assert time.time() - start < 120  # not a collective timing out
    assert not any(name.endswith('.pt') for name in os.listdir(tmp_path / 'out'))
