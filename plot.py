"""Plot the train and val loss (or bits per byte) of train.py's out_dir/metrics.csv to a PNG, against iterations,
training tokens or wall-clock time, with HellaSwag's acc_norm beneath where a run scored it. Needs matplotlib.

$ python plot.py --out_dir=out-shakespeare-char                    # -> out-shakespeare-char/loss.png
$ python plot.py --out_dirs=out-small,out-big                      # a column per run -> out-small/loss_comparison.png
$ python plot.py --out_dirs=out-small,out-big --overlay=True --x=seconds   # the runs in the same panels
$ python plot.py --out_dirs=out-char,out-bpe --overlay=True --y=bpb        # runs of different tokenizers
"""
import os

import configurator
from helpers import UserError, files, metrics

# -----------------------------------------------------------------------------
out_dir = 'out'  # the run to plot
out_dirs = ''  # several runs, comma-separated; replaces out_dir
output = ''  # the PNG to write; default out_dir/loss.png, or loss_comparison.png in the first run's folder
x = 'iter,tokens'  # the x axes, comma-separated: iter, tokens, seconds (wall-clock time of training)
overlay = False  # several runs in the same panels instead of one column each
minibatch = True  # also draw the per-iteration minibatch loss of the log lines
logy = False  # logarithmic loss axis
y = 'loss'  # 'loss' (nats per token) or 'bpb' (bits per byte of text: runs of any tokenizers compare)
title = ''
dpi = 120
# -----------------------------------------------------------------------------

X_AXES = {'iter': 'iterations', 'tokens': 'training tokens', 'seconds': 'wall-clock time'}
HELLASWAG = 'hellaswag_acc_norm'
CHANCE = 0.25  # HellaSwag has four endings
EVAL_STYLE = dict(markersize=3, linewidth=1.5)
LINES = {'loss': [('train', 'train_loss', 'train (minibatch)', dict(alpha=0.35, linewidth=0.8)),  # noisy, faint
                  ('eval', 'train_loss', 'train (eval)', dict(linestyle='--', marker='o', **EVAL_STYLE)),
                  ('eval', 'val_loss', 'val (eval)', dict(linestyle='-', marker='s', **EVAL_STYLE))],
         'bpb': [('eval', 'train_bpb', 'train (eval)', dict(linestyle='--', marker='o', **EVAL_STYLE)),
                 ('eval', 'val_bpb', 'val (eval)', dict(linestyle='-', marker='s', **EVAL_STYLE))],
         'hellaswag': [('eval', HELLASWAG, 'HellaSwag', dict(marker='^', **EVAL_STYLE))]}
WRITTEN_BY = {'written_by': 'plot.py'}  # a text chunk in every PNG written here: one this script may replace

def load_run(run_dir):
    path = os.path.join(run_dir, metrics.FILE_NAME)
    if not os.path.isdir(run_dir):
        raise UserError(f"out_dir '{run_dir}' does not exist; pass the folder a training run wrote to")
    if not os.path.isfile(path):
        raise UserError(f"no {metrics.FILE_NAME} in '{run_dir}'; it is written by train.py while training "
                        "(runs from before the metrics log have none)")
    rows = sorted(metrics.read_metrics(path), key=lambda r: r['iter'])
    if not rows:
        with open(path, encoding='utf-8', errors='replace') as f:
            names, rest = f.readline().strip().split(','), f.read().strip()
        # older versions wrote fewer columns: any header of known names holding iter is one of ours
        if 'iter' not in names or not set(names) <= set(metrics.COLUMNS) or rest:
            raise UserError(f"{path} is damaged: none of its rows can be read (its header should be "
                            f"{','.join(metrics.COLUMNS)}); plot another run, or train again")
        raise UserError(f"{path} has no rows yet; wait for the first log line or evaluation")
    return rows

def series(rows, kind, x_name, y_name, x_scale=1):
    """The points (xs, ys) of one line: the rows of that kind holding both values, x divided by x_scale."""
    points = [(r[x_name] / x_scale, r[y_name]) for r in rows
              if r['kind'] == kind and r[x_name] is not None and r[y_name] is not None]
    return [p[0] for p in points], [p[1] for p in points]

def has_hellaswag(rows):
    return any(r[HELLASWAG] is not None for r in rows)

def time_unit(runs):
    """(seconds per unit, unit name) that keeps the longest run's wall-clock time readable."""
    longest = max((r['seconds'] for _, rows in runs for r in rows if r['seconds'] is not None), default=0)
    return next((size, name) for size, name in ((3600, 'hours'), (60, 'minutes'), (1, 'seconds'))
                if longest >= 2 * size or size == 1)

def pyplot():
    try:
        import matplotlib
        matplotlib.use('Agg')  # files only, no window
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plot.py needs matplotlib: pip install matplotlib")
    return plt

