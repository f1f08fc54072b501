"""The metrics log (helpers/metrics.py), the loss-curve plot (plot.py) and evaluation (evaluate.py)."""
import contextlib
import itertools
import json
import math
import os
import re
import struct

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import evaluate
import plot
from conftest import (CORE_DATASET, DATA_ROOT, REPO_ROOT, core_train_args, full_logits, make_model, run_inproc,
                      save_checkpoint, step_losses)
from helpers import UserError, checkpoint, data, metrics

def png_size(path):
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR', f"{path} is not a PNG"
    return struct.unpack('>II', head[16:24])

def panels(runs, **kwargs):
    """The axes of plot.figure(runs, ...), the figure closed."""
    fig = plot.figure(runs, **kwargs)
    plot.pyplot().close(fig)
    return fig.axes

def fake_run(out_dir, n_iters=60, eval_interval=20, tokens_per_iter=512, start_loss=4.0, seconds_per_iter=None,
             hellaswag=False):
    """A metrics.csv as train.py writes it; seconds and HellaSwag scores only when asked for."""
    with contextlib.closing(metrics.MetricsLog(str(out_dir), 0)) as log:
        for it in range(n_iters + 1):
            loss = start_loss * math.exp(-it / 40) + 1.0
            seconds = None if seconds_per_iter is None else it * seconds_per_iter
            if it % eval_interval == 0:
                scores = dict(hellaswag_acc=0.25 + it / 1000, hellaswag_acc_norm=0.26 + it / 1000) if hellaswag else {}
                log.write(it, it * tokens_per_iter, 1e-3, train_loss=loss - 0.1, val_loss=loss + 0.1,
                          seconds=seconds, **scores)
            log.write(it, (it + 1) * tokens_per_iter, 1e-3, train_loss=loss + 0.05 * math.sin(it),
                      ms_per_iter=12.5, mfu=None if it < 5 else 0.25,
                      seconds=None if seconds is None else seconds + seconds_per_iter)

def test_metrics_log_writes_header_rows_and_empty_cells_and_a_resume_drops_rows_from_its_iteration(tmp_path):
    with contextlib.closing(metrics.MetricsLog(str(tmp_path), 0)) as log:
        log.write(0, 0, 6e-4, train_loss=4.25, val_loss=4.5, seconds=3.14159,
                  hellaswag_acc=2861 / 10042, hellaswag_acc_norm=0.3)
        log.write(0, 4096, 6e-4, train_loss=4.3, ms_per_iter=120.5, mfu=-1.0)  # train.py's "not measured"
        log.write(1, 8192, 6.5e-4, train_loss=4.1, ms_per_iter=100.0, mfu=0.123, seconds=12.0, val_loss=4.2,
                  train_bpb=5.9, val_bpb=6.1)
    assert (tmp_path / 'metrics.csv').read_text().splitlines()[:3] == [
        'iter,kind,tokens,seconds,train_loss,val_loss,hellaswag_acc,hellaswag_acc_norm,lr,ms_per_iter,mfu,train_bpb,'
        'val_bpb', '0,eval,0,3.14,4.25,4.5,0.284903,0.3,0.0006,,,,',  # rounded: readable, counts still exact
        '0,train,4096,,4.3,,,,0.0006,120.5,,,']
    rows = metrics.read_metrics(str(tmp_path / 'metrics.csv'))
    assert rows[2] == dict(iter=1, kind='eval', tokens=8192, seconds=12.0, train_loss=4.1, val_loss=4.2,
                           hellaswag_acc=None, hellaswag_acc_norm=None, lr=6.5e-4, ms_per_iter=100.0, mfu=0.123,
                           train_bpb=5.9, val_bpb=6.1)
    assert round(rows[0]['hellaswag_acc'] * 10042) == 2861
    fake_run(tmp_path, n_iters=30, eval_interval=10)  # a run resumed from its checkpoint of iteration 20
    path = str(tmp_path / 'metrics.csv')
    with open(path, 'a') as f:
        f.write('31,tra')  # a row cut off by a crash mid-write
    with contextlib.closing(metrics.MetricsLog(str(tmp_path), 20)) as log:
        log.write(20, 20 * 512, 1e-3, train_loss=1.5, val_loss=1.6)
        for it in range(20, 23):
            log.write(it, (it + 1) * 512, 1e-3, train_loss=1.4, ms_per_iter=10.0)
    rows = metrics.read_metrics(path)
    assert len({(r['iter'], r['kind']) for r in rows}) == len(rows)
    assert [r['iter'] for r in rows if r['kind'] == 'eval'] == [0, 10, 20]
    assert [r['iter'] for r in rows if r['kind'] == 'train'] == list(range(23))
    assert [r['val_loss'] for r in rows if r['iter'] == 20 and r['kind'] == 'eval'] == [1.6]  # the new run's
    assert os.listdir(tmp_path) == ['metrics.csv']  # no temporary file left behind
    metrics.MetricsLog(str(tmp_path), 0).close()  # a new run from scratch in the same out_dir starts afresh
    assert metrics.read_metrics(path) == []

