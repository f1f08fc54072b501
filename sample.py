"""
Sample from a trained model, or from OpenAI's GPT-2.

$ python sample.py --out_dir=out-shakespeare-char
$ python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=5

Sample k is drawn with its own random generator seeded with seed + k, so the text of
each sample depends only on the seed and its number: streamed one after another
(the default) or generated together in one batch (--stream=False), the samples are the same.
"""
import sys
import time

import torch

import configurator
from helpers import checkpoint, hardware, tokenizer

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (from out_dir), a gpt2 variant (e.g. 'gpt2-xl') or a transformers GPT-2 directory
out_dir = 'out'  # ignored if init_from is not 'resume'
start = "\n"  # or "<|endoftext|>" or etc. Can also specify a file, use as: "FILE:prompt.txt"
num_samples = 10  # number of samples to draw
max_new_tokens = 500  # number of tokens generated in each sample
temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random, in predictions
top_k = 200  # retain only the top_k most likely tokens, clamp others to have 0 probability
seed = 1337
device = hardware.best_device()  # 'cpu', 'cuda', 'cuda:0', 'mps', ...
dtype = hardware.default_dtype(device)  # 'float32', 'bfloat16' or 'float16'
compile = False  # use PyTorch 2.0 to compile the model to be faster
use_kv_cache = True  # feed one new position per step instead of the whole context again
stream = True  # print text as it is generated; False generates all samples in one batch, then prints
# -----------------------------------------------------------------------------
explicit = configurator.configure(globals())
dtype, ctx = hardware.setup(device, dtype if 'dtype' in explicit else None)
configurator.require_positive(globals(), 'num_samples', 'max_new_tokens')
configurator.check_sampling(temperature, top_k)

torch.manual_seed(seed)

# model and tokenizer
model, ckpt = checkpoint.load_model(init_from, out_dir)
tok = tokenizer.for_checkpoint(ckpt) if ckpt is not None else tokenizer.BPETokenizer()
del ckpt  # the weights now live in the model
model.eval()
model.to(device)
if compile:
    # generate() calls the model's forward directly; compile that, with shapes that vary per step
    model.forward = torch.compile(model.forward, dynamic=True)

# the prompt
start = tokenizer.read_prompt(start)
start_ids = tok.encode(start)
x = torch.tensor(start_ids, dtype=torch.long, device=device)[None, ...]


def sample_generators(first, count):
    return [torch.Generator(device=device).manual_seed(seed + k) for k in range(first, first + count)]


# generation
n_tokens = 0
t0 = time.time()
with torch.no_grad(), ctx:
    if stream:
        for k in range(num_samples):
            decode_next = tok.stream_decoder()
            sys.stdout.write(start)
            for token in model.generate_tokens(x, max_new_tokens, temperature, top_k, use_kv_cache,
                                               sample_generators(k, 1)):
                sys.stdout.write(decode_next(token.item()))
                sys.stdout.flush()
                n_tokens += 1
            print('\n---------------')
    else:
        y = model.generate(x.expand(num_samples, -1), max_new_tokens, temperature, top_k, use_kv_cache,
                           sample_generators(0, num_samples))
        n_tokens = num_samples * max_new_tokens
        for row in y.tolist():
            print(tok.decode(row))
            print('---------------')
hardware.sync(device)
elapsed = time.time() - t0
print(f"generated {n_tokens} tokens in {elapsed:.2f}s ({n_tokens / elapsed:.1f} tokens/s, "
      f"kv cache {'on' if use_kv_cache else 'off'})", file=sys.stderr)
