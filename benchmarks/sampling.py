"""Tokens/s of sampling with and without the KV cache, and whether both give the same tokens, for a GPT-2 124M shape
(random weights) and the shakespeare_char model (shakespeare_out_dir's, else its shape) within and past its window."""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import configurator  # noqa: E402
from helpers import UserError, checkpoint, hardware  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

# -----------------------------------------------------------------------------
lengths = '200,1000'  # new tokens per run, comma-separated
shakespeare_out_dir = 'out-shakespeare-char'
shakespeare_tokens = 500
models = 'gpt2,shakespeare'
device = hardware.best_device()
dtype = hardware.default_dtype(device)
temperature = 1.0
top_k = 200
seed = 1337
min_seconds = 3.0  # each figure times whole generations, repeated until at least this long
# -----------------------------------------------------------------------------
explicit = configurator.configure(globals())
dtype, ctx = hardware.setup(device, dtype if 'dtype' in explicit else None)
token_counts = [int(n) if n.strip().isdecimal() else 0 for n in lengths.split(',')]
if min(token_counts) <= 0:
    raise UserError(f"lengths must be positive whole numbers separated by commas, such as 200,1000, got {lengths!r}")
if not set(models.split(',')) <= {'gpt2', 'shakespeare'}:
    raise UserError(f"models must be gpt2, shakespeare or gpt2,shakespeare, got {models!r}")

def tokens_per_second(model, new_tokens, use_cache):
    idx = torch.zeros((1, 1), dtype=torch.long, device=device)
    with torch.no_grad(), ctx:
        model.generate(idx, min(new_tokens, 20), temperature, top_k, use_cache=use_cache)  # warm-up
        hardware.sync(device)
        runs, t0 = 0, time.time()
        while runs == 0 or time.time() - t0 < min_seconds:  # small models: repeat for a stable figure
            torch.manual_seed(seed)
            out = model.generate(idx, new_tokens, temperature, top_k, use_cache=use_cache)
            runs += 1
        hardware.sync(device)
    return runs * new_tokens / (time.time() - t0), out

rows = []
if 'gpt2' in models:
    torch.manual_seed(seed)
    rows.append(("GPT-2 124M shape (random weights)", GPT(GPTConfig(block_size=1024, vocab_size=50257)), token_counts))
if 'shakespeare' in models:
    torch.manual_seed(seed)
    if os.path.exists(os.path.join(shakespeare_out_dir, checkpoint.CKPT_NAME)):
        name = f"shakespeare_char ({shakespeare_out_dir})"
        m = checkpoint.model_from_checkpoint(checkpoint.load(shakespeare_out_dir), dropout=0.0)
    else:  # the config's shape
        name = "shakespeare_char shape (random weights)"
        m = GPT(GPTConfig(block_size=256, vocab_size=65, n_layer=6, n_head=6, n_embd=384, bias=False))
    rows.append((name, m, sorted({min(shakespeare_tokens, m.config.block_size - 1), shakespeare_tokens})))

print(f"device: {device}, dtype: {dtype}, torch threads: {torch.get_num_threads()}")
print("| model | new tokens | no cache (tokens/s) | KV cache (tokens/s) | speed-up | same tokens |")
print("|---|---:|---:|---:|---:|---|")
for name, m, counts in rows:
    m.eval().to(device)
    for n in counts:
        (slow, out_slow), (fast, out_fast) = (tokens_per_second(m, n, use_cache) for use_cache in (False, True))
        same = 'yes' if torch.equal(out_slow, out_fast) else 'NO'
        print(f"| {name} | {n} | {slow:.1f} | {fast:.1f} | {fast / slow:.1f}x | {same} |", flush=True)
