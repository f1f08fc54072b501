"""Device, dtype and autocast for every script that runs the model: one command on an NVIDIA GPU, Apple GPU or CPU."""
import functools
import time
from contextlib import nullcontext

import torch

from helpers import UserError

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
mps_available = torch.backends.mps.is_available
# without including_emulation=False, GPUs that only emulate bf16 (T4, V100) would say yes
gpu_has_bfloat16 = functools.partial(torch.cuda.is_bf16_supported, including_emulation=False)

# dense peak FLOP/s from data sheets, for MFU: (part of the GPU's name, 16-bit, TF32 or V100/T4's fp32), specific first
GPU_PEAK_FLOPS = [
    ('H100 PCIe', 756e12, 378e12), ('H100 NVL', 835e12, 418e12), ('H100', 989e12, 495e12), ('H200 NVL', 835e12, 418e12),
    ('H200', 989e12, 495e12), ('H800 PCIe', 756e12, 378e12), ('H800', 989e12, 495e12), ('GB200', 2500e12, 1250e12),
    ('B200', 2250e12, 1100e12), ('A100', 312e12, 156e12), ('A800', 312e12, 156e12), ('A10G', 70e12, 35e12),
    ('A10', 125e12, 62.5e12), ('L40S', 362e12, 183e12), ('L40', 181e12, 90.5e12), ('L4', 121e12, 60e12),
    ('A6000', 155e12, 77.4e12), ('RTX 4090', 165e12, 82.6e12), ('RTX 3090', 71e12, 35.6e12), ('V100', 125e12, 15.7e12),
    ('T4', 65e12, 8.1e12),
]

def best_device():
    return 'cuda' if torch.cuda.is_available() else 'mps' if mps_available() else 'cpu'

def default_dtype(device):
    """nanoGPT's on CUDA: bf16 where the GPU has it, else fp16 (with a gradient scaler); float32 elsewhere (README)."""
    return ('bfloat16' if gpu_has_bfloat16() else 'float16') if torch.device(device).type == 'cuda' else 'float32'

def setup(device, dtype=None):
    """Check device and dtype (None: the device's default), allow TF32 on CUDA; (dtype, autocast context or no-op)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device '{device}'; use cpu, cuda, cuda:N or mps (best here: {best_device()})")
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f"device '{device}' asked for but CUDA is not available here; use --device={best_device()}")
    if dev.type == 'cuda' and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device '{device}' does not exist: there are {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == 'mps' and not mps_available():
        raise UserError(f"device 'mps' asked for but no Apple GPU is available here; use --device={best_device()}")
    if dev.type not in ('cuda', 'mps', 'cpu'):
        raise UserError(f"device '{device}' is not supported; use cpu, cuda or mps")
    dtype = dtype or default_dtype(device)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    if dev.type == 'cuda':
        if dtype == 'bfloat16' and not gpu_has_bfloat16():
            raise UserError("this GPU cannot run bfloat16; use --dtype=float16 (or float32)")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return dtype, nullcontext() if dtype == 'float32' else torch.autocast(device_type=dev.type, dtype=DTYPES[dtype])

def peak_flops(device, dtype):
    """Peak dense FLOP/s for dtype's matmuls (float32 on CUDA runs as TF32), or None: CPUs, unlisted GPUs."""
    name = torch.cuda.get_device_name(device) if torch.device(device).type == 'cuda' else ''
    return next((half if dtype != 'float32' else single for key, half, single in GPU_PEAK_FLOPS if key in name), None)

def sync(device):
    """Wait for the device's queued work (for timings)."""
    if torch.device(device).type != 'cpu':
        torch.accelerator.synchronize(device)

def forward_seconds(model, x, y, ctx, device):
    """Seconds of a forward pass without gradients or dropout, the second of two (the first warms up)."""
    model.eval()
    with torch.no_grad(), ctx:
        for _ in range(2):
            sync(device)
            start = time.time()
            model(x, y)
            sync(device)
    model.train()
    return time.time() - start
