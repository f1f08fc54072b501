"""
Sampling speed with and without the KV cache: a table of tokens/s.

$ python benchmarks/sampling.py                    # CPU or the best device here
$ python benchmarks/sampling.py --lengths=200 --device=cuda

Rows: a GPT-2-124M-shaped model with random weights (1-token prompt, each length in
`lengths`) and the shakespeare_char model (the checkpoint in shakespeare_out_dir when
there is one, else random weights of its shape), once within its context window and once
past it (where every step must run the whole window, cache or not). Each row also checks
that both paths return the same tokens. `models` picks the rows: gpt2, shakespeare or both.
"""
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
try:
    token_counts = [int(n) for n in lengths.split(',')]
    if min(token_counts) <= 0:
        raise ValueError
except ValueError:
    raise UserError(f"lengths must be positive whole numbers separated by commas, such as 200,1000, got {lengths!r}")
chosen_models = models.split(',')
if not set(chosen_models) <= {'gpt2', 'shakespeare'}:
    raise UserError(f"models must be gpt2, shakespeare or gpt2,shakespeare, got {models!r}")


def tokens_per_second(model, new_tokens, use_cache):
    torch.manual_seed(seed)
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


def shakespeare_model():
    if os.path.exists(os.path.join(shakespeare_out_dir, checkpoint.CKPT_NAME)):
        ckpt = checkpoint.load(shakespeare_out_dir)
        return f"shakespeare_char ({shakespeare_out_dir})", checkpoint.model_from_checkpoint(ckpt, dropout=0.0)
    torch.manual_seed(seed)
    shape = GPTConfig(block_size=256, vocab_size=65, n_layer=6, n_head=6, n_embd=384, bias=False)
    return "shakespeare_char shape (random weights)", GPT(shape)


torch.manual_seed(seed)
rows = []
if 'gpt2' in chosen_models:
    rows.append(("GPT-2 124M shape (random weights)", GPT(GPTConfig(block_size=1024, vocab_size=50257)), token_counts))
if 'shakespeare' in chosen_models:
    name, m = shakespeare_model()
    rows.append((name, m, sorted({min(shakespeare_tokens, m.config.block_size - 1), shakespeare_tokens})))

print(f"device: {device}, dtype: {dtype}, torch threads: {torch.get_num_threads()}")
print("| model | new tokens | no cache (tokens/s) | KV cache (tokens/s) | speed-up | same tokens |")
print("|---|---:|---:|---:|---:|---|")
for name, m, counts in rows:
    m.eval().to(device)
    for n in counts:
        slow, out_slow = tokens_per_second(m, n, use_cache=False)
        fast, out_fast = tokens_per_second(m, n, use_cache=True)
        same = 'yes' if torch.equal(out_slow, out_fast) else 'NO'
        print(f"| {name} | {n} | {slow:.1f} | {fast:.1f} | {fast / slow:.1f}x | {same} |", flush=True)
