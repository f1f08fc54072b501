"""out_dir/ckpt.pt and out_dir/latest.pt: nanoGPT's checkpoint format, both ways.

A checkpoint is a dict: nanoGPT's model (state dict), optimizer, model_args, iter_num,
best_val_loss and config, and this project's tokenizer, model_args_extra, scaler and
rng_states, which nanoGPT ignores. It holds only tensors and plain Python values, so it loads with
torch.load(weights_only=True) here and in nanoGPT; a file that would need to run code to
unpickle is refused. Saves are atomic: a crash or a full disk mid-save leaves the old file, and
--overwrite=True keeps the run it replaces in out_dir/replaced/ until the new run has saved.
"""
import errno
import os
import pickle
import random
import re
import shlex
import shutil
import socket
import warnings

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
TORCH_LEGACY_HEAD = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)  # torch.save before 1.6


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

DISK_FIXES = {errno.ENOSPC: 'free some space on that disk', errno.EDQUOT: 'free some of your disk quota',
              errno.EFBIG: 'raise the file-size limit (ulimit -f)'}


def temp_path(path, pid=None):
    """Where process pid (this one by default) writes path before the atomic rename. The host and
    pid in the name tell the file of a killed save from a save in progress, here or on another
    machine sharing the folder."""
    return f"{path}.tmp.{socket.gethostname()}.{os.getpid() if pid is None else pid}"


def remove_orphaned_temp_files(path):
    """Delete what writers of path on this host left when they were killed: temporary files, an
    export's temporary folder, and names that go on after the pid (an ONNX export's weights,
    model.onnx.tmp.<host>.<pid>.data). Tidying must never stop a save, so any doubt leaves a file
    where it is."""
    if os.name != 'posix':  # os.kill(pid, 0) probes a process only on POSIX
        return
    folder, prefix = os.path.dirname(path) or '.', os.path.basename(temp_path(path, pid=''))
    for entry in os.listdir(folder):
        pid = entry[len(prefix):].split('.')[0]
        if not entry.startswith(prefix) or not re.fullmatch(r'[0-9]{1,9}', pid):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # that process is gone
            orphan = os.path.join(folder, entry)
            try:
                shutil.rmtree(orphan) if os.path.isdir(orphan) and not os.path.islink(orphan) else os.remove(orphan)
            except OSError:
                pass
        except OSError:  # alive but another user's
            pass


