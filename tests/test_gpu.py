"""The GPU tier: the CUDA and Apple MPS paths, run for real wherever such a device is present. It
proves what the CPU suite cannot: every dtype the device runs, compiled runs that really compiled
(graphs counted), exact resume with the float16 scaler and the device's random state,
device-resident batches, the KV cache, torchrun over NCCL with DDP and FSDP (compiled, resumed),
sampling, evaluation and export of a GPU-trained checkpoint, and GPT-2 124M's MFU. On a machine
without such a device each test is skipped and says why; `python benchmarks/gpu_check.py` runs
this tier and the GPU benchmarks in one command."""
import math
import os
import re

import pytest
import torch

from conftest import compiled_graphs, core_train_args, run_inproc, run_script
from helpers import checkpoint, data, hardware
from model import GPT, GPTConfig

DEVICE = 'cuda' if torch.cuda.is_available() else 'mps' if hardware.mps_available() else None
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no CUDA or Apple MPS device on this machine")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two or more NVIDIA GPUs")
ITER_LINE = re.compile(r'^iter (\d+): loss ([\d.]+), time ([\d.]+)ms, (mfu ([\d.]+)%|[\d,]+ tokens/s)', re.M)


def device_dtypes():
    if DEVICE == 'cuda':
        return ['float32', 'float16'] + (['bfloat16'] if hardware.gpu_has_bfloat16() else [])
    return ['float32', 'float16'] if DEVICE == 'mps' else []  # fp16 autocast runs on Apple GPUs


def gpu_args(out_dir, **overrides):
    return core_train_args(out_dir, **dict(dict(device=DEVICE, dtype='float32', compile=False), **overrides))


def losses(stdout):
    return {int(m[1]): float(m[2]) for m in ITER_LINE.finditer(stdout)}


def close(a, b, tolerance=2e-3):
    """The same losses up to the GPU's reordered sums (and, compiled, fused kernels)."""
    return a.keys() == b.keys() and all(a[i] == pytest.approx(b[i], rel=tolerance, abs=tolerance) for i in a)


@pytest.mark.parametrize('compile', [False, True])
@pytest.mark.parametrize('dtype', device_dtypes() or ['float32'])
def test_a_tiny_run_in_each_dtype_with_and_without_compile(tmp_path, core_dataset, dtype, compile):
    if compile and (DEVICE != 'cuda' or dtype != hardware.default_dtype('cuda')):
        pytest.skip("torch.compile is tested on CUDA, in the GPU's default dtype (the CPU suite compiles float32)")
    result, graphs = compiled_graphs('train.py', *gpu_args(tmp_path / 'out', dtype=dtype, compile=compile))
    assert (graphs > 0) == compile, graphs  # a compiled run compiled; an eager one did not
    steps = losses(result.stdout)
    assert sorted(steps) == list(range(21)) and all(math.isfinite(v) for v in steps.values())
    assert steps[20] < steps[0] - 0.3, steps
    model = checkpoint.model_from_checkpoint(checkpoint.load(str(tmp_path / 'out')))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@needs_cuda
def test_cuda_graphs_with_one_micro_step(tmp_path, core_dataset):
    result, graphs = compiled_graphs('train.py', *gpu_args(tmp_path / 'out', compile=True, compile_mode='reduce-overhead',
                                                           dtype=hardware.default_dtype('cuda')))
    assert graphs > 0 and losses(result.stdout)[20] < losses(result.stdout)[0] - 0.3


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_resume_on_the_device(tmp_path, core_dataset, dtype):
    """Ten iterations, a resume, ten more: the losses of twenty in one go, with the device's random
    state (dropout) and, in float16, the GradScaler's state carried over."""
    settings = dict(dropout=0.1, dtype=dtype)
    straight = losses(run_inproc('train.py', *gpu_args(tmp_path / 'a', **settings), check=True).stdout)
    run_inproc('train.py', *gpu_args(tmp_path / 'b', max_iters=9, **settings), check=True)
    state = checkpoint.load(str(tmp_path / 'b'), 'latest.pt')
    assert DEVICE in state['rng_states'] and (state['scaler'] != {}) == (dtype == 'float16')
    resumed = losses(run_inproc('train.py', '--init_from=resume', f'--out_dir={tmp_path / "b"}', f'--device={DEVICE}',
                                '--max_iters=20', '--compile=False', f'--dtype={dtype}', check=True).stdout)
    assert close(resumed, {i: straight[i] for i in range(10, 21)})
    scalers = [torch.load(tmp_path / run / 'latest.pt', weights_only=True)['scaler'] for run in 'ab']
    assert scalers[0] == scalers[1]


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
    off = run_inproc('train.py', *gpu_args(tmp_path / 'off', data_on_device=False), check=True).stdout
    assert close(losses(resident), losses(off))


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
    record_property(f'equal greedy tokens, {dtype}', f"{share:.1%}")
    # the first token comes from the same whole-prompt forward on both paths; later ones may part
    assert cached.shape == full.shape and torch.equal(cached[:, 0], full[:, 0])


