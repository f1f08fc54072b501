"""What the top-level scripts share, one home each: hardware (device, dtype, autocast, GPU peaks for MFU),
checkpoint (ckpt.pt and latest.pt, nanoGPT's format both ways), runs (a run's out_dir), data (reading train.bin,
val.bin and meta.pkl), prepare (writing them), documents (GPT-2 BPE of large collections, resumable), stories
(TinyStories), tokenizer (characters or GPT-2 BPE), metrics (metrics.csv), optim (AdamW, or Muon with AdamW),
parallel (torchrun: DDP or FSDP), hellaswag, exports (ONNX, Hugging Face), files (atomic writes, journaled swaps,
locks); and UserError, the one exception for mistakes a user can fix."""
import os
import signal
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS_ROOT = os.path.join(REPO_ROOT, 'data')   # data/<name>/prepare.py, always in the repository
# the datasets: beside their scripts unless NANOGPT_DATA_DIR moves them (a larger disk; the tests' own folder)
DATA_ROOT = os.path.abspath(os.path.expanduser(os.environ.get('NANOGPT_DATA_DIR') or SCRIPTS_ROOT))


def shown(path):
    """A path as messages write it: from the repository root when inside it (data/shakespeare_char), else whole."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO_ROOT) if path.startswith(REPO_ROOT + os.sep) else path


class UserError(SystemExit):
    """A one-line 'error: ...' and exit status 1: a SystemExit, so that Python prints the message alone, no
    traceback, which is what a person who typed a wrong flag should see."""

    def __init__(self, message):
        super().__init__(f"error: {message}")

    def __str__(self):  # the message alone, for messages that quote it
        return self.code.removeprefix('error: ')


def _in_one_line(kind, value, traceback):
    """Ctrl+C (train.py saves first, see its handler) and a failed torch.compile (no C compiler, an unsupported
    operation) in one line, not a traceback; a closed pipe on stdout in none."""
    if issubclass(kind, KeyboardInterrupt):
        print("interrupted (Ctrl+C)", file=sys.stderr)
    elif issubclass(kind, BrokenPipeError):  # the reader has gone (python sample.py | head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
    elif kind.__module__.startswith(('torch._dynamo', 'torch._inductor')):
        reason = next((line for line in str(value).splitlines() if line.strip()), '')
        print(f"error: torch.compile failed ({kind.__name__}: {reason[:300]}); run with --compile=False",
              file=sys.stderr)
    else:
        sys.__excepthook__(kind, value, traceback)


def quit_during_start_up(signum, frame, note=''):
    """Ctrl+C or SIGTERM before a script has anything to save: one line (and the note, if any), and
    exit at once, as raising could land inside an import half done and print a traceback from there."""
    print(f"{signal.Signals(signum).name} during start-up: no checkpoint was written" + (f"; {note}" if note else ''),
          file=sys.stderr, flush=True)
    os._exit(128 + signum)


sys.excepthook = _in_one_line
