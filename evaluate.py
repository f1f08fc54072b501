"""
Loss, perplexity and bits per byte of a model on fixed tokens of a dataset's splits, so that models compare on the
same text (by default train.py's evaluation batches); HellaSwag accuracy too.
$ python evaluate.py --out_dir=out-shakespeare-char                   # fixed batches, train and val
$ python evaluate.py --out_dir=out-shakespeare-char --full_pass=True  # every token of val.bin once
$ python evaluate.py --init_from=gpt2 --hellaswag=True --hellaswag_examples=500   # GPT-2 BPE models only
"""
import json
import math
import os
import time
import types

import torch
from tqdm import tqdm

import configurator
from helpers import UserError, checkpoint, data, files, hardware, runs, shown, tokenizer
from helpers import hellaswag as hellaswag_scoring

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (out_dir's checkpoint), a gpt2 variant or a transformers GPT-2 directory
out_dir = 'out'
dataset = ''  # default: the dataset the checkpoint was trained on (openwebtext for GPT-2)
splits = 'train,val'  # comma-separated; with full_pass the default is val alone
full_pass = False  # every token of each split once, instead of fixed random batches
eval_iters = None  # batches per split; default: the checkpoint's training setting (200 for GPT-2)
batch_size = None  # sequences per batch; default: the checkpoint's training setting (8 for GPT-2)
block_size = None  # tokens per sequence; default and maximum: the model's block_size
seed = None  # for the fixed batches; default: the checkpoint's training seed (1337 for GPT-2)
results_file = ''  # also write the numbers to this JSON file
hellaswag = False  # HellaSwag accuracy, instead of the losses unless --splits, --full_pass or --dataset is set
hellaswag_examples = 0  # score the first N examples only (0: all 10,042)
hellaswag_file = ''  # default data/hellaswag/hellaswag_val.jsonl, downloaded on first use
device = hardware.best_device()
dtype = hardware.default_dtype(device)  # 'float32', 'bfloat16' or 'float16'
compile = False
# -----------------------------------------------------------------------------

# for GPT-2's own weights and what a checkpoint lacks: train.py's eval_iters and seed, config/eval_gpt2*.py's batch_size
GPT2_DEFAULTS = dict(dataset='openwebtext', eval_iters=200, batch_size=8, seed=1337)
WRITTEN_BY = {'written_by': 'evaluate.py'}  # in every results file: the mark of a file this script may replace

@torch.no_grad()
def fixed_batch_loss(model, path, token_dtype, batch_size, block_size, eval_iters, generator_seed, device, ctx,
                     byte_counts=None):
    """The mean loss and bits per byte of eval_iters batches drawn from a generator seeded with generator_seed."""
    generator, sums = torch.Generator().manual_seed(generator_seed), torch.zeros(3, device=device)
    for _ in range(eval_iters):
        x, y = data.get_batch(path, token_dtype, batch_size, block_size, device, generator)
        with ctx:
            sums += data.summed_loss(model, x, y, byte_counts)
    return sums[0].item() / (eval_iters * batch_size * block_size), data.bits_per_byte(sums.tolist())

def full_pass_windows(n_tokens, block_size):
    """(start, length) of consecutive windows, the last one shorter: they predict tokens 1..n_tokens-1 once each."""
    return [(start, min(block_size, n_tokens - 1 - start)) for start in range(0, n_tokens - 1, block_size)]

@torch.no_grad()
def full_pass_loss(model, path, token_dtype, batch_size, block_size, device, ctx, byte_counts=None):
    """The mean loss and bits per byte over every predicted token of the file, and the number of tokens predicted."""
    windows = full_pass_windows(os.path.getsize(path) // token_dtype.itemsize, block_size)
    full = [start for start, n in windows if n == block_size]  # batched; the shorter last window goes alone
    batches = [(full[i:i + batch_size], block_size) for i in range(0, len(full), batch_size)] + \
        [([start], n) for start, n in windows if n < block_size]
    sums, n_predicted = [0.0, 0.0, 0.0], 0  # in Python's float64: a pass may predict billions of tokens
    for starts, length in tqdm(batches, desc=f'full pass over {os.path.basename(path)}', unit=' batches', disable=None):
        x, y = data.get_windows(path, token_dtype, starts, length, device)
        with ctx:
            sums = [a + b for a, b in zip(sums, data.summed_loss(model, x, y, byte_counts).tolist())]
        n_predicted += y.numel()
    return sums[0] / n_predicted, data.bits_per_byte(sums), n_predicted

def plan_splits(explicit, model, ckpt):
    """The loss evaluation's dataset, splits and batches, checked before anything runs."""
    config = {'dataset': None, **(ckpt.get('config') or {})} if ckpt is not None else {}
    trained = {**GPT2_DEFAULTS, **config, 'block_size': model.config.block_size}  # for the settings not given
    given = dict(dataset=dataset or None, eval_iters=eval_iters, batch_size=batch_size, block_size=block_size,
                 seed=seed)
    settings = {key: trained[key] if value is None else value for key, value in given.items()}
    if not settings['dataset']:
        raise UserError("the checkpoint does not say which dataset it was trained on; pass --dataset=...")
    for key in ('eval_iters', 'batch_size', 'block_size'):
        if type(settings[key]) is not int or settings[key] <= 0:
            raise UserError(f"{key} must be a positive integer, got {settings[key]!r}")
    configurator.check_seed(settings['seed'])
    if settings['block_size'] > model.config.block_size:
        raise UserError(f"block_size {settings['block_size']} is larger than the model's {model.config.block_size}")
    split_names = [s.strip() for s in ('val' if full_pass and 'splits' not in explicit else splits).split(',')]
    meta = data.read_meta(settings['dataset'])
    # a full pass takes files shorter than a window too
    data.check_fits(settings['dataset'], meta, model.config.vocab_size, 1 if full_pass else settings['block_size'],
                    (ckpt or {}).get('tokenizer'), split_names)
    settings['full_pass'] = full_pass
    if full_pass:
        settings.update(eval_iters=None, seed=None)
    paths = {s: data.bin_path(settings['dataset'], s) for s in split_names}
    return types.SimpleNamespace(settings=settings, paths=paths, token_dtype=data.token_dtype(meta),
                                 entry=tokenizer.tokenizer_entry(meta))

def evaluate_splits(model, plan, where, ctx):
    """{split: {loss, perplexity, tokens}} of the planned splits, printed as they come."""
    window, rows, n_batches = (plan.settings[k] for k in ('block_size', 'batch_size', 'eval_iters'))
    print(f"evaluating {where} on {shown(data.data_dir(plan.settings['dataset']))}, block_size {window}, "
          f"{dtype} on {device}")
    if full_pass:
        print(f"full pass: {rows} consecutive windows of {window} tokens a batch, every token but the first once")
    else:
        print(f"fixed batches: {n_batches} batches of {rows} x {window} tokens per split, seed {plan.settings['seed']}")
    results, byte_counts = {}, data.token_bytes(plan.entry, model.config.vocab_size, device)
    for s, path in plan.paths.items():
        t0 = time.time()
        if full_pass:
            loss, bpb, n_predicted = full_pass_loss(model, path, plan.token_dtype, rows, window, device, ctx,
                                                    byte_counts)
        else:
            loss, bpb = fixed_batch_loss(model, path, plan.token_dtype, rows, window, n_batches,
                                         data.eval_batch_seed(plan.settings['seed'], s), device, ctx, byte_counts)
            n_predicted = n_batches * rows * window
        perplexity = math.inf if loss > 700 else math.exp(loss)  # exp overflows past 709; a NaN stays NaN
        results[s] = dict(loss=loss, perplexity=perplexity, bpb=bpb, tokens=n_predicted)
        print(f"{s}: loss {loss:.4f}, perplexity {perplexity:.4f}" + (f", {bpb:.4f} bits per byte" if bpb else '')
              + f" ({n_predicted:,} tokens, {time.time() - t0:.1f}s)")
    return results

def ours(path):
    """Whether the file at path holds results this script wrote (and may replace)."""
    try:  # a results file is small: a large one (a checkpoint named by mistake) is not read through
        with open(path, encoding='utf-8') as f:
            return os.path.getsize(path) < 1 << 20 and json.load(f)['written_by'] == WRITTEN_BY['written_by']
    except (OSError, ValueError, TypeError, KeyError):  # unreadable, not JSON, not our JSON
        return False

def main(explicit, ctx):
    if results_file:
        if not os.path.isdir(os.path.dirname(os.path.abspath(results_file))):  # refuse_foreign refuses a folder
            raise UserError(f"--results_file={results_file} lies in a folder that does not exist; pass the path of "
                            "a .json file in an existing folder")
        files.refuse_foreign(results_file, ours, 'evaluate.py', '--results_file')
    configurator.require_range(globals(), 0, math.inf, 'hellaswag_examples')  # as train.py: 0 is all of them
    model, ckpt = checkpoint.load_model(init_from, out_dir)
    where = init_from if ckpt is None else \
        f"{os.path.join(out_dir, runs.sample_name(out_dir))} (iter {ckpt.get('iter_num', '?')})"
    losses = not hellaswag or any(k in explicit for k in ('splits', 'full_pass', 'dataset'))
    plan = plan_splits(explicit, model, ckpt) if losses else None
    if hellaswag:
        is_bpe = isinstance(checkpoint.tokenizer_of(init_from, model, ckpt), tokenizer.BPETokenizer)
        hellaswag_scoring.require_bpe(is_bpe, where)
        examples = hellaswag_scoring.load(hellaswag_file or None, hellaswag_examples)
    del ckpt
    model.eval().to(device)
    if compile:
        model = torch.compile(model)
    output = dict(WRITTEN_BY, settings=dict(model=where, dtype=dtype))
    if plan is not None:
        output['settings'].update(plan.settings)
        output['splits'] = evaluate_splits(model, plan, where, ctx)
    if hellaswag:
        output['settings']['hellaswag_file'] = hellaswag_file or hellaswag_scoring.default_path()
        print(f"evaluating {where} on HellaSwag: {len(examples):,} examples, {dtype} on {device}")
        t0 = time.time()
        correct, correct_norm, count = hellaswag_scoring.score(model, examples, device, ctx, progress=True)
        seconds = time.time() - t0
        print(f"hellaswag: acc {correct / count:.4f}, acc_norm {correct_norm / count:.4f} ({count:,} examples, "
              f"{seconds:.1f}s, {count / seconds:.2f} examples/s)")
        output.update(hellaswag_acc=correct / count, hellaswag_acc_norm=correct_norm / count, hellaswag_examples=count)
    if results_file:
        files.write_text(results_file, json.dumps(output, indent=2))
        print(f"wrote {results_file}")
    return output

if __name__ == '__main__':
    explicit = configurator.configure(globals())
    dtype, ctx = hardware.setup(device, dtype if 'dtype' in explicit else None)
    main(explicit, ctx)
