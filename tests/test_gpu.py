"""The GPU tier, run wherever a CUDA or Apple MPS device is present (else skipped, saying why): every dtype, compiled
runs that really compiled, exact resume, the KV cache, torchrun over NCCL with DDP and FSDP, a GPU-trained checkpoint
sampled, evaluated and exported, GPT-2 124M's MFU. `python benchmarks/gpu_check.py` runs it and the GPU benchmarks."""
import math
import re

import pytest
import torch

from conftest import compiled_graphs, core_train_args, iteration_losses, run_inproc, run_script
from helpers import checkpoint, data, hardware
from model import GPT, GPTConfig
import test_hellaswag

DEVICE = 'cuda' if torch.cuda.is_available() else 'mps' if hardware.mps_available() else None
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no CUDA or Apple MPS device on this machine")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two or more NVIDIA GPUs")
# fp16 autocast runs on Apple GPUs too
DTYPES = (['float32', 'float16'] + (['bfloat16'] if DEVICE == 'cuda' and hardware.gpu_has_bfloat16() else [])
          if DEVICE else ['float32'])

def gpu_args(out_dir, **overrides):
    """core_train_args on the device; dtype=None: the device's default."""
    return core_train_args(out_dir, **dict(dict(device=DEVICE, dtype='float32', compile=False), **overrides))

def close(a, b, tolerance=2e-3):
    """The same losses up to the GPU's reordered sums (and, compiled, fused kernels)."""
    return a.keys() == b.keys() and all(a[i] == pytest.approx(b[i], rel=tolerance, abs=tolerance) for i in a)

def trained(stdout, last):
    """Every iteration logged (a nan or inf loss stops the run), each finite; those of 21 learned too."""
    losses = iteration_losses(stdout)
    return (sorted(losses) == list(range(last + 1)) and all(math.isfinite(v) for v in losses.values())
            and (last < 20 or losses[20] < losses[0] - 0.3))

SHORT = dict(max_iters=6, eval_interval=3)  # paths that only a GPU runs: a few iterations, they must train
RUNS = [pytest.param(dict(dtype=dtype), id=dtype) for dtype in DTYPES] + [
    pytest.param(settings, id=name, marks=needs_cuda) for name, settings in {
    # torch.compile is tested on CUDA, in the GPU's default dtype (the CPU suite compiles float32)
    'compiled': dict(compile=True, dtype=None),
    'CUDA graphs with one micro-step': dict(compile=True, compile_mode='reduce-overhead', dtype=None),
    'Muon in bf16': dict(optimizer='muon', dtype='bfloat16', **SHORT),
    'Muon in fp16 (the GradScaler through both optimizers)': dict(optimizer='muon', dtype='float16', **SHORT),
    'activation checkpointing, eager': dict(activation_checkpointing=True, **SHORT),
    'activation checkpointing, compiled': dict(activation_checkpointing=True, compile=True, **SHORT)}.items()]

@pytest.mark.parametrize('settings', RUNS)
def test_a_tiny_run_on_the_device(tmp_path, core_dataset, settings):
    result, graphs = compiled_graphs('train.py', *gpu_args(tmp_path / 'out', **settings))
    assert (graphs > 0) == settings.get('compile', False), graphs  # a compiled run compiled; an eager one did not
    assert trained(result.stdout, settings.get('max_iters', 20)), result.stdout
    model = checkpoint.model_from_checkpoint(checkpoint.load(str(tmp_path / 'out')))
    assert all(torch.isfinite(p).all() for p in model.parameters())

@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_resume_on_the_device(tmp_path, core_dataset, dtype):
    """Ten iterations, a resume, ten more: twenty's losses, with the device's RNG and float16's GradScaler kept."""
    settings = dict(dropout=0.1, dtype=dtype)
    straight = iteration_losses(run_inproc('train.py', *gpu_args(tmp_path / 'a', **settings), check=True).stdout)
    run_inproc('train.py', *gpu_args(tmp_path / 'b', max_iters=9, **settings), check=True)
    state = checkpoint.load(str(tmp_path / 'b'), 'latest.pt')
    assert DEVICE in state['rng_states'] and (state['scaler'] != {}) == (dtype == 'float16')
    resumed = run_inproc('train.py', '--init_from=resume', f'--out_dir={tmp_path / "b"}', f'--device={DEVICE}',
                         '--max_iters=20', '--compile=False', f'--dtype={dtype}', check=True).stdout
    assert close(iteration_losses(resumed), {i: straight[i] for i in range(10, 21)})
    scalers = [torch.load(tmp_path / run / 'latest.pt', weights_only=True)['scaler'] for run in 'ab']
    assert scalers[0] == scalers[1]

