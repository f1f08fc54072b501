"""Tiny character datasets (in the session's data folder) and checkpoints in train.py's format, for the export,
evaluation and plotting tests."""
import contextlib
import os
import shutil

import numpy as np
import torch

from helpers import checkpoint
from conftest import DATA_ROOT, write_char_dataset
from model import GPT, GPTConfig

CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz ,.;:!?'\nABCDEFGHIJ"))

@contextlib.contextmanager
def char_dataset(tag):
    """data/_test_<tag> while in use: 6000 train and 1003 val tokens of random text over CHARS, in runs of two letters
    so that a few training steps lower the loss."""
    ids = np.random.default_rng(0).integers(0, len(CHARS), 7003)
    ids[1::2] = ids[0::2][:len(ids[1::2])]
    write_char_dataset(f'_test_{tag}', ''.join(CHARS[i] for i in ids), val_fraction=1003 / 7003)
    try:
        yield f'_test_{tag}'
    finally:
        shutil.rmtree(os.path.join(DATA_ROOT, f'_test_{tag}'), ignore_errors=True)

def make_model(activation='gelu', bias=True, block_size=16, n_layer=2, n_head=2, n_embd=32, seed=0,
               vocab_size=len(CHARS)):
    """A GPT with large random weights: activations of order 1 and logits of order 10, so that a wrong GELU, a
    missing bias or a transposed matrix shows far above the tolerances (0.02-std weights keep all near 0)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                          bias=bias, activation=activation))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('ln_1.weight', 'ln_2.weight', 'ln_f.weight')):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.normal_(0.0, 0.3)  # biases
            elif 'wte' in name or 'wpe' in name:
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 1.5 / p.shape[1] ** 0.5)  # unit-ish gain per Linear
    return model.eval()

def save_checkpoint(model, out_dir, dataset_name, iter_num=100):
    os.makedirs(out_dir, exist_ok=True)
    torch.save({'model': model.state_dict(), 'optimizer': {}, **checkpoint.architecture_entries(model.config),
                'iter_num': iter_num, 'best_val_loss': 9.9,
                'config': {'dataset': dataset_name, 'batch_size': 4, 'eval_iters': 3, 'seed': 1337}},
               os.path.join(out_dir, 'ckpt.pt'))
    return os.path.join(out_dir, 'ckpt.pt')

def full_logits(model, idx):
    """Every position's logits from GPT.forward itself (targets make it return them all)."""
    with torch.no_grad():
        return model(idx, idx)[0]