OLD_FORMAT = """iter,kind,tokens,train_loss,val_loss,lr,ms_per_iter,mfu
0,eval,0,4.25,4.5,0.0006,,
0,train,4096,4.3,,0.0006,120.5,
1,train,8192,4.1,,0.00065,100.0,0.123
2,eval,8192,3.9,4.0,0.0007,,
2,train,12288,3.8,,0.0007,99.0,0.125
"""

def test_an_old_metrics_file_reads_plots_and_resumes(tmp_path):
    (tmp_path / 'metrics.csv').write_text(OLD_FORMAT)
    rows = metrics.read_metrics(str(tmp_path / 'metrics.csv'))
    assert [(r['iter'], r['kind'], r['val_loss']) for r in rows] == \
        [(0, 'eval', 4.5), (0, 'train', None), (1, 'train', None), (2, 'eval', 4.0), (2, 'train', None)]
    assert all(r['seconds'] is None and r['hellaswag_acc_norm'] is None for r in rows)
    # no HellaSwag panel; the seconds panel says why it is empty
    loss_iter, loss_seconds = panels([('old', plot.load_run(str(tmp_path)))], x_names=('iter', 'seconds'))
    assert [t.get_text() for t in loss_seconds.texts] == ['no wall-clock time (seconds) recorded']
    assert list(loss_iter.get_lines()[-1].get_xdata()) == [0, 2]  # val loss at the evaluations
    # a run resumed on the old file keeps its rows before the restart and writes every column
    with contextlib.closing(metrics.MetricsLog(str(tmp_path), 2)) as log:
        log.write(2, 8192, 7e-4, train_loss=3.9, val_loss=4.01, seconds=30.0)
    lines = (tmp_path / 'metrics.csv').read_text().splitlines()
    assert lines[0].split(',') == list(metrics.COLUMNS)
    assert lines[1:] == ['0,eval,0,,4.25,4.5,,,0.0006,,,,', '0,train,4096,,4.3,,,,0.0006,120.5,,,',
                         '1,train,8192,,4.1,,,,0.00065,100.0,0.123,,', '2,eval,8192,30.0,3.9,4.01,,,0.0007,,,,']
    (tmp_path / 'metrics.csv').write_text(OLD_FORMAT.splitlines()[0] + '\n')  # a header but no rows yet: no damage
    with pytest.raises(UserError, match='has no rows yet'):
        plot.load_run(str(tmp_path))

