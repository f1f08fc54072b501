"""What export_onnx.py and export_hf.py share: loading the checkpoint, the check against PyTorch's logits, a check
that the output can be written, and the replacement of an earlier export only once the new one is whole."""
import os
import tempfile

import torch

from helpers import UserError, checkpoint, data, files

def load_checkpoint(out_dir):
    """out_dir's checkpoint: the model (float32, eval mode), the checkpoint without its weights, and its tokenizer
    entry (None for a nanoGPT checkpoint whose meta.pkl is gone: the weights are still of use)."""
    model, ckpt = checkpoint.load_model('resume', out_dir)
    model.float().eval()
    ckpt = {k: v for k, v in ckpt.items() if k not in ('model', 'optimizer', 'scaler')}  # the rest is small
    try:
        return model, ckpt, data.checkpoint_entry(ckpt)
    except UserError:
        return model, ckpt, None

def random_prompts(vocab_size, block_size, seed):
    """Token batches for the checks: full windows, a short batch, one token."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, block_size), (3, min(block_size, 7)), (1, 1)]
    return [torch.randint(vocab_size, shape, generator=g) for shape in shapes]

@torch.no_grad()
def max_logit_difference(model, logits_of, prompts):
    """Largest |logits_of(idx) - model's logits| over every position of every prompt, and the largest |logit|."""
    worst, scale = 0.0, 0.0
    for idx in prompts:
        expected, _ = model.eval()(idx, idx)  # with targets, GPT.forward returns every position's logits
        got = logits_of(idx)
        if got.shape != expected.shape:
            raise RuntimeError(f"the export returned logits of shape {tuple(got.shape)}, not {tuple(expected.shape)}")
        worst = max(worst, (got.float() - expected.float()).abs().max().item())
        scale = max(scale, expected.abs().max().item())
    return worst, scale

def writable(path):
    """A UserError unless path can be created: a folder made and removed in the nearest existing folder above
    it says so (permissions alone do not: root, read-only filesystems)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    try:
        os.rmdir(tempfile.mkdtemp(dir=folder, prefix='.write-test-'))
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}: {folder}); pass another --output")

def replace_with(new, target):
    """Put new (a file or a folder beside target) at target as one change (files.swap): the old one goes
    only once the new one is in place, and a kill in between leaves a change the next export completes."""
    files.swap(os.path.dirname(os.path.abspath(target)), [(os.path.abspath(new), os.path.abspath(target))],
               what=f'replacing {target} with a new export')