@needs_cuda
def test_device_resident_batches_are_the_batches_read_from_disk_and_train_alike(tmp_path, core_dataset):
    path, dtype = data.bin_path(core_dataset, 'train'), data.token_dtype(None)
    tokens = data.load_to_device(path, dtype, 'cuda')
    for seed in (0, 1, 2):
        from_disk = data.get_batch(path, dtype, 8, 32, 'cuda', torch.Generator().manual_seed(seed))
        resident = data.get_resident_batch(tokens, 8, 32, torch.Generator().manual_seed(seed))
        assert all(a.device.type == b.device.type == 'cuda' and torch.equal(a, b) for a, b in zip(from_disk, resident))
    on = run_inproc('train.py', *gpu_args(tmp_path / 'on', data_on_device=True), check=True).stdout
    off = run_inproc('train.py', *gpu_args(tmp_path / 'off', data_on_device=False), check=True).stdout
    assert 'keeping the dataset in cuda' in on and close(iteration_losses(on), iteration_losses(off))

def small_gpt(monkeypatch):
    """In float32 proper: train.py's runs in this process allow TF32, which rounds otherwise."""
    if DEVICE == 'cuda':
        monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=128, vocab_size=512, n_layer=4, n_head=4, n_embd=128)).eval().to(DEVICE)

def prompt(batch, length, seed):
    return torch.randint(512, (batch, length), generator=torch.Generator().manual_seed(seed)).to(DEVICE)

def test_kv_cache_and_per_sample_generators_on_the_device(monkeypatch):
    """The KV cache gives the greedy tokens of the full context, past block_size (150) too; sample.py's rule: sample
    k drawn with a device generator seeded seed + k equals the same sample drawn alone."""
    model, idx, one = small_gpt(monkeypatch), prompt(4, 9, 1), prompt(1, 5, 3).expand(3, -1)
    def generators(first, count):
        return [torch.Generator(device=DEVICE).manual_seed(100 + k) for k in range(first, first + count)]
    with torch.no_grad():
        assert torch.equal(model.generate(idx, 150, top_k=1, use_cache=True),
                           model.generate(idx, 150, top_k=1, use_cache=False))
        batched = model.generate(one, 40, 1.0, 50, generators=generators(0, 3))
        alone = torch.cat([model.generate(one[:1], 40, 1.0, 50, generators=generators(k, 1)) for k in range(3)])
    assert torch.equal(batched, alone) and not torch.equal(batched[0], batched[1])

@pytest.mark.parametrize('dtype', [d for d in DTYPES if d != 'float32'] or ['bfloat16'])
def test_kv_cache_in_half_precision_reports_the_share_of_equal_tokens(monkeypatch, dtype, record_property):
    """The paths round differently: the share of equal greedy tokens is reported (pytest -rA, or junit XML)."""
    model, idx = small_gpt(monkeypatch), prompt(4, 9, 2)
    with torch.no_grad(), hardware.setup(DEVICE, dtype)[1]:
        cached = model.generate(idx, 100, top_k=1, use_cache=True)[:, 9:]
        full = model.generate(idx, 100, top_k=1, use_cache=False)[:, 9:]
    record_property(f'equal greedy tokens, {dtype}', f"{(cached == full).float().mean().item():.1%}")
    # the first token comes from the same whole-prompt forward on both paths; later ones may part
    assert cached.shape == full.shape and torch.equal(cached[:, 0], full[:, 0])

def torchrun(*args, processes=None):
    return run_script('-m', 'torch.distributed.run', '--standalone',
                      f'--nproc_per_node={processes or torch.cuda.device_count()}', 'train.py', *args, timeout=900)

@needs_cuda
@pytest.mark.parametrize('fsdp', [False, True])
def test_torchrun_over_nccl_compiled_and_resumed(tmp_path, core_dataset, fsdp):
    """DDP and FSDP over NCCL on every GPU, compiled, resumed under torchrun and in one process (graphs: counted in
    process above)."""
    settings = dict(backend='nccl', fsdp=fsdp, dtype=None, gradient_accumulation_steps=2 * torch.cuda.device_count())
    assert trained(torchrun(*gpu_args(tmp_path / 'out', compile=True, **settings)).stdout, 20)
    assert checkpoint.load(str(tmp_path / 'out'), 'latest.pt')['iter_num'] == 21
    resumed = torchrun(*gpu_args(tmp_path / 'out', init_from='resume', max_iters=23, compile=True, **settings)).stdout
    assert sorted(iteration_losses(resumed)) == [21, 22, 23]
    single = run_inproc('train.py', '--init_from=resume', f'--out_dir={tmp_path / "out"}', '--device=cuda',
                        '--compile=False', '--max_iters=24', '--gradient_accumulation_steps=2', check=True)
    assert sorted(iteration_losses(single.stdout)) == [24]

