"""
Loss and perplexity of a model on a dataset's splits, on tokens fixed in advance, so that
two models (or two checkpoints) are compared on exactly the same text.

$ python evaluate.py --out_dir=out-shakespeare-char                   # fixed batches, train and val
$ python evaluate.py --out_dir=out-shakespeare-char --full_pass=True  # every token of val.bin
$ python evaluate.py --init_from=gpt2 --dataset=openwebtext --eval_iters=500 --batch_size=8

Two modes:
- fixed batches (default): eval_iters batches of batch_size random windows of block_size
  tokens per split, drawn from a torch.Generator seeded by dataset.eval_batch_seed, as in
  train.py's evaluation. With the checkpoint's own
  batch_size, eval_iters and seed (the defaults) the numbers are those train.py printed
  when it saved that checkpoint.
- full pass (--full_pass=True, val only unless --splits says otherwise): the split cut into
  consecutive non-overlapping windows of block_size tokens, each window predicting the
  tokens that follow its positions. The last window is shorter and holds whatever remains,
  so every token of the file except the first (which has nothing before it) is predicted
  exactly once. Each window starts with an empty context, as in training. The loss is the
  mean over all predicted tokens.

Perplexity is exp(loss), per token of the dataset (per character for character-level data).
"""
import json
import math
import os
import time

import numpy as np
import torch
from torch.nn import functional as F

import configurator
from helpers import UserError, checkpoint, data, hardware

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (the checkpoint in out_dir), gpt2, gpt2-medium, gpt2-large, gpt2-xl or a transformers GPT-2 directory
out_dir = 'out'
dataset = ''  # default: the dataset the checkpoint was trained on (openwebtext for GPT-2)
splits = 'train,val'  # comma-separated; with full_pass the default is val alone
full_pass = False  # every token of each split once, instead of fixed random batches
eval_iters = None  # batches per split; default: the checkpoint's training setting (200 for GPT-2)
batch_size = None  # sequences per batch; default: the checkpoint's training setting (8 for GPT-2)
block_size = None  # tokens per sequence; default and maximum: the model's block_size
seed = None  # for the fixed batches; default: the checkpoint's training seed (1337 for GPT-2)
results_file = ''  # also write the numbers to this JSON file
device = hardware.best_device()
dtype = hardware.default_dtype(device)  # 'float32', 'bfloat16' or 'float16'
compile = False
# -----------------------------------------------------------------------------

GPT2_VOCAB_SIZE = 50257


@torch.no_grad()
def fixed_batch_loss(model, path, token_dtype, batch_size, block_size, eval_iters, generator_seed, device, ctx):
    """Mean loss over eval_iters batches drawn from a generator seeded with generator_seed."""
    generator = torch.Generator().manual_seed(generator_seed)
    losses = torch.zeros(eval_iters, device=device)
    for k in range(eval_iters):
        x, y = data.get_batch(path, token_dtype, batch_size, block_size, device, generator)
        with ctx:
            _, loss = model(x, y)
        losses[k] = loss
    return losses.mean().item()


def full_pass_windows(n_tokens, block_size):
    """(start, length) of the windows of a full pass over n_tokens tokens: window i reads
    tokens start..start+length-1 and predicts start+1..start+length. Together they predict
    tokens 1..n_tokens-1, each once."""
    n_targets = n_tokens - 1
    return [(start, min(block_size, n_targets - start)) for start in range(0, n_targets, block_size)]


@torch.no_grad()
def full_pass_loss(model, path, token_dtype, batch_size, block_size, device, ctx, report_every=None):
    """Mean loss over every predicted token of the file, and the number of tokens predicted."""
    n_tokens = len(data.open_tokens(path, token_dtype))
    if n_tokens < 2:
        raise UserError(f"{path} holds {n_tokens} token(s); a full pass needs at least 2")
    windows = full_pass_windows(n_tokens, block_size)
    # windows of equal length go through the model together
    batches = []
    for length in sorted({w[1] for w in windows}, reverse=True):
        same = [w[0] for w in windows if w[1] == length]
        batches += [(same[i:i + batch_size], length) for i in range(0, len(same), batch_size)]
    total_nll, n_predicted, t0 = 0.0, 0, time.time()
    for b, (starts, length) in enumerate(batches):
        tokens = data.open_tokens(path, token_dtype)  # fresh memmap per batch, as data.get_batch does
        rows = tokens[np.asarray(starts)[:, None] + np.arange(length + 1)].astype(np.int64)
        chunk = torch.from_numpy(rows).to(device)
        x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
        with ctx:
            logits, _ = model(x, y)
        total_nll += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                     reduction='sum').item()
        n_predicted += y.numel()
        if report_every and (b + 1) % report_every == 0:
            print(f"  {b + 1}/{len(batches)} batches, {n_predicted:,} tokens, {time.time() - t0:.0f}s", flush=True)
    return total_nll / n_predicted, n_predicted


