"""HellaSwag (Zellers et al., 2019): which of four endings does the model find likeliest? Scored as GPT-2's figures
are (GPT-2 BPE only): acc by the lowest summed loss over the ending's tokens, acc_norm by the lowest mean per token."""
import json
import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from helpers import UserError, data
from helpers.prepare import download
from helpers.tokenizer import gpt2_encoding

URL = 'https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl'
VAL_EXAMPLES = 10042

class Example(NamedTuple):
    context: list  # GPT-2 BPE token ids
    endings: list  # four lists of token ids, each encoded from ' ' + the ending
    label: int  # the index of the right ending

def default_path():
    return os.path.join(data.data_dir('hellaswag'), os.path.basename(URL))

def require_bpe(is_bpe, what):
    """A UserError for character-level models (no published figure compares); what names the model."""
    if not is_bpe:
        raise UserError(f"{what} is character-level; HellaSwag is scored in GPT-2 BPE tokens only, as GPT-2's "
                        "published figures are: leave out --hellaswag=True")

def parse_line(line, encoding):
    """The Example of one line of the official file, tokenized; a ValueError says what is wrong."""
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
    return Example(encoding.encode_ordinary(ctx), [encoding.encode_ordinary(' ' + e) for e in endings], label)

def load(path=None, limit=0):
    """The first `limit` examples (0: all) of a HellaSwag .jsonl file, tokenized; path=None: the official one."""
    official = path is None
    if official:
        path = download(URL, default_path())   # only if it is not there yet
    elif not os.path.isfile(path):
        raise UserError(f"HellaSwag file {path} does not exist; pass the path of hellaswag_val.jsonl ({URL})")
    fix = "delete it to download it again" if official else f"use the official file ({URL})"
    try:
        with open(path, encoding='utf-8') as f:
            lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError:
        raise UserError(f"{path} is damaged: it is not UTF-8 text; {fix}")
    encoding, examples = gpt2_encoding(), []
    for number, line in lines[:limit or None]:
        try:
            examples.append(parse_line(line, encoding))
        except ValueError as e:
            raise UserError(f"{path} is damaged: line {number} {e}; {fix}")
    if not examples or (official and not limit and len(examples) != VAL_EXAMPLES):
        raise UserError(f"{path} is damaged: it holds {len(examples):,} examples"
                        f"{f', not {VAL_EXAMPLES:,}' if official else ''}; {fix}")
    if limit and len(examples) < limit:
        raise UserError(f"{path} holds {len(examples):,} examples, fewer than the {limit:,} asked for; "
                        f"pass --hellaswag_examples={len(examples)} or less, or 0 for all of them")
    return examples

def batch(example, block_size):
    """Inputs and targets (4, T) of context + ending, padded, targets -1 but on the ending's tokens; a window
    over block_size + 1 tokens loses its first ones (GPT-2's 1024 never needs that)."""
    x, y = [], []
    for ending in example.endings:
        tokens = (example.context + ending)[-(block_size + 1):]
        scored = min(len(ending), len(tokens) - 1)  # the first token of a window is never predicted
        x.append(torch.tensor(tokens[:-1]))
        y.append(torch.tensor([-1] * (len(tokens) - 1 - scored) + tokens[-scored:]))
    return pad_sequence(x, batch_first=True), pad_sequence(y, batch_first=True, padding_value=-1)

@torch.no_grad()
def choose(model, example, device, ctx):
    """(the ending with the lowest summed loss, the one with the lowest mean loss per token)."""
    x, y = (t.to(device) for t in batch(example, model.config.block_size))
    with ctx:
        logits, _ = model(x, y)  # with targets, GPT.forward returns every position's logits
    losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction='none')
    total = losses.view_as(y).sum(1)
    return total.argmin().item(), (total / (y != -1).sum(1)).argmin().item()

def score(model, examples, device, ctx, rank=0, world_size=1, progress=False):
    """(correct, correct_norm, count) over examples rank, rank + world_size, ...: each rank's share."""
    was_training, share = model.training, examples[rank::world_size]
    model.eval()
    bar = tqdm(share, desc='hellaswag', unit=' examples', disable=None if progress else True)
    picks = [(*choose(model, example, device, ctx), example.label) for example in bar]
    model.train(was_training)
    return sum(best == label for best, _, label in picks), sum(norm == label for _, norm, label in picks), len(share)

def acc_norm(model, examples, device, ctx, fsdp=False):
    """acc_norm as train.py's evaluations score it: the ranks' counts summed (under FSDP a rank with one example
    less runs one more forward, as the shards meet in each)."""
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