TORCHRUN_RUNS = {'FSDP compiled with activation checkpointing': dict(fsdp=True, compile=True,
                                                                     activation_checkpointing=True),
                 'FSDP in fp16 with grad_clip': dict(fsdp=True, dtype='float16'),
                 'FSDP in fp16 without grad_clip': dict(fsdp=True, dtype='float16', grad_clip=0.0),
                 'DDP with device-resident batches': dict(data_on_device=True)}

@needs_cuda
@pytest.mark.parametrize('name', TORCHRUN_RUNS)
def test_gpu_only_paths_train_under_torchrun(tmp_path, core_dataset, name):
    result = torchrun(*gpu_args(tmp_path / 'out', backend='nccl', gradient_accumulation_steps=torch.cuda.device_count(),
                                **SHORT, **TORCHRUN_RUNS[name]))
    assert trained(result.stdout, SHORT['max_iters']), result.stdout
    assert ('keeping the dataset in cuda' in result.stdout) == ('data_on_device' in TORCHRUN_RUNS[name])

@needs_two_gpus
def test_two_gpus_learn_as_one_with_the_same_total_batch(tmp_path, core_dataset):
    """Other batches (each rank draws its own), the same tokens per iteration: the val loss lands alike."""
    step = re.compile(r'^step 20: train loss [\d.]+, val loss ([\d.]+)', re.M)
    one, two = (torchrun(*gpu_args(tmp_path / str(n), backend='nccl', gradient_accumulation_steps=2),
                         processes=n).stdout for n in (1, 2))
    assert float(step.search(two)[1]) == pytest.approx(float(step.search(one)[1]), abs=0.15), (one, two)

@pytest.fixture(scope='module')
def gpu_run(tmp_path_factory, core_dataset):
    out_dir = tmp_path_factory.mktemp('gpu_run') / 'out'
    run_inproc('train.py', *gpu_args(out_dir, dtype=None), check=True)
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
    """GPT-2 124M, batch 12 x 1024, the GPU's default dtype, compiled, never eager. nanoGPT reports about 40% on an
    A100; an H100's or H200's bf16 peak is about 3x an A100's for under 2x the memory bandwidth: the floor there is
    20%; beyond 80% the peak is wrong. Under 40 GB of memory, as nanoGPT trains it on an A100 40GB."""
    if hardware.peak_flops('cuda', hardware.default_dtype('cuda')) is None:
        pytest.skip(f"no peak FLOP/s is listed for {torch.cuda.get_device_name()} in helpers/hardware.py")
    torch.cuda.reset_peak_memory_stats()
    result, graphs = compiled_graphs('bench.py', '--real_data=False', '--bench_iters=10', '--warmup_iters=5')
    ms, mfu = re.search(r'time per iteration: ([\d.]+)ms, .*MFU: ([\d.]+)%', result.stdout).groups()
    gigabytes = torch.cuda.max_memory_allocated() / 1e9
    record_property('GPT-2 124M, 12 x 1024: ms/iter, MFU, peak memory', f"{ms} ms, {mfu}%, {gigabytes:.1f} GB")
    floor = 20 if re.search('H100|H200|H800', torch.cuda.get_device_name()) else 15
    assert graphs > 0 and floor < float(mfu) < 80 and gigabytes < 40, result.stdout

bpe_dataset = test_hellaswag.bpe_dataset   # the fixture

@needs_cuda
def test_hellaswag_in_training_and_compiled_evaluation(tmp_path, bpe_dataset):
    log = run_inproc('train.py', *gpu_args(tmp_path / 'out', dataset=bpe_dataset, hellaswag=True, hellaswag_examples=3,
                                           max_iters=4, eval_interval=2), check=True).stdout
    assert len(re.findall(r'hellaswag acc_norm [\d.]+', log)) == 3, log
    result, graphs = compiled_graphs('evaluate.py', f'--out_dir={tmp_path / "out"}', '--device=cuda', '--compile=True',
                                     '--hellaswag=True', '--hellaswag_examples=3')
    assert graphs > 0 and re.search(r'^hellaswag: acc [\d.]+, acc_norm [\d.]+ \(3 examples', result.stdout, re.M)
