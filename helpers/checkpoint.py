"""Saving and loading out_dir/ckpt.pt in nanoGPT's format, in both directions.

A checkpoint is a dict: model (state dict), optimizer, model_args, iter_num,
best_val_loss, config. It holds only tensors and plain Python values, so it loads with
torch.load(weights_only=True) here and in nanoGPT; a file that would need to run code
to unpickle is refused.
"""
import contextlib
import os
import pickle
import re
import socket

import torch

from helpers import UserError
from model import GPT, GPTConfig

CKPT_NAME = 'ckpt.pt'  # nanoGPT's: written at evaluations, when val loss improves or always_save_checkpoint
LATEST_NAME = 'latest.pt'  # the newest state (every evaluation, interrupt and the end); resume reads it first
COMPILED_PREFIX = '_orig_mod.'  # what torch.compile puts in front of every parameter name
NANOGPT_MODEL_ARGS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size', 'dropout')


def architecture_entries(config):
    """The checkpoint entries that describe the model: model_args with exactly nanoGPT's keys, so
    that nanoGPT's GPTConfig(**model_args) accepts every checkpoint written here, and
    model_args_extra with newer GPTConfig fields where they differ from their defaults (GPT-2's
    tanh GELU after from_pretrained). nanoGPT ignores the extra entry and runs such a model with
    the exact GELU, as it does GPT-2 itself."""
    defaults = GPTConfig()
    entries = {'model_args': {k: getattr(config, k) for k in NANOGPT_MODEL_ARGS}}
    extra = {field: getattr(config, field) for field in GPTConfig.__dataclass_fields__
             if field not in NANOGPT_MODEL_ARGS and getattr(config, field) != getattr(defaults, field)}
    if extra:
        entries['model_args_extra'] = extra
    return entries


def temp_path(path, pid=None):
    """Where path is written before its atomic rename by process pid (this one by default).
    Named after the host and process, so that the file of a save killed before its rename can
    be told from a save in progress, on this machine or on another one sharing the folder."""
    return f"{path}.tmp.{socket.gethostname()}.{os.getpid() if pid is None else pid}"


def remove_orphaned_temp_files(path):
    """Delete the temporary files of path left on this host by saves whose process is gone
    (SIGKILL or power loss mid-save). They are never read, only take space; tidying them must
    never stop a save, so any trouble leaves a file where it is."""
    if os.name != 'posix':  # os.kill(pid, 0) only probes a process on POSIX
        return
    folder = os.path.dirname(path) or '.'
    prefix = os.path.basename(temp_path(path, pid=''))
    for entry in os.listdir(folder):
        pid = entry[len(prefix):]
        if not entry.startswith(prefix) or not re.fullmatch(r'[0-9]{1,9}', pid):
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except OSError:  # alive but another user's, or not ours to probe
            continue
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, entry))


