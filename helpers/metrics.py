"""out_dir/metrics.csv for plot.py: a row per log line and evaluation; a resumed run first drops the rows it redoes."""
import csv
import math
import os

from helpers import files

COLUMNS = ('iter', 'kind', 'tokens', 'seconds', 'train_loss', 'val_loss', 'hellaswag_acc', 'hellaswag_acc_norm',
           'lr', 'ms_per_iter', 'mfu', 'train_bpb', 'val_bpb')  # bits per byte: last, as earlier files lack them
FILE_NAME = 'metrics.csv'

def _parse_row(raw):
    """A row with numbers as numbers (None for empty cells); None for a damaged row (a run killed mid-write)."""
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

def _cells(row):  # repr: the shortest text that reads back as the same float
    return [row['kind'] if name == 'kind' else '' if row.get(name) is None else
            str(row[name]) if isinstance(row[name], int) else repr(float(row[name])) for name in COLUMNS]

def _rounded(value, digits):  # a clock's hundredths are noise; 6 decimals tell HellaSwag's counts apart
    return None if value is None else round(value, digits)

def duration(seconds):
    """Seconds as the log writes them: 42s, 3m05s, 2h10m."""
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

class MetricsLog:
    """Appends rows to out_dir/metrics.csv; created on rank 0 once the start iteration is known."""
    def __init__(self, out_dir, start_iter):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, FILE_NAME)
        kept = [r for r in read_metrics(self.path) if r['iter'] < start_iter] if os.path.exists(self.path) else []
        def write(tmp):  # rewritten atomically: a crash here leaves the old file as it was
            with open(tmp, 'w', newline='', encoding='utf-8') as f:
                csv.writer(f).writerows([COLUMNS] + [_cells(r) for r in kept])
        files.write_atomically(self.path, write)
        self._file = open(self.path, 'a', newline='', encoding='utf-8')
        self._writer = csv.writer(self._file)

    def write(self, iter, tokens, lr, train_loss=None, val_loss=None, ms_per_iter=None, mfu=None, seconds=None,
              hellaswag_acc=None, hellaswag_acc_norm=None, train_bpb=None, val_bpb=None):
        """Append one row and flush it: an evaluation when val_loss is given, else a log line."""
        if mfu is not None and not (math.isfinite(mfu) and mfu >= 0):
            mfu = None
        row = dict(iter=int(iter), kind='eval' if val_loss is not None else 'train', tokens=tokens,
                   seconds=_rounded(seconds, 2), train_loss=train_loss, val_loss=val_loss,
                   hellaswag_acc=_rounded(hellaswag_acc, 6), hellaswag_acc_norm=_rounded(hellaswag_acc_norm, 6),
                   lr=lr, ms_per_iter=ms_per_iter, mfu=mfu, train_bpb=train_bpb, val_bpb=val_bpb)
        self._writer.writerow(_cells(row))
        self._file.flush()

    def close(self):
        self._file.close()
