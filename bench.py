"""Time a training iteration (forward, backward, optimizer step) after a warm-up: ms/iter, tokens/s, MFU.
$ python bench.py --device=cpu --compile=False --real_data=False --n_layer=4 --n_head=4 --n_embd=128 --block_size=64"""
import os
import time

import torch

import configurator
from helpers import UserError, data, hardware, optim, shown
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
batch_size = 12
block_size = 1024
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False
activation_checkpointing = False  # recompute each block in the backward pass (see train.py)
optimizer = 'adamw'  # or 'muon' (see train.py)
real_data = True  # batches of data/<dataset>; False: random tokens
dataset = 'openwebtext'
seed = 1337
device = hardware.best_device()  # 'cpu', 'cuda', 'cuda:0', 'mps', ...
dtype = hardware.default_dtype(device)  # 'float32', 'bfloat16' or 'float16'
compile = True  # use PyTorch 2.0 to compile the model to be faster
profile = False  # use the pytorch profiler, or just simple benchmarking?
warmup_iters = 10  # untimed iterations first (compilation, allocator and kernel autotuning settle)
bench_iters = 20  # timed iterations
profile_dir = './bench_log'  # where --profile=True writes a torch.profiler trace
# -----------------------------------------------------------------------------
explicit = configurator.configure(globals())
dtype, ctx = hardware.setup(device, dtype if 'dtype' in explicit else None)
device_type = torch.device(device).type
compile = compile if 'compile' in explicit else device_type == 'cuda'  # as in train.py: on CPUs it rarely pays
configurator.check_model(globals())
configurator.require_positive(globals(), 'batch_size', 'bench_iters')
configurator.check_seed(seed)
torch.manual_seed(seed)

vocab_size = 50304  # GPT-2's vocabulary, padded
if real_data:
    folder = data.data_dir(dataset)
    if os.path.isdir(folder) and not os.path.exists(os.path.join(folder, 'train.bin')):
        size = ' (about 54 GB of download)' if dataset == 'openwebtext' else ''
        raise UserError(f"{shown(folder)}/train.bin is missing; prepare it with {data.prepare_command(dataset)}{size}, "
                        "or time random tokens with --real_data=False")
    meta = data.read_meta(dataset)
    vocab_size = meta['vocab_size'] if meta else vocab_size
    token_dtype, train_path = data.token_dtype(meta), data.bin_path(dataset, 'train')
    data.check_split(dataset, 'train', token_dtype, block_size, meta and vocab_size)
else:
    x, y = (torch.randint(vocab_size, (batch_size, block_size), device=device) for _ in range(2))

model = GPT(GPTConfig(block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout, bias=bias,
                      vocab_size=vocab_size))
model.activation_checkpointing = activation_checkpointing
model.to(device)
optimizer = optim.build(optimizer, model, weight_decay=1e-2, learning_rate=1e-4, betas=(0.9, 0.95),
                        device_type=device_type)
if compile:
    print("Compiling model...")
    model = torch.compile(model)

def train_step():
    X, Y = data.get_batch(train_path, token_dtype, batch_size, block_size, device) if real_data else (x, y)
    with ctx:
        _, loss = model(X, Y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

if profile:
    with torch.profiler.profile(schedule=torch.profiler.schedule(wait=5, warmup=5, active=5, repeat=1),
                                on_trace_ready=torch.profiler.tensorboard_trace_handler(profile_dir)) as prof:
        for k in range(15):  # the last 5 traced
            loss = train_step()
            print(f"{k}/15 loss: {loss.item():.4f}")
            prof.step()
    print(f"profiler trace written to {os.path.abspath(profile_dir)}")
else:
    for stage, num_steps in (('warm-up', warmup_iters), ('benchmark', bench_iters)):
        if num_steps <= 0:
            continue
        hardware.sync(device)
        t0 = time.time()
        for _ in range(num_steps):
            loss = train_step()
        hardware.sync(device)
        dt = time.time() - t0
        print(f"{stage}: {num_steps} iters, last loss {loss.item():.4f}")
    mfu = model.estimate_mfu(batch_size, dt / bench_iters, hardware.peak_flops(device, dtype))
    mfu_text = f"{mfu * 100:.2f}%" if mfu is not None else "n/a (peak FLOP/s of this device not known)"
    print(f"time per iteration: {dt / bench_iters * 1000:.2f}ms, "
          f"tokens/s: {batch_size * block_size * bench_iters / dt:,.0f}, MFU: {mfu_text}")
