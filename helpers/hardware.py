"""Device, dtype and autocast: the start every script that runs the model shares.

The scripts keep nanoGPT's globals (device, dtype); these helpers choose them when the user
did not, so that the same command runs on an NVIDIA GPU, an Apple GPU or a plain CPU.
"""
import time
from contextlib import nullcontext

import torch

from helpers import UserError

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

# Dense tensor-core peaks from the vendors' data sheets, matched against torch.cuda.get_device_name()
# for MFU, in FLOP/s: (16-bit: bf16 or fp16, float32: TF32 where the GPU has it, plain fp32 on V100
# and T4). More specific names first.
GPU_PEAK_FLOPS = [
    ('H100 PCIe', 756e12, 378e12), ('H100 NVL', 835e12, 418e12), ('H100', 989e12, 495e12),
    ('H200 NVL', 835e12, 418e12), ('H200', 989e12, 495e12), ('H800 PCIe', 756e12, 378e12), ('H800', 989e12, 495e12),
    ('GB200', 2500e12, 1250e12), ('B200', 2250e12, 1100e12), ('A100', 312e12, 156e12), ('A800', 312e12, 156e12),
    ('A10G', 70e12, 35e12), ('A10', 125e12, 62.5e12), ('L40S', 362e12, 183e12), ('L40', 181e12, 90.5e12),
    ('L4', 121e12, 60e12), ('A6000', 155e12, 77.4e12), ('RTX 4090', 165e12, 82.6e12), ('RTX 3090', 71e12, 35.6e12),
    ('V100', 125e12, 15.7e12), ('T4', 65e12, 8.1e12),
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


def default_dtype(device):
    """nanoGPT's choice: on CUDA bf16 where the GPU has it, else fp16 with a gradient scaler; float32
    elsewhere. CPUs with bf16 instructions run bf16 autocast faster only for larger models, and it
    changes the numbers (see the README), so there it is an opt-in: --dtype=bfloat16."""
    if torch.device(device).type == 'cuda':
        return 'bfloat16' if gpu_has_bfloat16() else 'float16'
    return 'float32'


def setup(device, dtype=None):
    """Check device and dtype (None: the device's default) and allow TF32 matmuls on CUDA.
    Returns the dtype and the autocast context for forward passes (a no-op for float32)."""
    kind = check_device(device)
    dtype = dtype or default_dtype(device)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    if kind == 'cuda' and dtype == 'bfloat16' and not gpu_has_bfloat16():
        raise UserError("this GPU cannot run bfloat16; use --dtype=float16 (or float32)")
    if kind == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ctx = nullcontext() if dtype == 'float32' else torch.autocast(device_type=kind, dtype=DTYPES[dtype])
    return dtype, ctx


def peak_flops(device, dtype):
    """Peak dense FLOP/s of the device for dtype's matmuls, or None where it is not known (CPUs,
    unlisted GPUs): float32 runs on CUDA use TF32, half the 16-bit rate on the GPUs that have it."""
    if torch.device(device).type != 'cuda':
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((half if dtype != 'float32' else single for key, half, single in GPU_PEAK_FLOPS if key in name), None)


def sync(device):
    """Wait for the device's queued work (for timings)."""
    kind = torch.device(device).type
    if kind == 'cuda':
        torch.cuda.synchronize(torch.device(device))
    elif kind == 'mps':
        torch.mps.synchronize()


def forward_seconds(model, x, y, ctx, device):
    """Seconds of one forward pass of model on a batch, without gradients or dropout: the second of
    two, as the first warms up. Leaves the model in training mode."""
    model.eval()
    with torch.no_grad(), ctx:
        for _ in range(2):
            sync(device)
            start = time.time()
            model(x, y)
            sync(device)
    model.train()
    return time.time() - start
