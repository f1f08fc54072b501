"""out_dir/metrics.csv: train.py's log, one row per log line and per evaluation, for plot.py.

    iter, kind, tokens, seconds, train_loss, val_loss, hellaswag_acc, hellaswag_acc_norm, lr, ms_per_iter, mfu

kind 'train' is a log line: train_loss is that iteration's minibatch loss (noisy), with
ms_per_iter and mfu. kind 'eval' is an evaluation: train_loss and val_loss estimated on the
fixed evaluation batches, and HellaSwag's acc and acc_norm where the run scores it. tokens
counts the training tokens consumed so far; seconds the wall-clock time of training so far
(start-up, evaluations and saves included), summed over the runs a resumed run continues (the
time between a stop and its resume is not counted); mfu is a fraction of the device's peak
(0.42 is 42%). Missing values are empty cells.

A resumed run restarts at the checkpoint's iteration and logs the rows from there on again,
so MetricsLog first drops the rows the interrupted run wrote from that iteration on: the file
never holds an iteration twice. Files of older versions, without some of the columns, read
with those values None, and a run resumed on one rewrites it with all the columns.
"""
import csv
import math
import os

COLUMNS = ('iter', 'kind', 'tokens', 'seconds', 'train_loss', 'val_loss', 'hellaswag_acc', 'hellaswag_acc_norm',
           'lr', 'ms_per_iter', 'mfu')
FILE_NAME = 'metrics.csv'


def _parse_row(raw):
    """A row with numbers as numbers (None for empty cells), or None for a damaged row, such as
    the half-written last line of a run killed mid-write."""
    try:
        row = {'iter': int(raw['iter']), 'kind': raw.get('kind') or 'train',
               'tokens': int(raw['tokens']) if raw.get('tokens') else None}
        for name in COLUMNS[3:]:
            row[name] = float(raw[name]) if raw.get(name) else None
    except (KeyError, TypeError, ValueError):
        return None
    return row if row['kind'] in ('train', 'eval') else None


def read_metrics(path):
    """The rows of a metrics.csv, in file order, as dicts keyed by COLUMNS; damaged rows are skipped."""
    with open(path, newline='', encoding='utf-8', errors='replace') as f:
        return [row for row in map(_parse_row, csv.DictReader(f)) if row is not None]


def _cells(row):
    # repr: the shortest text that reads back as the same float
    return [row['kind'] if name == 'kind' else '' if row.get(name) is None else
            str(row[name]) if isinstance(row[name], int) else repr(float(row[name])) for name in COLUMNS]


def _rounded(value, digits):
    # for a readable file: a clock's hundredths are noise already, and 6 decimals still tell every
    # count of HellaSwag's 10,042 examples apart
    return None if value is None else round(value, digits)


def duration(seconds):
    """Seconds as the log writes them: 42s, 3m05s, 2h10m."""
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class MetricsLog:
    """Appends rows to out_dir/metrics.csv. Created once, on rank 0, when the start iteration is
    known (0 for a new run, the checkpoint's iter_num when resuming)."""

    def __init__(self, out_dir, start_iter):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, FILE_NAME)
        kept = [r for r in read_metrics(self.path) if r['iter'] < start_iter] if os.path.exists(self.path) else []
        tmp = f"{self.path}.tmp.{os.getpid()}"
        try:  # rewritten atomically: a crash here leaves the old file as it was
            with open(tmp, 'w', newline='', encoding='utf-8') as f:
                csv.writer(f).writerows([COLUMNS] + [_cells(r) for r in kept])
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        self._file = open(self.path, 'a', newline='', encoding='utf-8')
        self._writer = csv.writer(self._file)

    def write(self, iter, tokens, lr, train_loss=None, val_loss=None, ms_per_iter=None, mfu=None, seconds=None,
              hellaswag_acc=None, hellaswag_acc_norm=None):
        """Append one row and flush it: an evaluation when val_loss is given, else a log line."""
        if mfu is not None and not (math.isfinite(mfu) and mfu >= 0):
            mfu = None
        row = dict(iter=int(iter), kind='eval' if val_loss is not None else 'train', tokens=tokens,
                   seconds=_rounded(seconds, 2), train_loss=train_loss, val_loss=val_loss,
                   hellaswag_acc=_rounded(hellaswag_acc, 6), hellaswag_acc_norm=_rounded(hellaswag_acc_norm, 6),
                   lr=lr, ms_per_iter=ms_per_iter, mfu=mfu)
        self._writer.writerow(_cells(row))
        self._file.flush()

    def close(self):
        self._file.close()
