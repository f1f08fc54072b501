"""out_dir/metrics.csv: train.py's log, one row per log line and per evaluation, for plot.py.

    iter, kind, tokens, train_loss, val_loss, lr, ms_per_iter, mfu

kind 'train' is a log line: train_loss is that iteration's minibatch loss (noisy), with
ms_per_iter and mfu. kind 'eval' is an evaluation: train_loss and val_loss estimated on the
fixed evaluation batches. tokens counts the training tokens consumed so far; mfu is a
fraction of the device's peak (0.42 is 42%); missing values are empty cells.

A resumed run restarts at the checkpoint's iteration and logs the rows from there on again,
so MetricsLog first drops the rows the interrupted run wrote from that iteration on: the file
never holds an iteration twice.
"""
import csv
import math
import os

COLUMNS = ('iter', 'kind', 'tokens', 'train_loss', 'val_loss', 'lr', 'ms_per_iter', 'mfu')
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

    def write(self, iter, tokens, lr, train_loss=None, val_loss=None, ms_per_iter=None, mfu=None):
        """Append one row and flush it: an evaluation when val_loss is given, else a log line."""
        if mfu is not None and not (math.isfinite(mfu) and mfu >= 0):
            mfu = None
        row = dict(iter=int(iter), kind='eval' if val_loss is not None else 'train', tokens=tokens, lr=lr,
                   train_loss=train_loss, val_loss=val_loss, ms_per_iter=ms_per_iter, mfu=mfu)
        self._writer.writerow(_cells(row))
        self._file.flush()

    def close(self):
        self._file.close()
