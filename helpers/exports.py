"""What export_onnx.py and export_hf.py share: the checkpoint, the check of the export's logits, the output."""
import contextlib
import os

import torch

from helpers import UserError, checkpoint, data, files, runs

def load_checkpoint(out_dir, path):
    """The model to export to path (float32), the checkpoint without weights, its tokenizer entry (or None)."""
    ckpt = checkpoint.load(out_dir, runs.sample_name(out_dir))
    model = checkpoint.model_from_checkpoint(ckpt, dropout=0.0).float().eval()
    print(f"exporting {model.get_num_params() / 1e6:.2f}M parameters (block_size {model.config.block_size}, "
          f"activation {model.config.activation}) to {path} ...", flush=True)
    ckpt = {k: v for k, v in ckpt.items() if k not in ('model', 'optimizer', 'scaler')}
    try:
        return model, ckpt, data.checkpoint_entry(ckpt)
    except UserError:  # a nanoGPT checkpoint whose meta.pkl is gone: the weights are still of use
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

def check_logits(model, checks, seed, tolerance, package):
    """Print how far each (label, logits function) of checks is from model's logits; a UserError past tolerance."""
    prompts = random_prompts(model.config.vocab_size, model.config.block_size, seed)
    worst = 0.0
    for label, logits_of in checks:
        diff, scale = max_logit_difference(model, logits_of, prompts)
        print(f"{label} vs checkpoint logits: max abs diff {diff:.3g} (largest |logit| {scale:.3g})")
        worst = max(worst, diff)
    if not worst <= tolerance:
        raise UserError(f"the exported model's logits differ by {worst:.3g}, more than tolerance {tolerance:g}, so "
                        f"it was not kept; please report this with your torch and {package} versions")

def writable(path):
    """A UserError unless path can be created: tried with a folder (permissions alone mislead: root, read-only)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    probe = os.path.join(folder, '.write-test')
    with contextlib.suppress(OSError):  # a folder one may write to but not list holds no probe to find
        files.remove_orphaned_temp_files(probe)  # one that a kill left between its two steps
    probe = files.temp_path(probe)
    try:
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}: {folder}); pass another --output")

def replace_with(new, target, removes=()):
    """Put new (beside target) at target and delete removes (names in its folder) as one change (files.swap)."""
    files.swap(os.path.dirname(os.path.abspath(target)), [(os.path.abspath(new), os.path.abspath(target))], removes,
               what=f'replacing {target} with a new export')
