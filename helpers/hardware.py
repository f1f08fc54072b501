"""Device, dtype and autocast: the start every script that runs the model shares.

The scripts keep nanoGPT's globals (device, dtype); these helpers choose them when the user
did not, so that the same command runs on an NVIDIA GPU, an Apple GPU or a plain CPU.
"""
from contextlib import nullcontext

import torch

from helpers import UserError

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

# Dense bf16 tensor-core peaks from the vendors' data sheets, matched against
# torch.cuda.get_device_name(), for MFU. More specific names first.
GPU_PEAK_BF16_FLOPS = [
    ('H100 PCIe', 756e12), ('H100 NVL', 835e12), ('H100', 989e12), ('H200', 989e12), ('H800', 989e12),
    ('B200', 2250e12), ('A100', 312e12), ('A800', 312e12), ('A10G', 70e12),
    ('A10', 125e12), ('L40S', 362e12), ('L40', 181e12), ('L4', 121e12), ('A6000', 155e12),
    ('RTX 4090', 165e12), ('RTX 3090', 71e12), ('V100', 125e12), ('T4', 65e12),
]


def mps_available():
    return getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available()


def best_device():
    return 'cuda' if torch.cuda.is_available() else 'mps' if mps_available() else 'cpu'


def check_device(device):
    """The type of a valid --device value ('cuda', 'mps' or 'cpu'), or a UserError."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device '{device}'; use cpu, cuda, cuda:N or mps (best here: {best_device()})")
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f"device '{device}' asked for but CUDA is not available here; use --device={best_device()}")
    if dev.type == 'cuda' and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device '{device}' does not exist: this machine has {torch.cuda.device_count()} CUDA "
                        "device(s)")
    if dev.type == 'mps' and not mps_available():
        raise UserError(f"device 'mps' asked for but no Apple GPU is available here; use --device={best_device()}")
    if dev.type not in ('cuda', 'mps', 'cpu'):
        raise UserError(f"device '{device}' is not supported; use cpu, cuda or mps")
    return dev.type


def gpu_has_bfloat16():
    # without including_emulation=False, GPUs that only emulate bf16 (T4, V100) would say yes
    return torch.cuda.is_bf16_supported(including_emulation=False)


def cpu_has_fast_bfloat16():
    """Whether the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    cpu = getattr(torch, 'cpu', None)
    return any(getattr(cpu, name, lambda: False)() for name in ('_is_avx512_bf16_supported', '_is_amx_tile_supported'))


def default_dtype(device):
    """nanoGPT's choice on CUDA (bf16 where the GPU has it, else fp16 with a gradient scaler);
    bf16 autocast on CPUs with bf16 instructions; float32 elsewhere."""
    kind = torch.device(device).type
    if kind == 'cuda':
        return 'bfloat16' if gpu_has_bfloat16() else 'float16'
    return 'bfloat16' if kind == 'cpu' and cpu_has_fast_bfloat16() else 'float32'


def setup(device, dtype=None):
    """Check device and dtype (None: the device's default) and allow TF32 matmuls on CUDA.
    Returns the dtype and the autocast context for forward passes (a no-op for float32)."""
    kind = check_device(device)
    dtype = dtype or default_dtype(device)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    if kind == 'cuda' and dtype == 'bfloat16' and not gpu_has_bfloat16():
        raise UserError("this GPU cannot run bfloat16; use --dtype=float16 (or float32)")
    if kind == 'cpu' and dtype == 'float16':
        raise UserError("float16 autocast is not supported on CPU; use --dtype=bfloat16 or --dtype=float32")
    if kind == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ctx = nullcontext() if dtype == 'float32' else torch.autocast(device_type=kind, dtype=DTYPES[dtype])
    return dtype, ctx


def peak_flops(device):
    """Peak dense bf16 FLOP/s of the device, or None where it is not known (CPUs, unlisted GPUs)."""
    if torch.device(device).type != 'cuda':
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((flops for key, flops in GPU_PEAK_BF16_FLOPS if key in name), None)


def sync(device):
    """Wait for the device's queued work (for timings)."""
    kind = torch.device(device).type
    if kind == 'cuda':
        torch.cuda.synchronize(torch.device(device))
    elif kind == 'mps':
        torch.mps.synchronize()