def test_plot_draws_a_column_per_run_a_row_per_measure_against_iterations_tokens_or_time(tmp_path):
    """Fake runs: small, big, scored (with HellaSwag, a row of panels beneath the loss), slow and fast (with time)."""
    runs = tmp_path / 'runs'
    for name, settings in dict(small={}, big=dict(start_loss=3.0, tokens_per_iter=2048), scored=dict(hellaswag=True),
                               slow=dict(seconds_per_iter=6.0),  # 61 iterations: 366 s, drawn in minutes
                               fast=dict(seconds_per_iter=1.5, start_loss=3.0)).items():
        fake_run(runs / name, **settings)
    run_inproc('plot.py', f'--out_dir={runs / "small"}', check=True)
    width1, height1 = png_size(runs / 'small' / 'loss.png')
    assert 300 < height1 < width1 < 3000  # one run: the two panels in a row
    run_inproc('plot.py', f'--out_dirs={runs / "small"},{runs / "big"}', f'--output={tmp_path / "both.png"}',
               check=True)
    width2, height2 = png_size(tmp_path / 'both.png')
    assert height2 > 1.3 * height1 and 800 < width2 < 3000  # two runs: one column each, two panels high
    assert os.path.getsize(tmp_path / 'both.png') > 20_000  # curves, not an empty canvas
    run_inproc('plot.py', f'--out_dir={runs / "small"}', check=True)  # over its own earlier PNG
    run_inproc('plot.py', f'--out_dir={runs / "scored"}', check=True)
    run_inproc('plot.py', f'--out_dirs={runs / "scored"},{runs / "small"}', check=True)
    scored_size = png_size(runs / 'scored' / 'loss.png')
    assert scored_size[0] == width1 and scored_size[1] > 1.4 * height1
    assert png_size(runs / 'scored' / 'loss_comparison.png')[1] > 1.4 * scored_size[1]
    slow, fast = (('slow', plot.load_run(str(runs / 'slow'))), ('fast', plot.load_run(str(runs / 'fast'))))
    assert plot.time_unit([slow, fast]) == (60, 'minutes') and plot.time_unit([fast]) == (1, 'seconds')  # 91.5 s
    (ax,) = panels([slow, fast], x_names=('seconds',), side_by_side=False)
    assert ax.get_xlabel() == 'wall-clock time (minutes)'
    val_lines = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines()
                 if line.get_label().endswith(': val (eval)')}
    assert val_lines == {'slow: val (eval)': [0.0, 2.0, 4.0, 6.0], 'fast: val (eval)': [0.0, 0.5, 1.0, 1.5]}
    result = run_inproc('plot.py', f'--out_dirs={runs / "slow"},{runs / "fast"}', '--overlay=True', '--logy=True',
                        '--x=iter,seconds', check=True)
    written = runs / 'slow' / 'loss_comparison.png'  # beside the first run, not in the current folder
    assert result.stdout.splitlines()[-1].startswith(f"wrote {written} (slow: ")
    assert png_size(written)[0] > png_size(written)[1] > 300  # overlaid: the two panels in a row
    assert not os.path.exists(os.path.join(REPO_ROOT, 'loss_comparison.png'))
    scored, plain = (plot.load_run(str(runs / name)) for name in ('scored', 'small'))
    assert [ax.get_ylabel() for ax in panels([('plain', plain)])] == ['loss', '']  # no panel for what was not measured
    loss_iter, loss_tokens, hellaswag_iter, hellaswag_tokens = panels([('scored', scored)])
    assert hellaswag_iter.get_ylabel() == 'HellaSwag acc_norm'
    line, = [line for line in hellaswag_iter.get_lines() if line.get_label() == 'HellaSwag']
    assert list(line.get_xdata()) == [0, 20, 40, 60] and list(line.get_ydata()) == [0.26, 0.28, 0.30, 0.32]
    assert list(hellaswag_tokens.get_lines()[0].get_xdata()) == [0, 20 * 512, 40 * 512, 60 * 512]
    axes = panels([('scored', scored), ('plain', plain)])  # row by row: against iterations, then tokens
    assert len(axes) == 8 and [t.get_text() for t in axes[3].texts] == ['no HellaSwag scores recorded']

def straightforward_val_loss(model, dataset_name, block_size):
    """Slide over val.bin window by window, one at a time, and average every prediction."""
    data = np.fromfile(os.path.join(DATA_ROOT, dataset_name, 'val.bin'), dtype=np.uint16).astype(np.int64)
    total, count = 0.0, 0
    for start in range(0, len(data) - 1, block_size):
        y = torch.from_numpy(data[start + 1:start + 1 + block_size])
        logits = full_logits(model, torch.from_numpy(data[start:start + len(y)])[None])[0]
        total += F.cross_entropy(logits, y, reduction='sum').item()
        count += len(y)
    return total / count, count