def _write_atomically(path, write):
    """write(tmp_path), fsync, rename it over path and fsync the folder, so that the previous file
    survives a crash or a full disk at any point; on any failure the temporary file goes. A full
    disk or a file-size limit is one line naming the file, the reason and what survived, not
    torch's chained traceback."""
    folder, tmp = os.path.dirname(path) or '.', temp_path(path)
    try:
        os.makedirs(folder, exist_ok=True)
        remove_orphaned_temp_files(path)
        write(tmp)
        os.replace(tmp, path)
        if os.name == 'posix':  # make the rename itself durable (folders cannot be opened on Windows)
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except Exception as e:
        cause = e
        while cause is not None and not (isinstance(cause, OSError) and cause.errno):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        kept, fix = _checkpoints(folder), DISK_FIXES.get(cause.errno, 'fix that')
        raise UserError(f"could not save {path} ({cause.strerror}); " + (
            f"the checkpoints already there ({' and '.join(kept)}) are intact: {fix}, then continue with "
            "--init_from=resume" if kept else f"nothing was saved: {fix} and train again")) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(checkpoint, out_dir, name=CKPT_NAME):
    """Write out_dir/name atomically (_write_atomically)."""
    def write(tmp):
        with open(tmp, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
    path = os.path.join(out_dir, name)
    _write_atomically(path, write)
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


# ----------------------------------------------------------------------------- out_dir

REPLACED_DIR = 'replaced'  # where --overwrite=True keeps the run it replaces until the new run has saved


def _checkpoints(folder):
    """The checkpoint files in folder, newest kind first."""
    return [n for n in (LATEST_NAME, CKPT_NAME) if os.path.isfile(os.path.join(folder, n))]


def _summary(folder, name):
    """'name after iteration N, best val loss X' (iterations counted as the log counts them: iter_num is
    the number done), read without loading the weights; None when the file does not load."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            state = torch.load(os.path.join(folder, name), map_location='cpu', weights_only=True, mmap=True)
        return f"{name} after iteration {state['iter_num'] - 1}, best val loss {float(state['best_val_loss']):.4f}"
    except Exception:
        return None


def run_summary(out_dir, names):
    """The _summary of the first of names, the checkpoint files in out_dir as _checkpoints lists
    them (newest first), or their names."""
    return _summary(out_dir, names[0]) or ', '.join(names)


def replaced_run_note(out_dir):
    """Where the run that --overwrite=True moved out of out_dir waits, and how to put it back; '' when none does."""
    replaced = os.path.join(out_dir, REPLACED_DIR)
    aside = _checkpoints(replaced)
    if not aside:
        return ''
    return (f"the run that was in {out_dir} ({run_summary(replaced, aside)}) is in {replaced}/, where --overwrite=True "
            f"moved it; to restore it: mv {shlex.quote(replaced)}/* {shlex.quote(out_dir)}/ && "
            f"rmdir {shlex.quote(replaced)}")


def _remove_run(folder):
    """Delete a run's files in folder, and folder when nothing else is in it."""
    for name in (CKPT_NAME, LATEST_NAME, metrics.FILE_NAME):
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    try:
        os.rmdir(folder)
    except OSError:  # files of someone else's: theirs to remove
        pass


def claim_out_dir(out_dir, resuming, overwrite):
    """Make out_dir ready for a training run and lock it for as long as this process lives (the
    kernel drops the lock of a killed process). Refuses, in one line and before writing anything,
    a path that is a file or cannot be written, a folder another training is writing to, and,
    unless resuming or overwrite, a run: a checkpoint, or one in replaced/ (a log alone is no run).
    overwrite moves the run to replaced/ (_move_aside). Returns the open lock file: keep it."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"out_dir '{out_dir}' is a file, not a folder; pass another --out_dir")
    run = _checkpoints(out_dir)
    if run and not resuming and not overwrite:
        raise UserError(f"{out_dir} already holds a run ({run_summary(out_dir, run)}); continue it with "
                        "--init_from=resume, replace it with --overwrite=True, or train into another --out_dir")
    if not resuming and not overwrite and (note := replaced_run_note(out_dir)):
        raise UserError(f"{out_dir} holds no checkpoint, but {note}; or replace it with --overwrite=True, or train "
                        "into another --out_dir")
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
        _move_aside(out_dir, run)
    return lock


def _move_aside(out_dir, run):
    """Move the run in out_dir (its checkpoints run, and its log) to out_dir/replaced/, one atomic
    rename per file, the log first: it stays there until this run has saved (discard_replaced).
    With no run in out_dir, the one an earlier overwrite moved there stays instead."""
    replaced, until = os.path.join(out_dir, REPLACED_DIR), "it is deleted once this run saves its first checkpoint"
    if not run:
        if _checkpoints(replaced):
            print(f"the run an earlier --overwrite=True moved to {replaced}/ stays there; {until}")
        return
    names = ([metrics.FILE_NAME] if os.path.exists(os.path.join(out_dir, metrics.FILE_NAME)) else []) + run
    if any(os.path.exists(os.path.join(replaced, n)) for n in names):
        # a name in both places: the run here saved after replaced/ was filled (a move cut short
        # leaves each file in one place), and was stopped before it could delete replaced/
        _remove_run(replaced)
    summary = run_summary(out_dir, run)
    os.makedirs(replaced, exist_ok=True)
    for name in names:
        os.replace(os.path.join(out_dir, name), os.path.join(replaced, name))
    print(f"the run that was here ({summary}) was moved to {replaced}/; {until}")


def discard_replaced(out_dir):
    """Delete the run that --overwrite=True moved to out_dir/replaced/, once out_dir holds a
    checkpoint of the run that replaced it. train.py calls it after each save."""
    replaced = os.path.join(out_dir, REPLACED_DIR)
    if _checkpoints(out_dir) and os.path.isdir(replaced):
        _remove_run(replaced)
        print(f"deleted the run in {replaced}/, which this one replaces")


# ----------------------------------------------------------------------------- reading

def resume_name(out_dir):
    """The file resume reads: latest.pt when it exists, else ckpt.pt (all nanoGPT writes)."""
    return LATEST_NAME if os.path.exists(os.path.join(out_dir, LATEST_NAME)) else CKPT_NAME


def sample_name(out_dir):
    """The file sampling and export read: ckpt.pt (nanoGPT's), or latest.pt when only it exists."""
    only_latest = not os.path.exists(os.path.join(out_dir, CKPT_NAME)) and os.path.exists(
        os.path.join(out_dir, LATEST_NAME))
    return LATEST_NAME if only_latest else CKPT_NAME


def _is_plain_pickle(path):
    """Whether path is a pickle torch.save did not write (a zip archive, or before PyTorch 1.6 a magic number first)."""
    with open(path, 'rb') as f:
        head = f.read(len(TORCH_LEGACY_HEAD))
    return head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05') and head != TORCH_LEGACY_HEAD


def _missing(out_dir, path):
    if os.path.isfile(out_dir):
        return f"out_dir '{out_dir}' is a file, not a folder; pass the folder of a training run with --out_dir"
    if not os.path.isdir(out_dir):
        return (f"out_dir '{out_dir}' does not exist; train a model there first "
                f"(python train.py --out_dir={out_dir} ...) or pass the right --out_dir")
    if note := replaced_run_note(out_dir):
        return f"no checkpoint at {path}: {note}"
    if os.path.isfile(os.path.join(out_dir, 'config.json')):
        return f"no checkpoint at {path}: {out_dir} holds a transformers model; load it with --init_from={out_dir}"
    return f"no checkpoint at {path}; train a model into '{out_dir}' first or pass the right --out_dir"


def _damaged(out_dir, name, detail):
    """The one line for a checkpoint that does not load: what the other checkpoint beside it offers."""
    path = os.path.join(out_dir, name)
    other = CKPT_NAME if name == LATEST_NAME else LATEST_NAME
    whole = os.path.isfile(os.path.join(out_dir, other)) and _summary(out_dir, other)
    fix = (f"{other} beside it loads ({whole}): to use it, move the damaged file aside "
           f"(mv {shlex.quote(path)} {shlex.quote(path + '.damaged')}) and run the same command again"
           if whole else "restore it from a backup or train again")
    return UserError(f"{path} is truncated or corrupt ({detail}); {fix}")


def load(out_dir, name=CKPT_NAME, map_location='cpu', mmap=False):
    """A checkpoint dict from out_dir, with one-line errors for missing, corrupt or unsafe files;
    mmap leaves the tensors in the file's pages, shared by every process that maps them."""
    path = os.path.join(out_dir, name)
    if not os.path.isfile(path):
        raise UserError(_missing(out_dir, path))
    if _is_plain_pickle(path):
        raise UserError(f"{path} is not a checkpoint that this project or nanoGPT wrote: it is a plain pickle, not "
                        "a torch.save file, and was not loaded; pass the out_dir of a training run")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # torch's notes (pickle protocols, mmap) would bury the one line
            checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # torch wraps the unpickler's complaint in advice; keep the line that names it
        lines = [line.strip().split('WeightsUnpickler error:')[-1].strip() for line in str(e).splitlines()]
        unsafe = [line for line in lines if 'GLOBAL' in line or 'reduce for' in line or line.startswith('Can only')]
        if unsafe:
            raise UserError(f"{path} was refused: it holds objects that would run code when loaded "
                            f"({unsafe[0].split('. ')[0]}); only load checkpoints you trust, re-saved as plain tensors")
        # bytes that are no pickle at all: damage, not danger
        raise _damaged(out_dir, name, next((line for line in lines if line and not line.startswith(
            ('Weights only load failed', 'Please file an issue', 'Check the documentation'))), 'not a pickle'))
    except Exception as e:  # whatever else torch.load trips over in a damaged file
        raise _damaged(out_dir, name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
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

def capture_rng_states(device):
    """The random generators' states of this process as tensors and plain values (weights_only-safe):
    Python's, numpy's, torch's CPU generator and that of the device in use (only that one: a run on
    the CPU of a GPU machine must not wake the GPUs)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {'python': random.getstate(), 'torch': torch.get_rng_state(),
              'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                        'has_gauss': int(has_gauss), 'cached_gaussian': float(gauss)}}
    device = torch.device(device)
    if device.type == 'cuda':
        states['cuda'] = torch.cuda.get_rng_state(device)
    elif device.type == 'mps':
        states['mps'] = torch.mps.get_rng_state()
    return states


def restore_rng_states(states, device):
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in states['python']))
    n = states['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(states['torch'])
    device = torch.device(device)
    cuda = states.get('cuda')
    if device.type == 'cuda' and isinstance(cuda, list):  # earlier versions saved every GPU's state
        cuda = cuda[device.index or 0] if (device.index or 0) < len(cuda) else None
    if device.type == 'cuda' and cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
    elif device.type == 'mps' and 'mps' in states:
        torch.mps.set_rng_state(states['mps'])