def figure(runs, x_names=('iter', 'tokens'), side_by_side=True, show_minibatch=True, log_y=False, fig_title='',
           y_name='loss'):
    """The matplotlib figure of runs, a list of (name, rows), with y_name ('loss' or 'bpb') above HellaSwag."""
    plt = pyplot()
    from matplotlib.ticker import EngFormatter
    quantities = [y_name] + (['hellaswag'] if any(has_hellaswag(rows) for _, rows in runs) else [])
    side_by_side = side_by_side and len(runs) > 1
    # each panel: (the runs drawn in it, x axis, quantity)
    if side_by_side:  # a column per run; a row per x axis and quantity, HellaSwag beneath its loss
        grid = [[([run], x_name, q) for run in runs] for x_name in x_names for q in quantities]
        width, loss_height = 5.5 * len(runs), 3.75
    else:  # every run (or the only one) in the same panels: a column per x axis, a row per quantity
        grid = [[(runs, x_name, q) for x_name in x_names] for q in quantities]
        width, loss_height = 6 * len(x_names), 4.8
    heights = [0.6 * loss_height if row[0][2] == 'hellaswag' else loss_height for row in grid]
    fig, axes = plt.subplots(len(grid), len(grid[0]), figsize=(width, sum(heights)), sharey='row', squeeze=False,
                             gridspec_kw=dict(height_ratios=heights))
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    seconds_per_unit, time_name = time_unit(runs)
    for r, (ax_row, grid_row) in enumerate(zip(axes, grid)):
        for ax, (panel_runs, x_name, q) in zip(ax_row, grid_row):
            x_scale = seconds_per_unit if x_name == 'seconds' else 1
            x_label = f"wall-clock time ({time_name})" if x_name == 'seconds' else X_AXES[x_name]
            for i, (name, rows) in enumerate(panel_runs):
                for kind, column_name, label, style in LINES[q]:
                    xs, ys = series(rows, kind, x_name, column_name, x_scale)
                    if xs and (show_minibatch or kind != 'train'):
                        ax.plot(xs, ys, color=colors[i % len(colors)],
                                label=label if len(panel_runs) == 1 else f"{name}: {label}", **style)
            if not ax.lines and len(panel_runs) == 1:  # an empty panel that is one run's alone says why
                missing = x_label if q != 'hellaswag' or has_hellaswag(panel_runs[0][1]) else 'HellaSwag scores'
                ax.text(0.5, 0.5, f"no {missing} recorded", ha='center', va='center', transform=ax.transAxes)
            ax.set_xlabel(x_label)
            ax.grid(True, alpha=0.3)
            if q == 'hellaswag':
                ax.axhline(CHANCE, color='gray', linestyle=':', linewidth=1)
            elif log_y:
                ax.set_yscale('log')
            if x_name == 'tokens':
                ax.xaxis.set_major_formatter(EngFormatter())
            if side_by_side and r == 0:
                ax.set_title(panel_runs[0][0])
        ax_row[0].set_ylabel({'loss': 'loss', 'bpb': 'bits per byte'}.get(q, 'HellaSwag acc_norm'))  # the row's
    # one legend per run column (side by side), or one for all runs (overlay), in the top row
    for ax in (axes[0] if side_by_side else axes[0][:1]):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize='small')
    if fig_title or len(runs) == 1:
        fig.suptitle(fig_title or runs[0][0])
    fig.tight_layout()
    return fig

def ours(path):
    """Whether the file at path is a PNG this script wrote (and may replace)."""
    mark = b'tEXtwritten_by\0' + WRITTEN_BY['written_by'].encode()  # the text chunk savefig puts before the pixels
    try:
        with open(path, 'rb') as f:
            return f.read(8) == b'\x89PNG\r\n\x1a\n' and mark in f.read(1 << 16)
    except OSError:  # a folder, say
        return False

def main():
    run_dirs = [d.strip() for d in out_dirs.split(',') if d.strip()] if out_dirs else [out_dir]
    if len(set(map(os.path.normpath, run_dirs))) != len(run_dirs):
        raise UserError(f"out_dirs lists a folder twice: {out_dirs}")
    x_names = [name.strip() for name in x.split(',')]
    if not all(name in X_AXES for name in x_names) or len(set(x_names)) != len(x_names):
        raise UserError(f"x must name x axes separated by commas, each once, out of {', '.join(X_AXES)}; "
                        f"e.g. --x=iter,tokens or --x=seconds; got {x!r}")
    # a comparison goes beside the runs, not wherever the command ran (the repository, say)
    path = output or os.path.join(run_dirs[0], 'loss.png' if len(run_dirs) == 1 else 'loss_comparison.png')
    if not path.lower().endswith('.png'):
        raise UserError(f"output must be a .png file, got '{path}'")
    if y not in ('loss', 'bpb'):
        raise UserError(f"y must be 'loss' or 'bpb' (bits per byte), got {y!r}")
    configurator.require_positive(globals(), 'dpi')
    files.refuse_foreign(path, ours, 'plot.py', '--output')
    runs = [(os.path.basename(os.path.normpath(d)) or d, load_run(d)) for d in run_dirs]
    fig = figure(runs, x_names, not overlay, minibatch, logy, title, y)
    files.write_atomically(path, lambda tmp: fig.savefig(tmp, format='png', dpi=dpi, metadata=WRITTEN_BY))
    pyplot().close(fig)
    print(f"wrote {os.path.abspath(path)} ({', '.join(f'{name}: {len(rows)} rows' for name, rows in runs)})")

if __name__ == '__main__':
    configurator.configure(globals())
    main()
