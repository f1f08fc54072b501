"""HellaSwag (Zellers et al., 2019): which of four endings of a sentence does the model find likeliest?
Its validation set, 10,042 examples, is the usual yardstick of GPT-2-sized models.

Scoring is the "completion style" of GPT-2's published figures: each ending is appended to the
context as GPT-2 BPE tokens (the context's, then those of ' ' + ending, each encoded on its own), the
model reads the four sequences in one batch, and its cross-entropy is summed over the ending's
tokens only. acc counts the examples where the right ending has the lowest sum; acc_norm those where
it has the lowest mean per token, which does not favour short endings. A context plus ending longer
than block_size + 1 tokens loses its first tokens (the model still sees a full window ending with
the ending); OpenAI's GPT-2, 1024 tokens, never needs that.

Only GPT-2 BPE models are scored. A character model's vocabulary (shakespeare_char's 65 characters)
lacks characters the examples use, and a score per character compares with no published figure.

    examples = load()                                  # data/hellaswag/hellaswag_val.jsonl, downloaded once
    correct, correct_norm, count = score(model, examples, device, ctx)
"""
import json
import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.nn import functional as F
from tqdm import tqdm

from helpers import UserError, data
from helpers.prepare import download
from helpers.tokenizer import gpt2_encoding

URL = 'https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl'
FILE_NAME = 'hellaswag_val.jsonl'
VAL_EXAMPLES = 10042


class Example(NamedTuple):
    context: list  # GPT-2 BPE token ids
    endings: list  # four lists of token ids, each encoded from ' ' + the ending
    label: int  # the index of the right ending


def default_path():
    return os.path.join(data.data_dir('hellaswag'), FILE_NAME)


def require_bpe(is_bpe, what):
    """A UserError for character-level models; what names the model (or its dataset)."""
    if not is_bpe:
        raise UserError(f"{what} is character-level; HellaSwag is scored in GPT-2 BPE tokens only, as GPT-2's "
                        "published figures are: leave out --hellaswag=True")


def parse_line(line):
    """(ctx, endings, label) of one line of the official file; a ValueError says what is wrong."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"is not JSON ({e.msg} at column {e.colno})")
    if not isinstance(item, dict):
        raise ValueError("is not a JSON object")
    ctx, endings, label = item.get('ctx'), item.get('endings'), item.get('label')
    if not isinstance(ctx, str) or not ctx:
        raise ValueError("has no 'ctx' text")
    if not (isinstance(endings, list) and len(endings) == 4 and all(isinstance(e, str) for e in endings)):
        raise ValueError("has no 'endings' list of 4 texts")
    if type(label) is not int or not 0 <= label < 4:
        raise ValueError(f"has 'label' {label!r}, not 0, 1, 2 or 3")
    return ctx, endings, label


def load(path=None, limit=None):
    """The first `limit` examples (all by default) of a HellaSwag .jsonl file, tokenized. path=None is
    the official validation file, downloaded into data/hellaswag/ the first time."""
    official = path is None
    if official:
        path = download(URL, default_path())   # only if it is not there yet
    elif not os.path.isfile(path):
        raise UserError(f"HellaSwag file {path} does not exist; pass the path of hellaswag_val.jsonl ({URL})")
    fix = "delete it to download it again" if official else f"use the official file ({URL})"
    encoding = gpt2_encoding()
    examples = []
    with open(path, encoding='utf-8') as f:
        try:
            for number, line in enumerate(f, 1):
                if len(examples) == limit:
                    break
                if not line.strip():
                    continue
                try:
                    ctx, endings, label = parse_line(line)
                except ValueError as e:
                    raise UserError(f"{path} is damaged: line {number} {e}; {fix}")
                examples.append(Example(encoding.encode_ordinary(ctx),
                                        [encoding.encode_ordinary(' ' + ending) for ending in endings], label))
        except UnicodeDecodeError:
            raise UserError(f"{path} is damaged: it is not UTF-8 text; {fix}")
    if limit is not None and len(examples) < limit:
        raise UserError(f"{path} holds {len(examples):,} examples, fewer than the {limit:,} asked for; "
                        f"pass --hellaswag_examples={len(examples)} or less")
    if not examples or (official and limit is None and len(examples) != VAL_EXAMPLES):
        raise UserError(f"{path} is damaged: it holds {len(examples):,} examples"
                        f"{f', not {VAL_EXAMPLES:,}' if official else ''}; {fix}")
    return examples


def batch(example, block_size):
    """Inputs and targets (4, T) of the four endings, padded to the longest: a target is -1 wherever
    no ending token is predicted (the context and the padding)."""
    rows = []
    for ending in example.endings:
        tokens = (example.context + ending)[-(block_size + 1):]
        scored = min(len(ending), len(tokens) - 1)  # the first token of a window is never predicted
        rows.append((tokens[:-1], [-1] * (len(tokens) - 1 - scored) + tokens[-scored:]))
    length = max(len(x) for x, _ in rows)
    x = torch.tensor([x + [0] * (length - len(x)) for x, _ in rows])
    y = torch.tensor([y + [-1] * (length - len(y)) for _, y in rows])
    return x, y


@torch.no_grad()
def choose(model, example, device, ctx):
    """(the ending with the lowest summed loss, the one with the lowest mean loss per token)."""
    x, y = (t.to(device) for t in batch(example, model.config.block_size))
    with ctx:
        logits, _ = model(x, y)  # with targets, GPT.forward returns every position's logits
    losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction='none')
    total = losses.view_as(y).sum(1)
    mean = total / (y != -1).sum(1)
    return total.argmin().item(), mean.argmin().item()


def score(model, examples, device, ctx, rank=0, world_size=1, progress=False):
    """(correct, correct_norm, count) over examples rank, rank + world_size, ...: under torchrun every
    rank scores its share and the caller sums the three counts over the ranks (see acc_norm)."""
    was_training = model.training
    model.eval()
    correct = correct_norm = count = 0
    for example in tqdm(examples[rank::world_size], desc='hellaswag', unit=' examples',
                        disable=None if progress else True):
        best, best_norm = choose(model, example, device, ctx)
        correct += best == example.label
        correct_norm += best_norm == example.label
        count += 1
    model.train(was_training)
    return correct, correct_norm, count


def acc_norm(model, examples, device, ctx, fsdp=False):
    """acc_norm over examples as train.py scores it at its evaluations: under torchrun each rank scores
    every world_size-th example and the counts are summed (under FSDP the ranks with one example
    less run one more forward, as the shards meet in each)."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    with torch.compiler.set_stance('force_eager'):  # a compiled model would compile again for every length
        counts = score(model, examples, device, ctx, rank, world_size)
        if fsdp and counts[2] < -(-len(examples) // world_size):
            score(model, examples[:1], device, ctx)
    if dist.is_initialized():
        counts = torch.tensor(counts, device=device)
        dist.all_reduce(counts)
        counts = counts.tolist()
    return counts[1] / counts[2]
