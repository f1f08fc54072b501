"""Device, dtype and precision choices shared by train.py, sample.py and bench.py.

Each script keeps nanoGPT's globals (device, dtype, compile, backend); these helpers
fill in the ones the user did not set so that the same command works on an NVIDIA GPU,
an Apple GPU or a plain CPU.
"""
from contextlib import nullcontext

import torch

from helpers import UserError

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

# Dense bf16 tensor-core peaks from the vendors' data sheets, matched against
# torch.cuda.get_device_name(). Order matters: more specific names first.
GPU_PEAK_BF16_FLOPS = [
    ('H100 PCIe', 756e12), ('H100 NVL', 835e12), ('H100', 989e12), ('H200', 989e12), ('H800', 989e12),
    ('B200', 2250e12), ('A100', 312e12), ('A800', 312e12), ('A10G', 70e12),
    ('A10', 125e12), ('L40S', 362e12), ('L40', 181e12), ('L4', 121e12), ('A6000', 155e12),
    ('RTX 4090', 165e12), ('RTX 3090', 71e12), ('V100', 125e12), ('T4', 65e12),
]


def best_device():
    if torch.cuda.is_available():
        return 'cuda'
    if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
        return 'mps'
    return 'cpu'


def device_type(device):
    try:
        return torch.device(device).type
    except RuntimeError:  # reached before check_device when the default dtype follows the device
        raise UserError(f"unknown device '{device}'; use cpu, cuda, cuda:N or mps (best here: {best_device()})")


def check_device(device):
    """Validate a --device value and return its type ('cuda', 'mps' or 'cpu')."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device '{device}'; use cpu, cuda, cuda:N or mps (best here: {best_device()})")
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f"device '{device}' asked for but CUDA is not available here; use --device={best_device()}")
    if dev.type == 'cuda' and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device '{device}' does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == 'mps' and not (getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available()):
        raise UserError(f"device 'mps' asked for but no Apple GPU is available here; use --device={best_device()}")
    if dev.type not in ('cuda', 'mps', 'cpu'):
        raise UserError(f"device '{device}' is not supported; use cpu, cuda or mps")
    return dev.type


def cpu_has_fast_bfloat16():
    """Whether the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    cpu = getattr(torch, 'cpu', None)
    checks = ('_is_avx512_bf16_supported', '_is_amx_tile_supported')
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def default_dtype(device):
    """nanoGPT's choice on CUDA (bf16 where supported, else fp16); on CPUs bf16 autocast where the
    hardware has bf16 instructions; float32 elsewhere."""
    kind = device_type(device)
    if kind == 'cuda':
        # without including_emulation=False, GPUs that only emulate bf16 (T4, V100) would say yes
        return 'bfloat16' if torch.cuda.is_bf16_supported(including_emulation=False) else 'float16'
    if kind == 'cpu' and cpu_has_fast_bfloat16():
        return 'bfloat16'
    return 'float32'


def check_dtype(device, dtype):
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    kind = device_type(device)
    if kind == 'cuda' and dtype == 'bfloat16' and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UserError("this GPU cannot run bfloat16; use --dtype=float16 (or float32)")
    if kind == 'cpu' and dtype == 'float16':
        raise UserError("float16 autocast is not supported on CPU; use --dtype=bfloat16 or --dtype=float32")
    return DTYPES[dtype]


def autocast(device, dtype):
    """The mixed-precision context for forward passes (a no-op for float32)."""
    if dtype == 'float32':
        return nullcontext()
    return torch.autocast(device_type=device_type(device), dtype=DTYPES[dtype])


def setup(device, dtype=None):
    """Check device and dtype (None: the device's default), allow TF32 matmuls on CUDA, and return
    the dtype with its autocast context: the start every script that runs the model shares."""
    kind = check_device(device)
    dtype = dtype or default_dtype(device)
    check_dtype(device, dtype)
    if kind == 'cuda':
        allow_tf32()
    return dtype, autocast(device, dtype)


def default_compile(device):
    """torch.compile pays off on CUDA; elsewhere its start-up cost rarely does."""
    return device_type(device) == 'cuda'


def default_backend(device):
    return 'nccl' if device_type(device) == 'cuda' else 'gloo'


def allow_tf32():
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def peak_flops(device):
    """Peak dense bf16 FLOP/s of the device, or None where it is not known (CPUs, unlisted GPUs)."""
    if device_type(device) != 'cuda' or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, flops in GPU_PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return None


def sync(device):
    kind = device_type(device)
    if kind == 'cuda':
        torch.cuda.synchronize()
    elif kind == 'mps':
        torch.mps.synchronize()
