"""out_dir/ckpt.pt and out_dir/latest.pt: nanoGPT's checkpoint format, both ways.

A checkpoint is a dict: nanoGPT's model (state dict), optimizer, model_args, iter_num,
best_val_loss and config, and this project's tokenizer, model_args_extra, scaler and
rng_states, which nanoGPT ignores. It holds only tensors and plain Python values, so it loads with
torch.load(weights_only=True) here and in nanoGPT; a file that would need to run code to
unpickle is refused. Saves are atomic: a crash or a full disk mid-save leaves the old file.
"""
import os
import pickle
import random
import re
import shutil
import socket

try:
    import fcntl  # POSIX: the out_dir lock
except ImportError:
    fcntl = None

import numpy as np
import torch

from helpers import UserError, metrics
from model import GPT, GPTConfig

CKPT_NAME = 'ckpt.pt'  # nanoGPT's: written at evaluations, when val loss improves or always_save_checkpoint
LATEST_NAME = 'latest.pt'  # the newest state (every evaluation, interrupt and the end); resume reads it first
NANOGPT_MODEL_ARGS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size', 'dropout')


def architecture_entries(config):
    """model_args with exactly nanoGPT's keys, so that nanoGPT's GPTConfig(**model_args) accepts
    every checkpoint written here, and model_args_extra with newer GPTConfig fields where they
    differ from their defaults (GPT-2's tanh GELU). nanoGPT ignores the extra entry."""
    defaults = GPTConfig()
    entries = {'model_args': {k: getattr(config, k) for k in NANOGPT_MODEL_ARGS}}
    extra = {k: getattr(config, k) for k in GPTConfig.__dataclass_fields__
             if k not in NANOGPT_MODEL_ARGS and getattr(config, k) != getattr(defaults, k)}
    if extra:
        entries['model_args_extra'] = extra
    return entries


# ----------------------------------------------------------------------------- writing

def temp_path(path, pid=None):
    """Where process pid (this one by default) writes path before the atomic rename. The host and
    pid in the name tell the file of a killed save from a save in progress, here or on another
    machine sharing the folder."""
    return f"{path}.tmp.{socket.gethostname()}.{os.getpid() if pid is None else pid}"


def remove_orphaned_temp_files(path):
    """Delete the temporary files of path that saves on this host left when they were killed.
    Tidying must never stop a save, so any doubt leaves a file where it is."""
    if os.name != 'posix':  # os.kill(pid, 0) probes a process only on POSIX
        return
    folder, prefix = os.path.dirname(path) or '.', os.path.basename(temp_path(path, pid=''))
    for entry in os.listdir(folder):
        pid = entry[len(prefix):]
        if not entry.startswith(prefix) or not re.fullmatch(r'[0-9]{1,9}', pid):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # that process is gone
            try:
                os.remove(os.path.join(folder, entry))
            except OSError:
                pass
        except OSError:  # alive but another user's
            pass


