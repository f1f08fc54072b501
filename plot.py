"""
Plot train and val loss from the metrics.csv that train.py writes into out_dir, against
iterations and against training tokens, to a PNG.

$ python plot.py --out_dir=out-shakespeare-char                         # -> out-shakespeare-char/loss.png
$ python plot.py --out_dirs=out-small,out-big --output=compare.png      # runs side by side
$ python plot.py --out_dirs=out-small,out-big --overlay=True            # runs in the same panels

Two panels: loss against iterations (left) and against training tokens (right). Several
runs get one column each (iterations on top, tokens below), or share the two panels with
--overlay=True; all panels share their y axis so the runs compare at a glance.
Lines: the evaluations' train and val loss (estimated on fixed batches, markers), and,
faintly, the loss of each logged training minibatch (noisy; --minibatch=False hides it).
Only this script needs matplotlib (pip install matplotlib).
"""
import os

import configurator
from helpers import UserError, metrics

# -----------------------------------------------------------------------------
out_dir = 'out'  # the run to plot
out_dirs = ''  # several runs, comma-separated; replaces out_dir
output = ''  # the PNG to write; default out_dir/loss.png, or loss_comparison.png here for several runs
overlay = False  # several runs in the same two panels instead of one column each
minibatch = True  # also draw the per-iteration minibatch loss of the log lines
logy = False  # logarithmic loss axis
title = ''
dpi = 120
# -----------------------------------------------------------------------------

X_AXES = (('iter', 'iterations'), ('tokens', 'training tokens'))


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
            header, *lines = f.read().splitlines() or ['']
        if header.split(',') != list(metrics.COLUMNS) or any(line.strip() for line in lines):
            raise UserError(f"{path} is damaged: none of its rows can be read (its header should be "
                            f"{','.join(metrics.COLUMNS)}); plot another run, or train again")
        raise UserError(f"{path} has no rows yet; wait for the first log line or evaluation")
    return rows


def series(rows, kind, x_name, y_name):
    points = [(r[x_name], r[y_name]) for r in rows
              if r['kind'] == kind and r[x_name] is not None and r[y_name] is not None]
    return [p[0] for p in points], [p[1] for p in points]


def draw(ax, rows, x_name, color, label_prefix, show_minibatch):
    """One run's curves in one panel; returns whether anything was drawn."""
    drawn = False
    if show_minibatch:
        xs, ys = series(rows, 'train', x_name, 'train_loss')
        if xs:
            ax.plot(xs, ys, color=color, alpha=0.35, linewidth=0.8, label=f"{label_prefix}train (minibatch)")
            drawn = True
    for y_name, style, marker in (('train_loss', '--', 'o'), ('val_loss', '-', 's')):
        xs, ys = series(rows, 'eval', x_name, y_name)
        if xs:
            ax.plot(xs, ys, linestyle=style, marker=marker, markersize=3, color=color, linewidth=1.5,
                    label=f"{label_prefix}{y_name.split('_')[0]} (eval)")
            drawn = True
    return drawn


def plot(runs, path, side_by_side=True, show_minibatch=True, log_y=False, fig_title='', resolution=120):
    """runs: a list of (name, rows). Writes a PNG to path."""
    try:
        import matplotlib
        matplotlib.use('Agg')  # files only, no window
        import matplotlib.pyplot as plt
        from matplotlib.ticker import EngFormatter
    except ImportError:
        raise UserError("plot.py needs matplotlib: pip install matplotlib")
    side_by_side = side_by_side and len(runs) > 1
    if side_by_side:  # one column per run: loss against iterations on top, against tokens below
        fig, axes = plt.subplots(2, len(runs), figsize=(5.5 * len(runs), 7.5), sharey=True, squeeze=False)
        panel = lambda run, x_axis: axes[x_axis][run]
    else:  # every run (or the only one) in the same two panels, side by side
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True, squeeze=False)
        panel = lambda run, x_axis: axes[0][x_axis]
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, (name, rows) in enumerate(runs):
        color = colors[0] if side_by_side else colors[i % len(colors)]
        prefix = '' if side_by_side or len(runs) == 1 else f"{name}: "
        for x_axis, (x_name, x_label) in enumerate(X_AXES):
            ax = panel(i, x_axis)
            if not draw(ax, rows, x_name, color, prefix, show_minibatch) and (side_by_side or len(runs) == 1):
                ax.text(0.5, 0.5, f"no {x_label} recorded", ha='center', va='center', transform=ax.transAxes)
            ax.set_xlabel(x_label)
            if x_name == 'tokens':
                ax.xaxis.set_major_formatter(EngFormatter())
            if side_by_side and x_axis == 0:
                ax.set_title(name)
    for ax_row in axes:
        for ax in ax_row:
            ax.grid(True, alpha=0.3)
            if log_y:
                ax.set_yscale('log')
        ax_row[0].set_ylabel('loss')
    # one legend per run column (side by side), or one for all runs (overlay)
    for ax in (axes[0] if side_by_side else axes[0][:1]):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize='small')
    if fig_title or len(runs) == 1:
        fig.suptitle(fig_title or runs[0][0])
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=resolution)
    plt.close(fig)
    return path


def run_name(run_dir):
    return os.path.basename(os.path.normpath(run_dir)) or run_dir


def main():
    run_dirs = [d.strip() for d in out_dirs.split(',') if d.strip()] if out_dirs else [out_dir]
    if len(set(map(os.path.normpath, run_dirs))) != len(run_dirs):
        raise UserError(f"out_dirs lists a folder twice: {out_dirs}")
    runs = [(run_name(d), load_run(d)) for d in run_dirs]
    path = output or (os.path.join(run_dirs[0], 'loss.png') if len(run_dirs) == 1 else 'loss_comparison.png')
    if not path.lower().endswith('.png'):
        raise UserError(f"output must be a .png file, got '{path}'")
    if dpi <= 0:
        raise UserError(f"dpi must be positive, got {dpi}")
    plot(runs, path, side_by_side=not overlay, show_minibatch=minibatch, log_y=logy, fig_title=title,
         resolution=dpi)
    print(f"wrote {path} ({', '.join(f'{name}: {len(rows)} rows' for name, rows in runs)})")


if __name__ == '__main__':
    configurator.configure(globals())
    main()
