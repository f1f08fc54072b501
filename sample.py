"""
Sample from a trained model, or from OpenAI's GPT-2.
$ python sample.py --out_dir=out-shakespeare-char
$ python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=5
$ python sample.py --out_dir=out-shakespeare-char --prompts=prompts.txt --stop="'\\n\\n'" --top_p=0.9
"""
import sys
import time

import torch

import configurator
from helpers import UserError, checkpoint, hardware, tokenizer

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (from out_dir), a gpt2 variant (e.g. 'gpt2-xl') or a transformers GPT-2 directory
out_dir = 'out'  # ignored if init_from is not 'resume'
start = "\n"  # or "<|endoftext|>" or etc. Can also specify a file, use as: "FILE:prompt.txt"
prompts = ''  # a file with one prompt per line: num_samples samples of each (instead of start)
num_samples = 10  # number of samples to draw
max_new_tokens = 500  # number of tokens generated in each sample
temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random, in predictions
top_k = 200  # retain only the top_k most likely tokens, clamp others to have 0 probability
top_p = 1.0  # nucleus sampling: keep the fewest most likely tokens whose probabilities reach top_p (1.0: off)
stop_at_end = True  # end a sample at <|endoftext|> (GPT-2) or at the dataset's document separator
stop = None  # a string, or a list of strings, that ends a sample when it appears, e.g. --stop="'\n\n'"
seed = 1337
device = hardware.best_device()  # 'cpu', 'cuda', 'cuda:0', 'mps', ...
dtype = hardware.default_dtype(device)  # 'float32', 'bfloat16' or 'float16'
compile = False  # use PyTorch 2.0 to compile the model to be faster
use_kv_cache = True  # feed one new position per step instead of the whole context again
stream = True  # print text as it is generated; False generates each prompt's samples in one batch, then prints
# -----------------------------------------------------------------------------
explicit = configurator.configure_sampling(globals())
dtype, ctx = hardware.setup(device, dtype if 'dtype' in explicit else None)
stop_strings = [stop] if isinstance(stop, str) else list(stop) if isinstance(stop, (list, tuple)) else []
if stop is not None and not (stop_strings and all(isinstance(s, str) and s for s in stop_strings)):
    raise UserError(f"stop must be a non-empty string or a list of them, got {stop!r}; e.g. --stop=THE END "
                    "or --stop=\"['\\n\\n', 'THE END']\"")
if prompts and 'start' in explicit:
    raise UserError("give the prompt with --start or the prompts with --prompts, not both")

model, ckpt = checkpoint.load_model(init_from, out_dir)
tok = checkpoint.tokenizer_of(init_from, model, ckpt)
del ckpt  # its weights: a second copy of the model's
model.eval().to(device)
if compile:  # generate() calls the model's forward directly: compile that, with shapes that vary per step
    model.forward = torch.compile(model.forward, dynamic=True)
prompt_texts = tokenizer.read_prompts(start, prompts)
prompt_ids = [tok.encode(text) for text in prompt_texts]

class SampleText:
    """One sample's text as its tokens arrive, cut before the end token or a stop string; a tail that could
    begin a stop string waits, so nothing after a stop is ever printed, even when it spans tokens."""
    def __init__(self):
        self.decode_next = tok.stream_decoder()
        self.pending = ''  # decoded, not yet handed out
        self.done = False

    def add(self, token):
        """Take the next token; return the text that is final now (to print)."""
        if stop_at_end and token == tok.end_token:
            self.done = True
        else:
            self.pending += self.decode_next(token)
            cut = min((i for i in map(self.pending.find, stop_strings) if i >= 0), default=-1)
            if cut >= 0:
                self.pending, self.done = self.pending[:cut], True
        hold = 0 if self.done else max((n for s in stop_strings for n in range(1, len(s))
                                        if self.pending.endswith(s[:n])), default=0)
        ready, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return ready

def sample_batch(ids, first_sample, count):
    """count samples of one prompt, numbered from first_sample: yields one piece of text per sample a step."""
    global n_tokens
    x = torch.tensor(ids, dtype=torch.long, device=device)[None].expand(count, -1)
    generators = [torch.Generator(device=device).manual_seed(seed + k)
                  for k in range(first_sample, first_sample + count)]
    texts = [SampleText() for _ in range(count)]
    for step in model.generate_tokens(x, max_new_tokens, temperature, top_k, top_p=top_p, use_cache=use_kv_cache,
                                      generators=generators):
        n_tokens += count
        yield [t.add(token) if not t.done else '' for t, token in zip(texts, step[:, 0].tolist())]
        if all(t.done for t in texts):
            return
    yield [t.pending for t in texts]  # max_new_tokens reached: what was held back is final too

n_tokens, t0 = 0, time.time()
with torch.no_grad(), ctx:
    for p, (text, ids) in enumerate(zip(prompt_texts, prompt_ids)):
        if prompts:
            print(f"=== prompt {p + 1}/{len(prompt_texts)}: {text!r} ===")
        if stream:
            for k in range(num_samples):
                sys.stdout.write(text)
                for [piece] in sample_batch(ids, k, 1):
                    print(piece, end='', flush=True)
                print('\n---------------')
        else:
            steps = list(sample_batch(ids, 0, num_samples))  # each step: a piece of text per sample
            for pieces in zip(*steps):
                print(f"{text}{''.join(pieces)}\n---------------")
hardware.sync(device)
elapsed = time.time() - t0
print(f"generated {n_tokens} tokens in {elapsed:.2f}s ({n_tokens / elapsed:.1f} tokens/s, "
      f"kv cache {'on' if use_kv_cache else 'off'})", file=sys.stderr)
