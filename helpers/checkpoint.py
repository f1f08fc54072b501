"""Checkpoints in nanoGPT's format both ways (plain values: weights_only=True) and GPT-2's weights; one-line errors."""
import errno
import os
import pickle
import random
import shlex
import socket
import re
import shutil
import warnings

import numpy as np
import torch

from helpers import UserError, data, files, runs, tokenizer
from helpers.runs import CKPT_NAME, LATEST_NAME  # noqa: F401 (the scripts name them through checkpoint)
from model import GPT, GPTConfig

NANOGPT_MODEL_ARGS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size', 'dropout')
PRETRAINED = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')  # 124M, 350M, 774M and 1558M parameters
TORCH_LEGACY_HEAD = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)  # torch.save before 1.6
RUNS_CODE = re.compile(r"GLOBAL \S+|reduce for \S+|Can only [^.\n]+")  # in torch.load(weights_only=True)'s refusals
DISK_FIXES = {errno.ENOSPC: 'free some space on that disk', errno.EDQUOT: 'free some of your disk quota',
              errno.EFBIG: 'raise the file-size limit (ulimit -f)'}

def architecture_entries(config):
    """model_args with nanoGPT's keys alone (its GPTConfig takes them), model_args_extra with other non-defaults."""
    defaults = GPTConfig()
    entries = {'model_args': {k: getattr(config, k) for k in NANOGPT_MODEL_ARGS}}
    extra = {k: getattr(config, k) for k in GPTConfig.__dataclass_fields__
             if k not in NANOGPT_MODEL_ARGS and getattr(config, k) != getattr(defaults, k)}
    return {**entries, 'model_args_extra': extra} if extra else entries

def _write(path, write):
    """files.write_atomically, with a full disk or a file-size limit as one line saying what survived."""
    try:
        files.write_atomically(path, write)
    except Exception as cause:
        while cause is not None and not (isinstance(cause, OSError) and cause.errno):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        kept, fix = runs.checkpoints(os.path.dirname(path) or '.'), DISK_FIXES.get(cause.errno, 'fix that')
        raise UserError(f"could not save {path} ({cause.strerror}); " + (
            f"the checkpoints already there ({' and '.join(kept)}) are intact: {fix}, then continue with "
            "--init_from=resume" if kept else f"nothing was saved: {fix} and train again")) from None

def save(checkpoint, out_dir, name=CKPT_NAME):
    """Write out_dir/name atomically; returns its path."""
    path = os.path.join(out_dir, name)
    def write(tmp):
        with open(tmp, 'wb') as f:
            torch.save(checkpoint, f)
    _write(path, write)
    return path

def mirror(out_dir, source_name, target_name):
    """Make target the same checkpoint as source: a hard link where the filesystem has them, else a copy."""
    source = os.path.join(out_dir, source_name)
    def link(tmp):
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    _write(os.path.join(out_dir, target_name), link)

def _missing(out_dir, path):
    if os.path.isfile(out_dir):
        return f"out_dir '{out_dir}' is a file, not a folder; pass the folder of a training run with --out_dir"
    if not os.path.isdir(out_dir) and 'RANK' in os.environ:  # under torchrun: a node without the run's folder
        return (f"out_dir '{out_dir}' does not exist on node {socket.gethostname()}; a run on several nodes needs "
                "its out_dir on storage that every node sees")
    if not os.path.isdir(out_dir):
        return (f"out_dir '{out_dir}' does not exist; train a model there first "
                f"(python train.py --out_dir={out_dir} ...) or pass the right --out_dir")
    if note := runs.replaced_run_note(out_dir):
        return f"no checkpoint at {path}: {note}"
    if os.path.isfile(os.path.join(out_dir, 'config.json')):
        return f"no checkpoint at {path}: {out_dir} holds a transformers model; load it with --init_from={out_dir}"
    return f"no checkpoint at {path}; train a model into '{out_dir}' first or pass the right --out_dir"

def _damaged(out_dir, name, detail):
    """The one line for a checkpoint that does not load: what the other checkpoint beside it offers."""
    path = os.path.join(out_dir, name)
    other = CKPT_NAME if name == LATEST_NAME else LATEST_NAME
    whole = runs.summary(out_dir, other)  # None unless it loads
    fix = (f"{other} beside it loads ({whole}): to use it, move the damaged file aside "
           f"(mv {shlex.quote(path)} {shlex.quote(path + '.damaged')}) and run the same command again"
           if whole else "restore it from a backup or train again")
    return UserError(f"{path} is truncated or corrupt ({detail}); {fix}")

