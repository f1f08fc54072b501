"""The pieces the top-level scripts share, one home each:

    hardware.py    device, dtype and autocast choice; GPU peak FLOP/s for MFU
    checkpoint.py  ckpt.pt / latest.pt: atomic saves, safe loads, nanoGPT's format both ways
    data.py        reading a prepared dataset: train.bin / val.bin batches, meta.pkl
    prepare.py     writing a prepared dataset: the streaming text -> uint16 code behind data/*/prepare.py
    documents.py   GPT-2 BPE of large document collections (fineweb_edu, openwebtext), in resumable chunks
    tokenizer.py   text <-> token ids: a character vocabulary or GPT-2's BPE
    metrics.py     out_dir/metrics.csv, the training log that plot.py draws
    parallel.py    several processes under torchrun: DDP or FSDP, and the collectives train.py needs
    hellaswag.py   the HellaSwag benchmark: its examples, scored as GPT-2's published figures are
    exports.py     what export_onnx.py and export_hf.py share: check prompts, safe replacement of an export

and UserError, below: the one exception for mistakes a user can fix.
"""
import os
import signal
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS_ROOT = os.path.join(REPO_ROOT, 'data')   # data/<name>/prepare.py, always in the repository
# the datasets, data/<name>/{train.bin, val.bin, meta.pkl}: beside their scripts unless NANOGPT_DATA_DIR moves
# them (a larger disk; the tests' temporary folder, so that they never touch yours)
DATA_ROOT = os.path.abspath(os.path.expanduser(os.environ.get('NANOGPT_DATA_DIR') or SCRIPTS_ROOT))


def shown(path):
    """A path as messages write it: from the repository root when inside it (data/shakespeare_char), else whole."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO_ROOT) if path.startswith(REPO_ROOT + os.sep) else path


class UserError(SystemExit):
    """A one-line 'error: ...' and exit status 1. It subclasses SystemExit on purpose: when it
    escapes a script, Python prints only the message, no traceback, which is what a person who
    typed a wrong flag should see."""

    def __init__(self, message):
        super().__init__(f"error: {message}")
        self.message = message

    def __str__(self):
        return self.message


def _in_one_line(kind, value, traceback):
    """Ctrl+C in any script, and torch.compile failing (no C compiler, an unsupported operation),
    in one line, not a traceback (train.py saves first on Ctrl+C, see its handler); a closed pipe
    on stdout in none."""
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