def test_per_sample_generators_on_the_device(monkeypatch):
    """sample.py's rule on the GPU: sample k drawn with a device generator seeded seed + k equals
    the same sample drawn alone (in float32 proper: TF32 may round a batch of another size otherwise)."""
    if DEVICE == 'cuda':
        monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    model = gpt2_small()
    idx = torch.randint(512, (1, 5), generator=torch.Generator().manual_seed(3)).to(DEVICE).expand(3, -1)

    def generators(first, count):
        return [torch.Generator(device=DEVICE).manual_seed(100 + k) for k in range(first, first + count)]
    with torch.no_grad():
        batched = model.generate(idx, 40, 1.0, 50, generators=generators(0, 3))
        alone = torch.cat([model.generate(idx[:1], 40, 1.0, 50, generators=generators(k, 1)) for k in range(3)])
    assert torch.equal(batched, alone) and not torch.equal(batched[0], batched[1])


def torchrun(*args, processes=None):
    return run_script('-m', 'torch.distributed.run', '--standalone',
                      f'--nproc_per_node={processes or torch.cuda.device_count()}', 'train.py', *args, timeout=900)


@needs_cuda
@pytest.mark.parametrize('fsdp', [False, True])
def test_torchrun_over_nccl_compiled_and_resumed(tmp_path, core_dataset, fsdp):
    """DDP and FSDP over NCCL on every GPU, compiled, then resumed under torchrun and in one process:
    the run learns and goes on where it stopped (the in-process tests count compiled graphs; these
    processes are torchrun's)."""
    n = torch.cuda.device_count()
    settings = dict(backend='nccl', fsdp=fsdp, dtype=hardware.default_dtype('cuda'), gradient_accumulation_steps=2 * n)
    compiled = losses(torchrun(*gpu_args(tmp_path / 'out', compile=True, **settings)).stdout)
    assert sorted(compiled) == list(range(21)) and compiled[20] < compiled[0] - 0.3
    assert checkpoint.load(str(tmp_path / 'out'), 'latest.pt')['iter_num'] == 21
    resumed = torchrun(*gpu_args(tmp_path / 'out', init_from='resume', max_iters=23, compile=True, **settings)).stdout
    assert sorted(losses(resumed)) == [21, 22, 23]
    single = run_inproc('train.py', '--init_from=resume', f'--out_dir={tmp_path / "out"}', '--device=cuda',
                        '--compile=False', '--max_iters=24', '--gradient_accumulation_steps=2', check=True)
    assert sorted(losses(single.stdout)) == [24]


@needs_two_gpus
def test_two_gpus_learn_as_one_with_the_same_total_batch(tmp_path, core_dataset):
    """Other batches (each rank draws its own), the same tokens per iteration: the val loss lands alike."""
    step = re.compile(r'^step 20: train loss [\d.]+, val loss ([\d.]+)', re.M)
    one = torchrun(*gpu_args(tmp_path / 'one', backend='nccl', gradient_accumulation_steps=2), processes=1).stdout
    two = torchrun(*gpu_args(tmp_path / 'two', backend='nccl', gradient_accumulation_steps=2), processes=2).stdout
    assert float(step.search(two)[1]) == pytest.approx(float(step.search(one)[1]), abs=0.15), (one, two)


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
        assert len(samples) == 2 and all(s.startswith('the') and 3 < len(s) <= 23 for s in samples), samples
    evaluated = run_inproc('evaluate.py', f'--out_dir={gpu_run}', f'--device={DEVICE}', check=True).stdout
    assert re.search(r'^val: loss \d+\.\d+', evaluated, re.M)
    pytest.importorskip('onnxruntime')
    run_inproc('export_onnx.py', f'--out_dir={gpu_run}', f'--output={tmp_path / "m.onnx"}', check=True)
    pytest.importorskip('transformers')
    run_inproc('export_hf.py', f'--out_dir={gpu_run}', f'--output={tmp_path / "hf"}', check=True)


@needs_cuda
def test_compiled_sampling_gives_the_greedy_tokens_of_eager(gpu_run):
    greedy = [f'--out_dir={gpu_run}', '--device=cuda', '--dtype=float32', '--num_samples=2', '--max_new_tokens=40',
              '--top_k=1', '--start=the']
    eager = run_inproc('sample.py', *greedy, check=True).stdout.split("Overriding: start = 'the'")[1]
    compiled, graphs = compiled_graphs('sample.py', *greedy, '--compile=True')
    assert graphs > 0 and compiled.stdout.split('Overriding: compile = True')[1] == eager


