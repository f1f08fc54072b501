"""The pieces the top-level scripts share, one home each:

    hardware.py    device, dtype and autocast choice; GPU peak FLOP/s for MFU
    checkpoint.py  ckpt.pt / latest.pt: atomic saves, safe loads, nanoGPT's format both ways
    data.py        reading a prepared dataset: train.bin / val.bin batches, meta.pkl
    prepare.py     writing a prepared dataset: the streaming text -> uint16 code behind data/*/prepare.py
    tokenizer.py   text <-> token ids: a character vocabulary or GPT-2's BPE
    metrics.py     out_dir/metrics.csv, the training log that plot.py draws

and UserError, below: the one exception for mistakes a user can fix.
"""
import os
import sys

DATA_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data')  # data/<name>/


class UserError(SystemExit):
    """A one-line 'error: ...' and exit status 1. It subclasses SystemExit on purpose: when it
    escapes a script, Python prints only the message, no traceback, which is what a person who
    typed a wrong flag should see."""

    def __init__(self, message):
        super().__init__(f"error: {message}")
        self.message = message

    def __str__(self):
        return self.message


def _interrupted_in_one_line(kind, value, traceback):
    """Ctrl+C in any script: one line, not a traceback (train.py saves first, see its handler)."""
    if issubclass(kind, KeyboardInterrupt):
        print("interrupted (Ctrl+C)", file=sys.stderr)
    else:
        sys.__excepthook__(kind, value, traceback)


sys.excepthook = _interrupted_in_one_line