def save(checkpoint, out_dir, name=CKPT_NAME):
    """Write atomically: a crash or full disk mid-save leaves the previous file intact."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    remove_orphaned_temp_files(path)
    tmp_path = temp_path(path)
    try:
        with open(tmp_path, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    # make the rename itself durable
    dir_fd = os.open(out_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def mirror(out_dir, source_name, target_name):
    """Make target the same checkpoint as source without writing it twice: an atomic hard link
    where the filesystem has them, a copy otherwise."""
    source, target = os.path.join(out_dir, source_name), os.path.join(out_dir, target_name)
    remove_orphaned_temp_files(target)
    tmp_path = temp_path(target)
    try:
        try:
            os.link(source, tmp_path)
        except OSError:
            import shutil
            shutil.copyfile(source, tmp_path)
        os.replace(tmp_path, target)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def resume_name(out_dir):
    """The file resume reads: latest.pt when it exists, else ckpt.pt (all nanoGPT writes)."""
    return LATEST_NAME if os.path.exists(os.path.join(out_dir, LATEST_NAME)) else CKPT_NAME


def sample_name(out_dir):
    """The file sampling and export read: ckpt.pt (nanoGPT's), or latest.pt when only it exists."""
    return CKPT_NAME if os.path.exists(os.path.join(out_dir, CKPT_NAME)) or not os.path.exists(
        os.path.join(out_dir, LATEST_NAME)) else LATEST_NAME


def load(out_dir, name=CKPT_NAME, map_location='cpu'):
    """Read a checkpoint dict from out_dir with clear errors for missing, corrupt or unsafe files."""
    path = os.path.join(out_dir, name)
    if not os.path.isdir(out_dir):
        raise UserError(f"out_dir '{out_dir}' does not exist; train a model there first "
                        f"(python train.py --out_dir={out_dir} ...) or pass the right --out_dir")
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}; train a model into '{out_dir}' first or pass the right --out_dir")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch wraps the unpickler's complaint in boilerplate; keep the part that names it
        lines = [line.strip().split('WeightsUnpickler error:')[-1].strip() for line in str(e).splitlines()]
        unsafe = [line for line in lines if 'GLOBAL' in line or 'reduce for' in line or line.startswith('Can only')]
        if not unsafe:
            # not a refused object but bytes that are no pickle at all: damage, not danger
            detail = next((line for line in lines if line and not line.startswith(
                ('Weights only load failed', 'Please file an issue', 'Check the documentation'))), 'not a pickle')
            raise UserError(f"{path} is truncated or corrupt ({detail}); restore it from a backup or train again")
        raise UserError(f"{path} was refused: it holds objects that would run code when loaded "
                        f"({unsafe[0].split('. ')[0]}); only load checkpoints you trust, re-saved as plain tensors")
    except Exception as e:  # whatever else torch.load trips over in a damaged file (KeyError, UnicodeError, ...)
        raise UserError(f"{path} is truncated or corrupt ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "restore it from a backup or train again")
    missing = [k for k in ('model', 'model_args') if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise UserError(f"{path} is not a training checkpoint: it has no {' or '.join(missing)}")
    return checkpoint


def clean_state_dict(state_dict):
    """Parameter names without torch.compile's prefix and without the causal-mask buffers
    that nanoGPT saved when it ran on PyTorch builds without flash attention."""
    cleaned = {}
    for k, v in state_dict.items():
        if k.startswith(COMPILED_PREFIX):
            k = k[len(COMPILED_PREFIX):]
        if k.endswith('.attn.bias') and v.dim() == 4:
            continue
        cleaned[k] = v
    return cleaned


def model_from_checkpoint(checkpoint, **overrides):
    """A GPT built from the checkpoint's model_args and model_args_extra (plus overrides such as
    dropout) with its weights."""
    args = {**checkpoint['model_args'], **checkpoint.get('model_args_extra', {}), **overrides}
    unknown = set(args) - set(GPTConfig.__dataclass_fields__)
    if unknown:
        raise UserError(f"checkpoint model_args has unknown keys {sorted(unknown)}; it was written by a newer version")
    model = GPT(GPTConfig(**args))
    model.load_state_dict(clean_state_dict(checkpoint['model']))
    return model


def capture_rng_states():
    """Every random number generator's state, as tensors and plain values (weights_only-safe)."""
    import random
    import numpy as np
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    states = {
        'python': random.getstate(),
        'numpy': {'kind': np_kind, 'keys': torch.from_numpy(np_keys.astype(np.int64)), 'pos': int(np_pos),
                  'has_gauss': int(np_has_gauss), 'cached_gaussian': float(np_gauss)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states):
    import random
    import numpy as np
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in states['python']))
    n = states['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['cached_gaussian']))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available() and len(states['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states['cuda'])


def gather_sharded_state(model, optimizer):
    """Full (unsharded) model and optimizer state dicts of an FSDP model, on CPU, in the same
    format as an unsharded model's state_dict() and optimizer.state_dict(). Collective: every
    rank must call it; ranks other than 0 get empty dicts."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if not by_name:  # with cpu_offload the full state is assembled on rank 0 alone
        return model_state, by_name
    # the distributed API keys optimizer state by parameter name; torch.optim numbers parameters
    # in param-group order, which is what an unsharded run saves and loads
    number = {}
    groups = []
    for group in by_name['param_groups']:
        numbered = dict(group, params=[number.setdefault(name, len(number)) for name in group['params']])
        groups.append(numbered)
    optimizer_state = {'state': {number[name]: s for name, s in by_name['state'].items()}, 'param_groups': groups}
    return model_state, optimizer_state


def load_sharded_optimizer_state(model, optimizer, optimizer_state):
    """Load a full optimizer.state_dict() (numbered parameters) into the optimizer of an FSDP model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group['params']]
    by_name = {
        'state': {names[i]: s for i, s in optimizer_state['state'].items()},
        'param_groups': [dict(g, params=[names[i] for i in g['params']]) for g in optimizer_state['param_groups']],
    }
    set_optimizer_state_dict(model, optimizer, optim_state_dict=by_name,
                             options=StateDictOptions(full_state_dict=True))


def load_model(init_from, out_dir):
    """A model to run rather than train: the checkpoint in out_dir (init_from='resume'), or GPT-2's
    weights (a gpt2* name or a transformers GPT-2 directory). Returns (model, checkpoint or None)."""
    if init_from == 'resume':
        ckpt = load(out_dir, sample_name(out_dir))
        return model_from_checkpoint(ckpt, dropout=0.0), ckpt
    if init_from.startswith('gpt2') or os.path.isdir(init_from):
        try:
            return GPT.from_pretrained(init_from, dict(dropout=0.0)), None
        except ValueError as e:
            raise UserError(str(e))
    raise UserError(f"unknown init_from '{init_from}'; use resume (with --out_dir), one of gpt2, gpt2-medium, "
                    "gpt2-large, gpt2-xl, or a directory holding a transformers GPT-2 checkpoint")
