"""What export_onnx.py and export_hf.py share: the prompts their checks run, a check that the output
can be written at all, and the replacement of an earlier export only once the new one is whole."""
import os
import shutil
import signal
import socket
import tempfile

import torch

from helpers import UserError


def random_prompts(vocab_size, block_size, seed):
    """Token batches of several shapes for the checks: full windows, a short batch, one token."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, block_size), (3, min(block_size, 7)), (1, 1)]
    return [torch.randint(vocab_size, shape, generator=g) for shape in shapes]


def writable(path):
    """A UserError unless path can be created: a folder made and removed in the nearest folder
    above it that exists says so (permissions alone do not: root, read-only filesystems)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    try:
        os.rmdir(tempfile.mkdtemp(dir=folder, prefix='.write-test-'))
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}: {folder}); pass another --output")


def replace_with(new, target):
    """Put new (a file or a folder beside target) at target; the old one goes only once the new one
    is there. A folder cannot be renamed over another, so the old folder steps aside first, and
    Ctrl+C waits until both renames are done."""
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        if os.path.isdir(target) and not os.path.islink(target):
            old = f"{target}.old.{socket.gethostname()}.{os.getpid()}"  # not a temp_path: never tidied away
            os.rename(target, old)
            try:
                os.rename(new, target)
            except OSError:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(new, target)
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
