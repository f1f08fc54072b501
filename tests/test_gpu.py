"""The GPU tier: the CUDA and Apple MPS paths, run for real wherever such a device is present
(every dtype it supports, compile on and off, resume, device-resident batches, the KV cache,
torchrun over NCCL, FSDP, sampling, evaluation and export of a GPU-trained checkpoint, MFU).
On a machine without one, each test is skipped and says why."""
import math
import re

import pytest
import torch

from conftest import core_train_args, run_inproc, run_script
from helpers import checkpoint, data, hardware
from model import GPT, GPTConfig

DEVICE = 'cuda' if torch.cuda.is_available() else 'mps' if hardware.mps_available() else None
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no CUDA or Apple MPS device on this machine")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)")
ITER_LINE = re.compile(r'^iter (\d+): loss ([\d.]+), time ([\d.]+)ms, (mfu ([\d.]+)%|[\d,]+ tokens/s)', re.M)


def device_dtypes():
    if DEVICE == 'cuda':
        return ['float32', 'float16'] + (['bfloat16'] if hardware.gpu_has_bfloat16() else [])
    return ['float32', 'float16'] if DEVICE == 'mps' else []  # fp16 autocast runs on Apple GPUs


def gpu_args(out_dir, **overrides):
    return core_train_args(out_dir, **dict(dict(device=DEVICE, dtype='float32', compile=False), **overrides))


def losses(stdout):
    return {int(m[1]): float(m[2]) for m in ITER_LINE.finditer(stdout)}


@pytest.mark.parametrize('compile', [False, True])
@pytest.mark.parametrize('dtype', device_dtypes() or ['float32'])
def test_a_tiny_run_in_each_dtype_with_and_without_compile(tmp_path, core_dataset, dtype, compile):
    if compile and DEVICE != 'cuda':
        pytest.skip("torch.compile is tested on CUDA only")
    out = run_inproc('train.py', *gpu_args(tmp_path / 'out', dtype=dtype, compile=compile), check=True).stdout
    steps = losses(out)
    assert sorted(steps) == list(range(21)) and all(math.isfinite(v) for v in steps.values())
    assert steps[20] < steps[0] - 0.3, steps
    model = checkpoint.model_from_checkpoint(checkpoint.load(str(tmp_path / 'out')))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@needs_cuda
def test_cuda_graphs_with_one_micro_step(tmp_path, core_dataset):
    out = run_inproc('train.py', *gpu_args(tmp_path / 'out', compile=True, compile_mode='reduce-overhead',
                                           dtype=hardware.default_dtype('cuda')), check=True).stdout
    assert losses(out)[20] < losses(out)[0] - 0.3


def test_resume_on_the_device(tmp_path, core_dataset):
    """Ten iterations, a resume, ten more: the same losses as twenty in one go (float32; the GPU's
    kernels may reorder sums, hence the tolerance) and the CUDA random state restored."""
    straight = losses(run_inproc('train.py', *gpu_args(tmp_path / 'a', dropout=0.1), check=True).stdout)
    run_inproc('train.py', *gpu_args(tmp_path / 'b', dropout=0.1, max_iters=9), check=True)
    state = checkpoint.load(str(tmp_path / 'b'), 'latest.pt')
    assert ('cuda' in state['rng_states']) == (DEVICE == 'cuda')
    resumed = losses(run_inproc('train.py', *gpu_args(tmp_path / 'b', dropout=0.1, init_from='resume'),
                                check=True).stdout)
    assert sorted(resumed) == list(range(10, 21))
    for it in resumed:
        assert resumed[it] == pytest.approx(straight[it], rel=2e-3, abs=2e-3), it


@needs_cuda
def test_device_resident_batches_are_the_batches_read_from_disk(core_dataset):
    path = data.bin_path(core_dataset, 'train')
    tokens = data.load_to_device(path, data.token_dtype(None), 'cuda')
    for seed in (0, 1, 2):
        from_disk = data.get_batch(path, data.token_dtype(None), 8, 32, 'cuda', torch.Generator().manual_seed(seed))
        resident = data.get_resident_batch(tokens, 8, 32, torch.Generator().manual_seed(seed))
        for a, b in zip(from_disk, resident):
            assert a.device.type == b.device.type == 'cuda' and torch.equal(a, b)


@needs_cuda
def test_training_with_and_without_device_resident_data(tmp_path, core_dataset):
    resident = run_inproc('train.py', *gpu_args(tmp_path / 'on', data_on_device=True), check=True).stdout
    assert 'keeping the dataset in cuda' in resident
    on = losses(resident)
    off = losses(run_inproc('train.py', *gpu_args(tmp_path / 'off', data_on_device=False), check=True).stdout)
    assert on.keys() == off.keys()
    assert all(on[i] == pytest.approx(off[i], rel=2e-3, abs=2e-3) for i in on)


def gpt2_small(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=128, vocab_size=512, n_layer=4, n_head=4, n_embd=128)).eval().to(DEVICE)


