"""The training metrics log: out_dir/metrics.csv, one row per log line and per evaluation.

Columns, in this order:

    iter, kind, tokens, train_loss, val_loss, lr, ms_per_iter, mfu

kind tells the two sorts of rows apart:
- 'train': a log line. train_loss is the loss of that iteration's minibatch (noisy);
  ms_per_iter and mfu are filled in, val_loss is empty.
- 'eval': an evaluation. train_loss and val_loss are both estimated on the fixed
  evaluation batches; ms_per_iter and mfu are usually empty.
write() picks the kind by itself (a row with a val_loss is an evaluation) unless told.

iter is the iteration number as train.py prints it, tokens the number of training tokens
consumed when the numbers were taken, lr the learning rate in use, mfu a fraction of the
device's peak (0.42 means 42%). Missing values are empty cells. The file is plain CSV so
that a spreadsheet, pandas or `plot.py` can read it; only rank 0 writes it.

A resumed run restarts at the checkpoint's iteration, and everything the interrupted run
logged from that iteration on is about to be logged again: MetricsLog drops those rows
first, so the file never holds the same iteration twice.
"""
import csv
import math
import os

COLUMNS = ('iter', 'kind', 'tokens', 'train_loss', 'val_loss', 'lr', 'ms_per_iter', 'mfu')
FLOAT_COLUMNS = ('train_loss', 'val_loss', 'lr', 'ms_per_iter', 'mfu')
KINDS = ('train', 'eval')
FILE_NAME = 'metrics.csv'


def _cell(value):
    if value is None:
        return ''
    if isinstance(value, bool):
        raise TypeError("metrics are numbers, not booleans")
    if isinstance(value, int):
        return str(value)
    return repr(float(value))  # shortest text that reads back as the same float


def _parse_row(raw):
    """A row read from the CSV with numbers as numbers (None for empty cells), or None when the
    row is damaged, e.g. the half-written last line of a run that was killed mid-write."""
    try:
        row = {'iter': int(raw['iter']), 'kind': raw.get('kind') or 'train'}
        row['tokens'] = int(raw['tokens']) if raw.get('tokens') else None
        for name in FLOAT_COLUMNS:
            text = raw.get(name)
            row[name] = float(text) if text else None
    except (KeyError, TypeError, ValueError):
        return None
    if row['kind'] not in KINDS:
        return None
    return row


def read_metrics(path):
    """The rows of a metrics.csv as a list of dicts keyed by COLUMNS, in file order.
    Numbers are int (iter, tokens) or float; empty cells are None. Damaged rows are skipped."""
    with open(path, newline='', encoding='utf-8') as f:
        rows = [_parse_row(raw) for raw in csv.DictReader(f)]
    return [row for row in rows if row is not None]


class MetricsLog:
    """Appends rows to out_dir/metrics.csv. Create it once, on rank 0, after the start
    iteration is known (0 for a new run, the checkpoint's iter_num when resuming)."""

    def __init__(self, out_dir, start_iter):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, FILE_NAME)
        if os.path.exists(self.path):
            self._keep_rows_before(start_iter)
        else:
            with open(self.path, 'w', newline='', encoding='utf-8') as f:
                csv.writer(f).writerow(COLUMNS)
        self._file = open(self.path, 'a', newline='', encoding='utf-8')
        self._writer = csv.writer(self._file)

    def _keep_rows_before(self, start_iter):
        """Rewrite the file without the rows at or after start_iter (and without damaged rows),
        atomically: a crash during the rewrite leaves the old file as it was."""
        kept = [row for row in read_metrics(self.path) if row['iter'] < start_iter]
        tmp_path = f"{self.path}.tmp.{os.getpid()}"
        try:
            with open(tmp_path, 'w', newline='', encoding='utf-8') as f:
                writer = csv.writer(f)
                writer.writerow(COLUMNS)
                for row in kept:
                    writer.writerow([row['kind'] if name == 'kind' else _cell(row[name]) for name in COLUMNS])
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, self.path)
        finally:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)

    def write(self, iter, tokens, lr, train_loss=None, val_loss=None, ms_per_iter=None, mfu=None, kind=None):
        """Append one row and flush it to disk. kind defaults to 'eval' when val_loss is given,
        else 'train'. A non-finite mfu (train.py's 'not measured yet') is written as empty."""
        if kind is None:
            kind = 'eval' if val_loss is not None else 'train'
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if mfu is not None and (not math.isfinite(mfu) or mfu < 0):
            mfu = None
        values = dict(iter=int(iter), tokens=None if tokens is None else int(tokens), train_loss=train_loss,
                      val_loss=val_loss, lr=lr, ms_per_iter=ms_per_iter, mfu=mfu)
        self._writer.writerow([kind if name == 'kind' else _cell(values[name]) for name in COLUMNS])
        self._file.flush()

    def close(self):
        if not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