def _write_atomically(path, write):
    """write(tmp_path), then rename it over path; on any failure the temporary file goes."""
    remove_orphaned_temp_files(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(checkpoint, out_dir, name=CKPT_NAME):
    """Write out_dir/name: temporary file, fsync, rename, and fsync of the folder, so that the
    previous file survives a crash or a full disk at any point."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)

    def write(tmp):
        with open(tmp, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
    _write_atomically(path, write)
    if os.name == 'posix':  # make the rename itself durable (folders cannot be opened on Windows)
        fd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def mirror(out_dir, source_name, target_name):
    """Make target the same checkpoint as source without writing it twice: an atomic hard link
    where the filesystem has them, a copy otherwise."""
    source = os.path.join(out_dir, source_name)

    def link(tmp):
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    _write_atomically(os.path.join(out_dir, target_name), link)


def run_summary(out_dir, names):
    """'iter N, best val loss X' of the newest of the checkpoint files names in out_dir, read
    without loading the weights; the file names when that fails."""
    for name in (LATEST_NAME, CKPT_NAME):
        if name in names:
            try:
                state = torch.load(os.path.join(out_dir, name), map_location='cpu', weights_only=True, mmap=True)
                return f"{name} at iter {state['iter_num']}, best val loss {float(state['best_val_loss']):.4f}"
            except Exception:
                break
    return ', '.join(names)


def claim_out_dir(out_dir, resuming, overwrite):
    """Make out_dir ready for a training run and lock it for as long as this process lives (the
    kernel drops the lock of a killed process). Refuses, in one line and before writing anything,
    a path that is a file or cannot be written, a folder another training is writing to, and,
    unless resuming or overwrite, a folder that holds another run. With overwrite, that run's
    checkpoints and log are deleted. Returns the open lock file: keep it."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"out_dir '{out_dir}' is a file, not a folder; pass another --out_dir")
    held = [n for n in (CKPT_NAME, LATEST_NAME, metrics.FILE_NAME) if os.path.exists(os.path.join(out_dir, n))]
    if held and not resuming and not overwrite:
        raise UserError(f"{out_dir} already holds a run ({run_summary(out_dir, held)}); continue it with "
                        "--init_from=resume, replace it with --overwrite=True, or train into another --out_dir")
    try:
        os.makedirs(out_dir, exist_ok=True)
        lock = open(os.path.join(out_dir, 'train.lock'), 'a+')
    except OSError as e:
        raise UserError(f"cannot write to out_dir '{out_dir}' ({e.strerror}); pass a folder you can write to "
                        "with --out_dir")
    if fcntl is not None:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            raise UserError(f"another training (pid {lock.read().strip() or '?'}) is writing to {out_dir}; wait for "
                            "it to end, or train into another --out_dir")
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    if overwrite and not resuming:
        for name in held:
            os.remove(os.path.join(out_dir, name))
    return lock


# ----------------------------------------------------------------------------- reading

def resume_name(out_dir):
    """The file resume reads: latest.pt when it exists, else ckpt.pt (all nanoGPT writes)."""
    return LATEST_NAME if os.path.exists(os.path.join(out_dir, LATEST_NAME)) else CKPT_NAME


def sample_name(out_dir):
    """The file sampling and export read: ckpt.pt (nanoGPT's), or latest.pt when only it exists."""
    only_latest = not os.path.exists(os.path.join(out_dir, CKPT_NAME)) and os.path.exists(
        os.path.join(out_dir, LATEST_NAME))
    return LATEST_NAME if only_latest else CKPT_NAME


def load(out_dir, name=CKPT_NAME, map_location='cpu', mmap=False):
    """A checkpoint dict from out_dir, with one-line errors for missing, corrupt or unsafe files;
    mmap leaves the tensors in the file's pages, shared by every process that maps them."""
    path = os.path.join(out_dir, name)
    if not os.path.isdir(out_dir):
        raise UserError(f"out_dir '{out_dir}' does not exist; train a model there first "
                        f"(python train.py --out_dir={out_dir} ...) or pass the right --out_dir")
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}; train a model into '{out_dir}' first or pass the right --out_dir")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # torch wraps the unpickler's complaint in advice; keep the line that names it
        lines = [line.strip().split('WeightsUnpickler error:')[-1].strip() for line in str(e).splitlines()]
        unsafe = [line for line in lines if 'GLOBAL' in line or 'reduce for' in line or line.startswith('Can only')]
        if unsafe:
            raise UserError(f"{path} was refused: it holds objects that would run code when loaded "
                            f"({unsafe[0].split('. ')[0]}); only load checkpoints you trust, re-saved as plain tensors")
        # bytes that are no pickle at all: damage, not danger
        detail = next((line for line in lines if line and not line.startswith(
            ('Weights only load failed', 'Please file an issue', 'Check the documentation'))), 'not a pickle')
        raise UserError(f"{path} is truncated or corrupt ({detail}); restore it from a backup or train again")
    except Exception as e:  # whatever else torch.load trips over in a damaged file
        detail = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise UserError(f"{path} is truncated or corrupt ({detail}); restore it from a backup or train again")
    missing = [k for k in ('model', 'model_args') if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise UserError(f"{path} is not a training checkpoint: it has no {' or '.join(missing)}")
    return checkpoint


def model_from_checkpoint(checkpoint, **overrides):
    """A GPT built from model_args and model_args_extra (plus overrides such as dropout) with the
    checkpoint's weights. Also takes nanoGPT's files: torch.compile's '_orig_mod.' prefix and the
    causal-mask buffers old PyTorch builds saved are dropped."""
    args = {**checkpoint['model_args'], **checkpoint.get('model_args_extra', {}), **overrides}
    unknown = set(args) - set(GPTConfig.__dataclass_fields__)
    if unknown:
        raise UserError(f"checkpoint model_args has unknown keys {sorted(unknown)}; it was written by a newer version")
    model = GPT(GPTConfig(**args))
    state = {k.removeprefix('_orig_mod.'): v for k, v in checkpoint['model'].items()}
    model.load_state_dict({k: v for k, v in state.items() if not (k.endswith('.attn.bias') and v.dim() == 4)})
    return model


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


# ----------------------------------------------------------------------------- random state

def capture_rng_states():
    """Every random generator's state as tensors and plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {'python': random.getstate(), 'torch': torch.get_rng_state(),
              'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                        'has_gauss': int(has_gauss), 'cached_gaussian': float(gauss)}}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states):
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in states['python']))
    n = states['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available() and len(states['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states['cuda'])


# ----------------------------------------------------------------------------- FSDP

def gather_sharded_state(model, optimizer):
    """Full model and optimizer state dicts of an FSDP model, on the CPU of rank 0, in the format
    of an unsharded model's state_dict() and optimizer.state_dict(). Collective: every rank calls
    it; ranks other than 0 get empty dicts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if not by_name:
        return model_state, by_name
    # the distributed API keys optimizer state by parameter name; torch.optim numbers the
    # parameters in param-group order, which is what an unsharded run saves and loads
    number = {}
    groups = [dict(g, params=[number.setdefault(name, len(number)) for name in g['params']])
              for g in by_name['param_groups']]
    return model_state, {'state': {number[k]: s for k, s in by_name['state'].items()}, 'param_groups': groups}


def load_sharded_optimizer_state(model, optimizer, optimizer_state):
    """Load a full optimizer.state_dict() (numbered parameters) into the optimizer of an FSDP model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group['params']]
    by_name = {'state': {names[i]: s for i, s in optimizer_state['state'].items()},
               'param_groups': [dict(g, params=[names[i] for i in g['params']])
                                for g in optimizer_state['param_groups']]}
    set_optimizer_state_dict(model, optimizer, optim_state_dict=by_name, options=StateDictOptions(full_state_dict=True))