@needs_cuda
def test_gpt2_124m_mfu_is_plausible(record_property):
    """GPT-2 124M, batch 12 x 1024, the GPU's default dtype, compiled, never falling back to eager. nanoGPT reports
    about 40% on an A100 (its figure); an H100's or H200's dense bf16 peak is about three times an A100's for less
    than twice the memory bandwidth (vendor data sheets), so the floor there is 20%, half of that, an assumption
    to check against the first measured run; beyond 80% the peak is wrong. Its peak memory stays under 40 GB, where
    nanoGPT trains it on an A100 40GB."""
    peak = hardware.peak_flops('cuda', hardware.default_dtype('cuda'))
    if peak is None:
        pytest.skip(f"no peak FLOP/s is listed for {torch.cuda.get_device_name()} in helpers/hardware.py")
    torch.cuda.reset_peak_memory_stats()
    result, graphs = compiled_graphs('bench.py', '--real_data=False', '--bench_iters=10', '--warmup_iters=5')
    ms, mfu = re.search(r'time per iteration: ([\d.]+)ms, .*MFU: ([\d.]+)%', result.stdout).groups()
    gigabytes = torch.cuda.max_memory_allocated() / 1e9
    record_property('GPT-2 124M, 12 x 1024: ms/iter, MFU, peak memory', f"{ms} ms, {mfu}%, {gigabytes:.1f} GB")
    floor = 20 if re.search('H100|H200|H800', torch.cuda.get_device_name()) else 15
    assert graphs > 0 and floor < float(mfu) < 80 and gigabytes < 40, result.stdout


# Paths that only a GPU runs, a few iterations each, local files only: they must train, not only start.
SMOKE = {'Muon in bf16': dict(optimizer='muon', dtype='bfloat16'),
         'Muon in fp16 (the GradScaler through both optimizers)': dict(optimizer='muon', dtype='float16'),
         'activation checkpointing, eager': dict(activation_checkpointing=True),
         'activation checkpointing, compiled': dict(activation_checkpointing=True, compile=True)}
TORCHRUN_SMOKE = {'FSDP compiled with activation checkpointing': dict(fsdp=True, compile=True,
                                                                      activation_checkpointing=True),
                  'FSDP in fp16 with grad_clip': dict(fsdp=True, dtype='float16'),
                  'FSDP in fp16 without grad_clip': dict(fsdp=True, dtype='float16', grad_clip=0.0),
                  'DDP with device-resident batches': dict(data_on_device=True)}


def trained(stdout, last=6):
    steps = losses(stdout)
    return sorted(steps) == list(range(last + 1)) and all(math.isfinite(v) for v in steps.values())


@needs_cuda
@pytest.mark.parametrize('name', SMOKE)
def test_gpu_only_paths_train(tmp_path, core_dataset, name):
    result = run_inproc('train.py', *gpu_args(tmp_path / 'out', max_iters=6, eval_interval=3, **SMOKE[name]),
                        check=True)
    assert trained(result.stdout), result.stdout


@needs_cuda
@pytest.mark.parametrize('name', TORCHRUN_SMOKE)
def test_gpu_only_paths_train_under_torchrun(tmp_path, core_dataset, name):
    n = torch.cuda.device_count()
    result = torchrun(*gpu_args(tmp_path / 'out', backend='nccl', gradient_accumulation_steps=n, max_iters=6,
                                eval_interval=3, **TORCHRUN_SMOKE[name]))
    assert trained(result.stdout), result.stdout
    assert ('keeping the dataset in cuda' in result.stdout) == ('data_on_device' in TORCHRUN_SMOKE[name])


@needs_cuda
def test_hellaswag_in_training_and_compiled_evaluation(tmp_path):
    """train.py --hellaswag=True and evaluate.py --hellaswag=True --compile=True, on three local examples."""
    import numpy as np
    from helpers import hellaswag
    from test_hellaswag import EXAMPLES, write_file
    name = '_test_gpu_hellaswag'
    os.makedirs(data.data_dir(name), exist_ok=True)
    os.makedirs(data.data_dir('hellaswag'), exist_ok=True)
    write_file(hellaswag.default_path(), EXAMPLES[:3])
    for split in ('train', 'val'):  # GPT-2 BPE ids: no meta.pkl
        np.random.default_rng(0).integers(0, 50257, 4000).astype(np.uint16).tofile(
            os.path.join(data.data_dir(name), f'{split}.bin'))
    log = run_inproc('train.py', *gpu_args(tmp_path / 'out', dataset=name, hellaswag=True, hellaswag_examples=3,
                                           max_iters=4, eval_interval=2), check=True).stdout
    assert len(re.findall(r'hellaswag acc_norm [\d.]+', log)) == 3, log
    result, graphs = compiled_graphs('evaluate.py', f'--out_dir={tmp_path / "out"}', '--device=cuda', '--compile=True',
                                     '--hellaswag=True', f'--hellaswag_file={hellaswag.default_path()}')
    assert graphs > 0 and re.search(r'^hellaswag: acc [\d.]+, acc_norm [\d.]+ \(3 examples', result.stdout, re.M)