def test_kv_cache_on_the_device_gives_the_tokens_of_the_full_context(monkeypatch):
    if DEVICE == 'cuda':  # train.py's runs in this process allow TF32, which is not float32's rounding
        monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    model = gpt2_small()
    idx = torch.randint(512, (4, 9), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.no_grad():
        cached = model.generate(idx, 150, top_k=1, use_cache=True)  # 150: past block_size too
        full = model.generate(idx, 150, top_k=1, use_cache=False)
    assert torch.equal(cached, full)


@pytest.mark.parametrize('dtype', [d for d in device_dtypes() if d != 'float32'] or ['bfloat16'])
def test_kv_cache_in_half_precision_reports_the_share_of_equal_tokens(dtype, record_property):
    """In bf16/fp16 the two paths round differently, so equality is not demanded: the share of
    equal greedy tokens is reported (pytest -rA, or the junit XML property)."""
    if dtype not in device_dtypes():
        pytest.skip(f"{DEVICE} cannot run {dtype}")
    model = gpt2_small()
    idx = torch.randint(512, (4, 9), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    _, ctx = hardware.setup(DEVICE, dtype)
    with torch.no_grad(), ctx:
        cached = model.generate(idx, 100, top_k=1, use_cache=True)[:, 9:]
        full = model.generate(idx, 100, top_k=1, use_cache=False)[:, 9:]
    share = (cached == full).float().mean().item()
    record_property(f'equal_greedy_tokens_{dtype}', share)
    print(f"{dtype} on {DEVICE}: {share:.1%} of greedy tokens equal with and without the KV cache")
    # the first token comes from the same whole-prompt forward on both paths; later ones may part
    assert cached.shape == full.shape and torch.equal(cached[:, 0], full[:, 0])


def test_per_sample_generators_on_the_device():
    """sample.py's rule on the GPU: sample k drawn with a device generator seeded seed + k equals
    the same sample drawn alone."""
    model = gpt2_small()
    idx = torch.randint(512, (1, 5), generator=torch.Generator().manual_seed(3)).to(DEVICE).expand(3, -1)

    def generators(first, count):
        return [torch.Generator(device=DEVICE).manual_seed(100 + k) for k in range(first, first + count)]
    with torch.no_grad():
        batched = model.generate(idx, 40, 1.0, 50, generators=generators(0, 3))
        alone = torch.cat([model.generate(idx[:1], 40, 1.0, 50, generators=generators(k, 1)) for k in range(3)])
    assert torch.equal(batched, alone) and not torch.equal(batched[0], batched[1])


def torchrun(*args):
    return run_script('-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={torch.cuda.device_count()}',
                      'train.py', *args, timeout=900)


@needs_cuda
def test_torchrun_over_nccl_on_every_gpu(tmp_path, core_dataset):
    n = torch.cuda.device_count()
    out = torchrun(*gpu_args(tmp_path / 'out', backend='nccl', gradient_accumulation_steps=2 * n)).stdout
    assert sorted(losses(out)) == list(range(21))
    assert checkpoint.load(str(tmp_path / 'out'), 'latest.pt')['iter_num'] == 21
    resumed = torchrun(*gpu_args(tmp_path / 'out', backend='nccl', gradient_accumulation_steps=2 * n,
                                 init_from='resume', max_iters=23)).stdout
    assert sorted(losses(resumed)) == [21, 22, 23]


@needs_cuda
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_fsdp_over_nccl(tmp_path, core_dataset, dtype):
    if dtype == 'bfloat16' and not hardware.gpu_has_bfloat16():
        pytest.skip("this GPU has no bfloat16")
    n = torch.cuda.device_count()
    out = torchrun(*gpu_args(tmp_path / 'out', fsdp=True, dtype=dtype, gradient_accumulation_steps=2 * n)).stdout
    steps = losses(out)
    assert sorted(steps) == list(range(21)) and steps[20] < steps[0] - 0.3
    single = run_inproc('train.py', *gpu_args(tmp_path / 'out', init_from='resume', max_iters=22), check=True)
    assert 21 in losses(single.stdout)  # the full-state checkpoint resumes in one process


@pytest.fixture(scope='module')
def gpu_run(tmp_path_factory, core_dataset):
    out_dir = tmp_path_factory.mktemp('gpu_run') / 'out'
    run_inproc('train.py', *gpu_args(out_dir, dtype=hardware.default_dtype(DEVICE)), check=True)
    return out_dir


def test_sample_evaluate_and_export_a_checkpoint_trained_on_the_device(gpu_run, tmp_path):
    for stream in (True, False):
        out = run_inproc('sample.py', f'--out_dir={gpu_run}', f'--device={DEVICE}', '--num_samples=2',
                         '--max_new_tokens=20', '--start=the', f'--stream={stream}', check=True).stdout
        samples = [s.strip('\n') for s in out.split("Overriding: stream = ")[1].split('\n', 1)[1].split(
            '---------------') if s.strip()]
        assert len(samples) == 2 and all(s.startswith('the') and len(s) == 23 for s in samples), samples
    evaluated = run_inproc('evaluate.py', f'--out_dir={gpu_run}', f'--device={DEVICE}', check=True).stdout
    assert re.search(r'^val: loss \d+\.\d+', evaluated, re.M)
    pytest.importorskip('onnxruntime')
    run_inproc('export_onnx.py', f'--out_dir={gpu_run}', f'--output={tmp_path / "m.onnx"}', check=True)
    pytest.importorskip('transformers')
    run_inproc('export_hf.py', f'--out_dir={gpu_run}', f'--output={tmp_path / "hf"}', check=True)


@needs_cuda
def test_bench_prints_a_finite_mfu():
    if hardware.peak_flops('cuda') is None:
        pytest.skip(f"no peak FLOP/s is listed for {torch.cuda.get_device_name()} in helpers/hardware.py")
    out = run_inproc('bench.py', '--real_data=False', '--n_layer=2', '--n_head=4', '--n_embd=256', '--block_size=256',
                     '--batch_size=8', '--bench_iters=5', '--warmup_iters=3', check=True).stdout
    mfu = float(re.search(r'MFU: ([\d.]+)%', out).group(1))
    assert 0 < mfu < 100

