"""A run's folder, out_dir: which checkpoint to read, one training at a time, and --overwrite=True's replaced/."""
import os
import shlex
import warnings

import torch

import configurator
from helpers import UserError, files, metrics

CKPT_NAME = 'ckpt.pt'  # nanoGPT's: written at evaluations, when val loss improves or always_save_checkpoint
LATEST_NAME = 'latest.pt'  # the newest state (every evaluation, interrupt and the end); resume reads it first
REPLACED_DIR = 'replaced'  # where --overwrite=True keeps the run it replaces until the new run has saved
REPLACED_MARK = 'README.txt'  # in replaced/: what the folder is; a replaced/ without it is the user's
RUN_FILES = (LATEST_NAME, CKPT_NAME, metrics.FILE_NAME)

def checkpoints(folder):
    """The checkpoint files in folder, newest kind first."""
    return [n for n in (LATEST_NAME, CKPT_NAME) if os.path.isfile(os.path.join(folder, n))]

def summary(folder, name, fallback=None):
    """'name after iteration N, best val loss X' (N as the log counts: iter_num is the number done), or fallback."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            state = torch.load(os.path.join(folder, name), map_location='cpu', weights_only=True, mmap=True)
        return f"{name} after iteration {state['iter_num'] - 1}, best val loss {float(state['best_val_loss']):.4f}"
    except Exception:
        return fallback

def _restore_command(out_dir, names):
    moved = ' '.join(shlex.quote(os.path.join(out_dir, REPLACED_DIR, n)) for n in names)
    return f"mv {moved} {shlex.quote(out_dir)}/ && rm -r {shlex.quote(os.path.join(out_dir, REPLACED_DIR))}"

def replaced_run_note(out_dir):
    """Where the run that --overwrite=True moved out of out_dir waits, and how to put it back; '' when none does."""
    replaced = os.path.join(out_dir, REPLACED_DIR)
    aside = checkpoints(replaced) if os.path.isfile(os.path.join(replaced, REPLACED_MARK)) else []
    if not aside:
        return ''
    held = [n for n in RUN_FILES if os.path.exists(os.path.join(replaced, n))]
    return (f"the run that was in {out_dir} ({summary(replaced, aside[0], ', '.join(aside))}) is in {replaced}/, "
            f"where --overwrite=True moved it; to restore it: {_restore_command(out_dir, held)}")

def claim_out_dir(out_dir, resuming, overwrite):
    """Lock out_dir (keep the lock), refusing what training must not write over; overwrite moves a run to replaced/."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"out_dir '{out_dir}' is a file, not a folder; pass another --out_dir")
    files.finish_swaps(out_dir)
    run, replaced = checkpoints(out_dir), os.path.join(out_dir, REPLACED_DIR)
    if run and not resuming and not overwrite:
        raise UserError(f"{out_dir} already holds a run ({summary(out_dir, run[0], ', '.join(run))}); continue it "
                        "with --init_from=resume, replace it with --overwrite=True, or train into another --out_dir")
    if not resuming and not overwrite and (note := replaced_run_note(out_dir)):
        raise UserError(f"{out_dir} holds no checkpoint, but {note}; or replace it with --overwrite=True, or train "
                        "into another --out_dir")
    if overwrite and not resuming and os.path.exists(replaced) and not os.path.isfile(
            os.path.join(replaced, REPLACED_MARK)) and (not os.path.isdir(replaced) or os.listdir(replaced)):
        raise UserError(f"{replaced} was not made by --overwrite=True, which keeps the run it replaces there; "
                        "move it away, or train into another --out_dir")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to out_dir '{out_dir}' ({e.strerror}); pass a folder you can write to "
                        "with --out_dir")
    lock = files.lock(os.path.join(out_dir, 'train.lock'), f"another training (pid {{pid}}) is writing to {out_dir}; "
                      "wait for it to end, or train into another --out_dir")
    if overwrite and not resuming:
        _move_aside(out_dir, run)
    return lock

def _move_aside(out_dir, run):
    """Move out_dir's run to replaced/ as one change, kept until this run saves; with none, an earlier one stays."""
    replaced, until = os.path.join(out_dir, REPLACED_DIR), "it is deleted once this run saves its first checkpoint"
    if not run:
        if replaced_run_note(out_dir):
            print(f"the run an earlier --overwrite=True moved to {replaced}/ stays there; {until}")
        return
    moved = summary(out_dir, run[0], ', '.join(run))
    names = [n for n in RUN_FILES if os.path.exists(os.path.join(out_dir, n))]
    os.makedirs(replaced, exist_ok=True)
    with open(os.path.join(replaced, REPLACED_MARK), 'w') as f:  # it marks the folder ours even when cut short
        f.write(f"train.py --overwrite=True moved the run that was in {out_dir} here; it is deleted once the run "
                f"that replaced it saves a checkpoint. To restore it, stop that run and: "
                f"{_restore_command(out_dir, names)}\n")
    # a file of an older replaced run that this one lacks must not stay beside it
    older = [os.path.join(REPLACED_DIR, n) for n in RUN_FILES if n not in names]
    files.swap(out_dir, [(n, os.path.join(REPLACED_DIR, n)) for n in names], older,
               f'moving the run in {out_dir} to replaced/')
    print(f"the run that was here ({moved}) was moved to {replaced}/; {until}")

def discard_replaced(out_dir):
    """Delete the run in replaced/ once out_dir holds a checkpoint of the run that replaced it."""
    replaced = os.path.join(out_dir, REPLACED_DIR)
    if checkpoints(out_dir) and os.path.isfile(os.path.join(replaced, REPLACED_MARK)):
        files.swap(out_dir, [], [REPLACED_DIR], f'deleting the run in {replaced}/')
        print(f"deleted the run in {replaced}/, which this one replaces")

def resume_name(out_dir):
    """The file resume reads: latest.pt when it exists, else ckpt.pt (all nanoGPT writes)."""
    files.finish_swaps(out_dir)
    return LATEST_NAME if os.path.exists(os.path.join(out_dir, LATEST_NAME)) else CKPT_NAME

def sample_name(out_dir):
    """The file sampling and export read: ckpt.pt (nanoGPT's), or latest.pt when only it exists."""
    files.finish_swaps(out_dir)
    return LATEST_NAME if checkpoints(out_dir) == [LATEST_NAME] else CKPT_NAME

def continue_run(namespace, explicit, run_settings, keep=(), machine=(), fixed=None):
    """Resuming: the run's settings for those unset, but keep and machine (saying which differ); fixed must match."""
    conflicts = [f"{k}={namespace[k]!r} (set by {explicit[k]}; the checkpoint has {v!r})"
                 for k, v in (fixed or {}).items() if k in explicit and namespace[k] != v]
    if conflicts:
        raise UserError(f"the checkpoint has another architecture than asked: {', '.join(conflicts)}; resume without "
                        "those settings (the checkpoint brings its own), or train into a new --out_dir")
    differ = {k: v for k, v in {**(run_settings or {}), **(fixed or {})}.items()
              if k in configurator.settable_keys(namespace) and k not in keep and v is not None and v != namespace[k]}
    print("resuming with the run's settings" + ''.join(
        f"; {k}={namespace[k]!r} from {explicit[k]} (the run had {v!r})" if k in explicit else
        f"; {k}={namespace[k]!r} for this machine (the run had {v!r}; set --{k} to choose)"
        for k, v in differ.items() if k in explicit or k in machine))
    for k, v in differ.items():
        if k not in explicit and k not in machine:
            namespace[k], explicit[k] = v, 'the checkpoint'
