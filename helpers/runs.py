"""A run's folder, out_dir: which checkpoint resume and sampling read, one training at a time (a lock), and
--overwrite=True's replaced/, which keeps the run it replaces until the new one has saved. Every reader and writer
first completes (files.finish_swaps) a change of its files that a killed command left half done."""
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

def summary(folder, name):
    """'name after iteration N, best val loss X' (N as the log counts: iter_num is the number done), or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            state = torch.load(os.path.join(folder, name), map_location='cpu', weights_only=True, mmap=True)
        return f"{name} after iteration {state['iter_num'] - 1}, best val loss {float(state['best_val_loss']):.4f}"
    except Exception:
        return None

def run_summary(out_dir, names):
    """The summary of the newest of out_dir's checkpoints names, or their names."""
    return summary(out_dir, names[0]) or ', '.join(names)

def _restore_command(out_dir, names):
    replaced = os.path.join(out_dir, REPLACED_DIR)
    moved = ' '.join(shlex.quote(os.path.join(replaced, n)) for n in names)
    return f"mv {moved} {shlex.quote(out_dir)}/ && rm -r {shlex.quote(replaced)}"

def replaced_run_note(out_dir):
    """Where the run that --overwrite=True moved out of out_dir waits, and how to put it back; '' when none does."""
    replaced = os.path.join(out_dir, REPLACED_DIR)
    aside = checkpoints(replaced) if os.path.isfile(os.path.join(replaced, REPLACED_MARK)) else []
    if not aside:
        return ''
    held = [n for n in RUN_FILES if os.path.exists(os.path.join(replaced, n))]
    return (f"the run that was in {out_dir} ({run_summary(replaced, aside)}) is in {replaced}/, where --overwrite=True "
            f"moved it; to restore it: {_restore_command(out_dir, held)}")

def claim_out_dir(out_dir, resuming, overwrite):
    """Lock out_dir for this training (returns the lock: keep it), after refusing in one line what it must not
    write over: a file, another training's folder, and unless resuming or overwrite, a run (a checkpoint, or one
    in replaced/; a log alone is no run). overwrite moves the run to replaced/."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"out_dir '{out_dir}' is a file, not a folder; pass another --out_dir")
    files.finish_swaps(out_dir)
    run, replaced = checkpoints(out_dir), os.path.join(out_dir, REPLACED_DIR)
    if run and not resuming and not overwrite:
        raise UserError(f"{out_dir} already holds a run ({run_summary(out_dir, run)}); continue it with "
                        "--init_from=resume, replace it with --overwrite=True, or train into another --out_dir")
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
    """Move out_dir's run to replaced/ as one change, until this run has saved (discard_replaced); with no run
    in out_dir, the one an earlier overwrite moved there stays."""
    replaced, until = os.path.join(out_dir, REPLACED_DIR), "it is deleted once this run saves its first checkpoint"
    if not run:
        if replaced_run_note(out_dir):
            print(f"the run an earlier --overwrite=True moved to {replaced}/ stays there; {until}")
        return
    summary = run_summary(out_dir, run)
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
    print(f"the run that was here ({summary}) was moved to {replaced}/; {until}")

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
    """Resuming: the run's own settings (run_settings) for those left unset but the command's (keep) and the machine's;
    say which differ from the run's. fixed (the architecture) cannot differ: a UserError names those set otherwise."""
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