def load(out_dir, name=CKPT_NAME, map_location='cpu', mmap=False):
    """A checkpoint dict, with one-line errors for missing, corrupt or unsafe files; mmap shares the file's pages."""
    path = os.path.join(out_dir, name)
    if not os.path.isfile(path):
        raise UserError(_missing(out_dir, path))
    with open(path, 'rb') as f:
        head = f.read(len(TORCH_LEGACY_HEAD))
    if head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05') and head != TORCH_LEGACY_HEAD:
        raise UserError(f"{path} is not a checkpoint that this project or nanoGPT wrote: it is a plain pickle, not "
                        "a torch.save file, and was not loaded; pass the out_dir of a training run")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # torch's notes (pickle protocols, mmap) would bury the one line
            checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if code := RUNS_CODE.search(str(e)):
            raise UserError(f"{path} was refused: it holds objects that would run code when loaded "
                            f"({code.group(0)}); only load checkpoints you trust, re-saved as plain tensors")
        # bytes that are no pickle at all: damage, not danger; torch wraps the complaint in advice, left out
        lines = [line.strip().split('WeightsUnpickler error:')[-1].strip() for line in str(e).splitlines()]
        raise _damaged(out_dir, name, next((line for line in lines if line and not line.startswith(
            ('Weights only load failed', 'Please file an issue', 'Check the documentation'))), 'not a pickle'))
    except Exception as e:  # whatever else torch.load trips over in a damaged file
        raise _damaged(out_dir, name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    missing = [k for k in ('model', 'model_args') if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise UserError(f"{path} is not a training checkpoint: it has no {' or '.join(missing)}")
    return checkpoint

def model_from_checkpoint(checkpoint, **overrides):
    """The checkpoint's GPT (overrides such as dropout), without nanoGPT's '_orig_mod.' prefixes and mask buffers."""
    args = {**checkpoint['model_args'], **checkpoint.get('model_args_extra', {}), **overrides}
    unknown = set(args) - set(GPTConfig.__dataclass_fields__)
    if args.get('activation', 'gelu') not in ('gelu', 'gelu_tanh'):
        unknown.add(f"activation={args['activation']!r}")
    if unknown:
        raise UserError(f"checkpoint model_args has unknown keys {sorted(unknown)}; it was written by a newer version")
    model = GPT(GPTConfig(**args))
    state = {k.removeprefix('_orig_mod.'): v for k, v in checkpoint['model'].items()}
    model.load_state_dict({k: v for k, v in state.items() if not (k.endswith('.attn.bias') and v.dim() == 4)})
    return model

def pretrained(name, dropout=0.0):
    """GPT.from_pretrained (OpenAI's GPT-2 or a transformers GPT-2 folder, its interrupted export completed first)."""
    if name not in PRETRAINED:
        files.finish_swaps(os.path.dirname(os.path.abspath(name)))
        if not os.path.isdir(name):
            raise UserError(f"unknown init_from '{name}'; use scratch (train.py), resume (with --out_dir), one of "
                            f"{', '.join(PRETRAINED)}, or a directory holding a transformers GPT-2 checkpoint")
    try:
        from safetensors import SafetensorError
        return GPT.from_pretrained(name, dict(dropout=dropout))
    except (ImportError, OSError) as e:  # no transformers, no network, or not a GPT-2 checkpoint
        raise UserError(f"could not load '{name}' through transformers: {str(e).strip().splitlines()[0]}")
    except SafetensorError as e:
        raise UserError(f"{name}: model.safetensors is truncated or corrupt ({e}); save or download it again")
    except pickle.UnpicklingError as e:  # torch.load(weights_only=True) stopped before running anything
        found = RUNS_CODE.search(str(e))
        raise UserError(f"{name} was refused: its pytorch_model.bin would run code when loaded"
                        f"{f' ({found.group(0)})' if found else ''}; load only models you trust, re-saved as "
                        "safetensors (model.save_pretrained(folder) writes model.safetensors)")
    except ValueError as e:  # from_pretrained's own checks: an activation or parameters GPT-2 lacks
        raise UserError(str(e))

def load_model(init_from, out_dir):
    """(model, checkpoint or None) to run: out_dir's checkpoint (init_from='resume') or pretrained weights."""
    if init_from == 'resume':
        ckpt = load(out_dir, runs.sample_name(out_dir))
        return model_from_checkpoint(ckpt, dropout=0.0), ckpt
    return pretrained(init_from), None

def tokenizer_of(init_from, model, ckpt):
    """The tokenizer of load_model's model: its checkpoint's vocabulary, or that of the pretrained folder."""
    if ckpt is not None:
        return tokenizer.from_entry(data.checkpoint_entry(ckpt))
    return tokenizer.for_pretrained(init_from, model.config.vocab_size)

def capture_rng_states(device):
    """This process's random states as plain values: Python's, numpy's, torch's CPU one and the device's (no other)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {'python': random.getstate(), 'torch': torch.get_rng_state(),
              'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                        'has_gauss': int(has_gauss), 'cached_gaussian': float(gauss)}}
    device = torch.device(device)
    if device.type in ('cuda', 'mps'):
        states[device.type] = torch.get_device_module(device).get_rng_state(device)
    return states

def restore_rng_states(states, device):
    random.setstate(states['python'])
    n = states['numpy']
    np.random.set_state((n['kind'], np.asarray(n['keys'], np.uint32), n['pos'], n['has_gauss'], n['cached_gaussian']))
    torch.set_rng_state(states['torch'])
    device = torch.device(device)
    state = states.get(device.type)
    if isinstance(state, list):  # earlier versions saved every GPU's state
        state = state[device.index or 0] if (device.index or 0) < len(state) else None
    if state is not None:
        torch.get_device_module(device).set_rng_state(state, device)