def test_full_pass_matches_a_straightforward_computation(tmp_path, char_dataset):
    """Its windows predict every token but the first once."""
    for n_tokens, block_size in itertools.product((2, 16, 17, 18, 100, 1003), (1, 16)):
        windows = evaluate.full_pass_windows(n_tokens, block_size)
        predicted = [t for start, length in windows for t in range(start + 1, start + length + 1)]
        assert predicted == list(range(1, n_tokens)) and all(1 <= length <= block_size for _, length in windows)
    model = make_model('gelu', bias=True, block_size=16)
    expected, n = straightforward_val_loss(model, char_dataset, 16)
    assert n == 1002  # val.bin holds 1003 tokens: the last window is a short one of 10
    loss, _, count = evaluate.full_pass_loss(model, data.bin_path(char_dataset, 'val'), np.dtype(np.uint16),
                                             batch_size=5, block_size=16, device='cpu',
                                             ctx=torch.autocast('cpu', enabled=False))
    assert count == n and loss == pytest.approx(expected, rel=1e-6)
    save_checkpoint(model, str(tmp_path), char_dataset)
    # float32 as above: on a CPU with bf16 instructions evaluate.py would otherwise autocast to bf16
    run_inproc('evaluate.py', f'--out_dir={tmp_path}', '--full_pass=True', '--batch_size=7', '--device=cpu',
               '--dtype=float32', f'--results_file={tmp_path / "full.json"}', check=True)
    result = json.loads((tmp_path / 'full.json').read_text())
    assert list(result['splits']) == ['val']  # a full pass is over val unless --splits says otherwise
    val = result['splits']['val']
    assert val['tokens'] == n and val['loss'] == pytest.approx(expected, rel=1e-5)

def test_evaluate_reproduces_the_losses_train_py_printed_whatever_the_random_state(tiny_run, tmp_path):
    """ckpt.pt is from iteration 20's evaluation: with its eval_iters, batch_size and seed, the same batches again."""
    evals = step_losses(tiny_run.stdout)
    assert sorted(evals) == [0, 10, 20]
    for k, seed in enumerate((1, 2)):
        torch.manual_seed(seed)
        np.random.seed(seed)
        proc = run_inproc('evaluate.py', f'--out_dir={tiny_run.out_dir}', '--device=cpu',
                          f'--results_file={tmp_path / f"{k}.json"}', check=True)
        assert re.search(r'^val: loss \d+\.\d{4}, perplexity \d+\.\d{4}, \d+\.\d{4} bits per byte \(256 tokens',
                         proc.stdout, re.M), proc.stdout
    output, again = (json.loads((tmp_path / f'{k}.json').read_text()) for k in range(2))
    assert output == again
    assert output['settings']['seed'] == 1337 and output['settings']['batch_size'] == 4  # the checkpoint's
    splits = output['splits']
    assert (round(splits['train']['loss'], 4), round(splits['val']['loss'], 4)) == evals[20]
    for numbers in splits.values():
        assert numbers['perplexity'] == pytest.approx(math.exp(numbers['loss']), rel=1e-12)
        assert numbers['tokens'] == 2 * 4 * 32  # eval_iters x batch_size x block_size
    # the batches are the seed's: the same seed again gives the same loss, another seed another one
    model = checkpoint.model_from_checkpoint(checkpoint.load(str(tiny_run.out_dir), 'ckpt.pt'))
    same, other = (evaluate.fixed_batch_loss(model, data.bin_path(CORE_DATASET, 'val'), np.dtype(np.uint16), 4, 32, 2,
                                             seed * 7919 + 1, 'cpu', torch.autocast('cpu', enabled=False))[0]
                   for seed in (1337, 7))
    assert same == pytest.approx(splits['val']['loss'], rel=1e-6) and other != same

def test_train_py_writes_the_metrics_log_and_resume_adds_no_duplicates(tiny_run, copy_run):
    resumed = run_inproc('train.py', *core_train_args(copy_run, init_from='resume', max_iters=30), check=True)
    rows = metrics.read_metrics(str(copy_run / 'metrics.csv'))
    assert len({(r['iter'], r['kind']) for r in rows}) == len(rows), "an iteration was logged twice"
    evals = {r['iter']: r for r in rows if r['kind'] == 'eval'}
    trains = {r['iter']: r for r in rows if r['kind'] == 'train'}
    assert sorted(evals) == [0, 10, 20, 30] and sorted(trains) == list(range(31))
    printed = {**step_losses(tiny_run.stdout), **step_losses(resumed.stdout)}
    assert printed == {it: (round(row['train_loss'], 4), round(row['val_loss'], 4)) for it, row in evals.items()}
    for kind_rows in (evals, trains):
        tokens = [kind_rows[it]['tokens'] for it in sorted(kind_rows)]
        assert all(t is not None for t in tokens) and tokens == sorted(tokens) and tokens[-1] > 0
    assert all(r['ms_per_iter'] is not None and r['lr'] is not None for r in trains.values())
    run_inproc('plot.py', f'--out_dir={copy_run}', check=True)
    assert png_size(copy_run / 'loss.png')[0] > 300