def perplexity(loss):
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def load_model():
    """The model, the dataset it goes with and the training settings that set our defaults."""
    model, ckpt = checkpoint.load_model(init_from, out_dir)
    if ckpt is not None:
        where = f"{os.path.join(out_dir, checkpoint.sample_name(out_dir))} (iter {ckpt.get('iter_num', '?')})"
        return model, dict(ckpt.get('config') or {}), where
    return model, dict(dataset='openwebtext', eval_iters=200, batch_size=8, seed=1337), init_from


def positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


def main(explicit):
    global dataset, eval_iters, batch_size, block_size, seed, splits
    model, trained, where = load_model()
    dataset = dataset or trained.get('dataset')
    if not dataset:
        raise UserError("the checkpoint does not say which dataset it was trained on; pass --dataset=...")
    eval_iters = positive_int('eval_iters', eval_iters if eval_iters is not None else trained.get('eval_iters', 200))
    batch_size = positive_int('batch_size', batch_size if batch_size is not None else trained.get('batch_size', 8))
    seed = seed if seed is not None else trained.get('seed', 1337)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"seed must be an integer, got {seed!r}")
    block_size = positive_int('block_size', block_size if block_size is not None else model.config.block_size)
    if block_size > model.config.block_size:
        raise UserError(f"block_size {block_size} is larger than the model's {model.config.block_size}")
    if full_pass and 'splits' not in explicit:
        splits = 'val'
    split_names = [s.strip() for s in splits.split(',') if s.strip()]
    if not split_names:
        raise UserError("splits is empty; use e.g. --splits=val or --splits=train,val")

    meta = data.read_meta(dataset)
    token_dtype = data.token_dtype(meta)
    vocab_size = model.config.vocab_size
    if meta is not None and meta.get('vocab_size') != vocab_size:
        raise UserError(f"data/{dataset} has a {meta.get('vocab_size')}-symbol vocabulary but the model has "
                        f"{vocab_size}; evaluate on the dataset the model was trained on")
    if meta is None and vocab_size < GPT2_VOCAB_SIZE:
        raise UserError(f"data/{dataset} is a GPT-2 BPE dataset (no meta.pkl) but the model has a {vocab_size}-symbol "
                        "vocabulary; evaluate on the dataset the model was trained on")
    paths = {s: data.bin_path(dataset, s) for s in split_names}
    if not full_pass:
        for s in split_names:
            data.check_split_length(dataset, s, token_dtype, block_size)

    model.eval().to(device)
    if compile:
        model = torch.compile(model)
    print(f"evaluating {where} on data/{dataset}, block_size {block_size}, {dtype} on {device}")
    if full_pass:
        print(f"full pass: consecutive windows of {block_size} tokens, {batch_size} per batch, "
              "every token but the first predicted once")
    else:
        print(f"fixed batches: {eval_iters} batches of {batch_size} x {block_size} tokens per split, seed {seed}")
    results = {}
    for s in split_names:
        t0 = time.time()
        if full_pass:
            loss, n_predicted = full_pass_loss(model, paths[s], token_dtype, batch_size, block_size, device, ctx,
                                               report_every=100)
        else:
            loss = fixed_batch_loss(model, paths[s], token_dtype, batch_size, block_size, eval_iters,
                                    data.eval_batch_seed(seed, s), device, ctx)
            n_predicted = eval_iters * batch_size * block_size
        results[s] = dict(loss=loss, perplexity=perplexity(loss), tokens=n_predicted)
        print(f"{s}: loss {loss:.4f}, perplexity {perplexity(loss):.4f} ({n_predicted:,} tokens, "
              f"{time.time() - t0:.1f}s)")
    if results_file:
        settings = dict(model=where, dataset=dataset, full_pass=full_pass, block_size=block_size,
                        batch_size=batch_size, eval_iters=None if full_pass else eval_iters,
                        seed=None if full_pass else seed, dtype=dtype)
        with open(results_file, 'w', encoding='utf-8') as f:
            json.dump(dict(settings=settings, splits=results), f, indent=2)
        print(f"wrote {results_file}")
    return results


if __name__ == '__main__':
    explicit = configurator.configure(globals())
    dtype, ctx = hardware.setup(device, dtype if 'dtype' in explicit else None)
    main(explicit)
