"""The metrics log (helpers/metrics.py), the loss-curve plot (plot.py) and evaluation (evaluate.py)."""
import contextlib
import json
import math
import os
import re
import struct

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from helpers import data
import evaluate
from helpers import metrics
import tiny_runs
from conftest import REPO_ROOT, run_script

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'



@pytest.fixture(scope='module')
def char_dataset():
    name = tiny_runs.make_char_dataset('eval')
    yield name
    tiny_runs.remove_dataset(name)


def png_size(path):
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b'IHDR', f"{path} is not a PNG"
    return struct.unpack('>II', head[16:24])


def fake_run(out_dir, n_iters=60, eval_interval=20, tokens_per_iter=512, start_loss=4.0):
    with contextlib.closing(metrics.MetricsLog(str(out_dir), 0)) as log:
        for it in range(n_iters + 1):
            loss = start_loss * math.exp(-it / 40) + 1.0
            if it % eval_interval == 0:
                log.write(it, it * tokens_per_iter, 1e-3, train_loss=loss - 0.1, val_loss=loss + 0.1)
            log.write(it, (it + 1) * tokens_per_iter, 1e-3, train_loss=loss + 0.05 * math.sin(it),
                      ms_per_iter=12.5, mfu=None if it < 5 else 0.25)


# ----------------------------------------------------------------------------- metrics.py

def test_metrics_log_writes_header_rows_and_empty_cells(tmp_path):
    with contextlib.closing(metrics.MetricsLog(str(tmp_path), 0)) as log:
        log.write(0, 0, 6e-4, train_loss=4.25, val_loss=4.5)
        log.write(0, 4096, 6e-4, train_loss=4.3, ms_per_iter=120.5, mfu=-1.0)  # train.py's "not measured"
        log.write(1, 8192, 6.5e-4, train_loss=4.1, ms_per_iter=100.0, mfu=0.123)
    lines = (tmp_path / 'metrics.csv').read_text().splitlines()
    assert lines[0] == 'iter,kind,tokens,train_loss,val_loss,lr,ms_per_iter,mfu'
    assert lines[1] == '0,eval,0,4.25,4.5,0.0006,,'
    assert lines[2] == '0,train,4096,4.3,,0.0006,120.5,'
    rows = metrics.read_metrics(str(tmp_path / 'metrics.csv'))
    assert rows[2] == dict(iter=1, kind='train', tokens=8192, train_loss=4.1, val_loss=None, lr=6.5e-4,
                           ms_per_iter=100.0, mfu=0.123)


def test_metrics_log_resume_drops_rows_from_the_restart_iteration(tmp_path):
    fake_run(tmp_path, n_iters=30, eval_interval=10)
    path = str(tmp_path / 'metrics.csv')
    with open(path, 'a') as f:
        f.write('31,tra')  # a row cut off by a crash mid-write
    with contextlib.closing(metrics.MetricsLog(str(tmp_path), 20)) as log:  # resumed from the checkpoint of iter 20
        for it in range(20, 23):
            if it == 20:
                log.write(it, it * 512, 1e-3, train_loss=1.5, val_loss=1.6)
            log.write(it, (it + 1) * 512, 1e-3, train_loss=1.4, ms_per_iter=10.0)
    rows = metrics.read_metrics(path)
    keys = [(r['iter'], r['kind']) for r in rows]
    assert len(keys) == len(set(keys))
    assert [r['iter'] for r in rows if r['kind'] == 'eval'] == [0, 10, 20]
    assert [r['iter'] for r in rows if r['kind'] == 'train'] == list(range(23))
    assert [r['val_loss'] for r in rows if r['iter'] == 20 and r['kind'] == 'eval'] == [1.6]  # the new run's
    assert os.listdir(tmp_path) == ['metrics.csv']  # no temporary file left behind
    # a new run from scratch in the same out_dir starts the log afresh
    metrics.MetricsLog(str(tmp_path), 0).close()
    assert metrics.read_metrics(path) == []


# ----------------------------------------------------------------------------- plot.py

def test_plot_one_run_and_several_side_by_side(tmp_path):
    fake_run(tmp_path / 'small', start_loss=4.0)
    fake_run(tmp_path / 'big', start_loss=3.0, tokens_per_iter=2048)
    run_script('plot.py', f'--out_dir={tmp_path / "small"}')
    width1, height1 = png_size(tmp_path / 'small' / 'loss.png')
    assert 300 < width1 < 3000 and 300 < height1 < 3000
    run_script('plot.py', f'--out_dirs={tmp_path / "small"},{tmp_path / "big"}', f'--output={tmp_path / "both.png"}')
    width2, height2 = png_size(tmp_path / 'both.png')
    assert width1 > height1  # one run: the two panels in a row
    assert height2 > 1.3 * height1 and 800 < width2 < 3000  # two runs: one column each, two panels high
    assert os.path.getsize(tmp_path / 'both.png') > 20_000  # curves, not an empty canvas


def test_plot_overlay_and_errors(tmp_path):
    import plot
    fake_run(tmp_path / 'a')
    fake_run(tmp_path / 'b', start_loss=2.0)
    runs = [(name, plot.load_run(str(tmp_path / name))) for name in ('a', 'b')]
    plot.plot(runs, str(tmp_path / 'overlay.png'), side_by_side=False, log_y=True)
    width, height = png_size(tmp_path / 'overlay.png')
    assert width > height > 300

    proc = run_script('plot.py', f'--out_dir={tmp_path / "empty"}', check=False)
    assert proc.returncode == 1 and proc.stderr.strip().startswith('error:') and 'Traceback' not in proc.stderr
    os.makedirs(tmp_path / 'empty')
    proc = run_script('plot.py', f'--out_dir={tmp_path / "empty"}', check=False)
    assert proc.returncode == 1 and 'no metrics.csv' in proc.stderr


# ----------------------------------------------------------------------------- evaluate.py

@pytest.mark.parametrize('n_tokens', [2, 16, 17, 18, 100, 1003])
@pytest.mark.parametrize('block_size', [1, 16])
def test_full_pass_windows_predict_every_token_but_the_first_once(n_tokens, block_size):
    windows = evaluate.full_pass_windows(n_tokens, block_size)
    predicted = [t for start, length in windows for t in range(start + 1, start + length + 1)]
    assert predicted == list(range(1, n_tokens))
    assert all(1 <= length <= block_size for _, length in windows)


def straightforward_val_loss(model, dataset_name, block_size):
    """Slide over val.bin window by window, one at a time, and average every prediction."""
    data = np.fromfile(os.path.join(REPO_ROOT, 'data', dataset_name, 'val.bin'), dtype=np.uint16).astype(np.int64)
    total, count = 0.0, 0
    for start in range(0, len(data) - 1, block_size):
        y = torch.from_numpy(data[start + 1:start + 1 + block_size])
        x = torch.from_numpy(data[start:start + len(y)])
        logits = tiny_runs.full_logits(model, x[None])[0]
        total += F.cross_entropy(logits, y, reduction='sum').item()
        count += len(y)
    return total / count, count


def test_full_pass_matches_a_straightforward_computation(tmp_path, char_dataset):
    model = tiny_runs.make_model('gelu', bias=True, block_size=16)
    expected, n = straightforward_val_loss(model, char_dataset, 16)
    assert n == 1002  # val.bin holds 1003 tokens: the last window is a short one of 10
    loss, count = evaluate.full_pass_loss(model, data.bin_path(char_dataset, 'val'), np.dtype(np.uint16),
                                          batch_size=5, block_size=16, device='cpu',
                                          ctx=torch.autocast('cpu', enabled=False))
    assert count == n and loss == pytest.approx(expected, rel=1e-6)

    tiny_runs.save_checkpoint(model, str(tmp_path), char_dataset)
    # float32 as above: on a CPU with bf16 instructions evaluate.py would otherwise autocast to bf16
    run_script('evaluate.py', f'--out_dir={tmp_path}', '--full_pass=True', '--batch_size=7', '--device=cpu',
               '--dtype=float32', f'--results_file={tmp_path / "full.json"}')
    result = json.loads((tmp_path / 'full.json').read_text())
    assert list(result['splits']) == ['val']  # a full pass is over val unless --splits says otherwise
    val = result['splits']['val']
    assert val['tokens'] == n and val['loss'] == pytest.approx(expected, rel=1e-5)
    assert val['perplexity'] == pytest.approx(math.exp(val['loss']), rel=1e-12)


def test_fixed_batches_are_deterministic(tmp_path, char_dataset):
    model = tiny_runs.make_model('gelu_tanh', bias=False, block_size=16)
    tiny_runs.save_checkpoint(model, str(tmp_path), char_dataset)
    outputs = []
    for k in range(2):
        proc = run_script('evaluate.py', f'--out_dir={tmp_path}', '--device=cpu', '--dtype=float32', '--eval_iters=4',
                          f'--results_file={tmp_path / f"{k}.json"}')
        outputs.append(json.loads((tmp_path / f'{k}.json').read_text()))
        assert re.search(r'^val: loss \d+\.\d{4}, perplexity \d+\.\d{4} \(256 tokens', proc.stdout, re.M), proc.stdout
    assert outputs[0] == outputs[1]  # two processes, the same numbers
    assert outputs[0]['settings']['seed'] == 1337 and outputs[0]['settings']['batch_size'] == 4  # the checkpoint's
    path = data.bin_path(char_dataset, 'val')
    no_autocast = torch.autocast('cpu', enabled=False)
    for split in ('train', 'val'):
        numbers = outputs[0]['splits'][split]
        assert numbers['perplexity'] == pytest.approx(math.exp(numbers['loss']), rel=1e-12)
        assert numbers['tokens'] == 4 * 4 * 16  # eval_iters x the checkpoint's batch_size x block_size
    # the batches are those of the seed: the same seed again gives the same loss, another seed another one
    same = evaluate.fixed_batch_loss(model, path, np.dtype(np.uint16), 4, 16, 4, 1337 * 7919 + 1, 'cpu', no_autocast)
    other = evaluate.fixed_batch_loss(model, path, np.dtype(np.uint16), 4, 16, 4, 7 * 7919 + 1, 'cpu', no_autocast)
    assert same == pytest.approx(outputs[0]['splits']['val']['loss'], rel=1e-6) and other != same


# ----------------------------------------------------------------------------- with train.py

TRAIN_ARGS = ('--device=cpu', '--compile=False', '--dtype=float32', '--n_layer=1', '--n_head=2', '--n_embd=16',
              '--block_size=16', '--batch_size=4', '--gradient_accumulation_steps=1', '--eval_interval=2',
              '--eval_iters=3', '--log_interval=1', '--warmup_iters=1', '--lr_decay_iters=6', '--dropout=0.0')


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory, char_dataset):
    out_dir = tmp_path_factory.mktemp('train') / 'out'
    proc = run_script('train.py', f'--dataset={char_dataset}', f'--out_dir={out_dir}', '--max_iters=4', *TRAIN_ARGS)
    return out_dir, proc.stdout


def printed_evals(stdout):
    return {int(it): (float(tr), float(va)) for it, tr, va in
            re.findall(r'^step (\d+): train loss ([0-9.]+), val loss ([0-9.]+)', stdout, re.M)}


def test_evaluate_reproduces_the_losses_train_py_printed(trained_run):
    out_dir, stdout = trained_run
    evals = printed_evals(stdout)
    assert sorted(evals) == [0, 2, 4]
    # ckpt.pt was saved at the evaluation of iter 4; with the checkpoint's own eval_iters,
    # batch_size and seed, evaluate.py scores the same batches with the same weights
    run_script('evaluate.py', f'--out_dir={out_dir}', '--device=cpu', f'--results_file={out_dir / "eval.json"}')
    result = json.loads((out_dir / 'eval.json').read_text())['splits']
    assert (round(result['train']['loss'], 4), round(result['val']['loss'], 4)) == evals[4]


def test_train_py_writes_the_metrics_log_and_resume_adds_no_duplicates(trained_run, char_dataset):
    out_dir, first_stdout = trained_run
    proc = run_script('train.py', f'--dataset={char_dataset}', f'--out_dir={out_dir}', '--init_from=resume',
                      '--max_iters=6', *TRAIN_ARGS)
    rows = metrics.read_metrics(str(out_dir / 'metrics.csv'))
    keys = [(r['iter'], r['kind']) for r in rows]
    assert len(keys) == len(set(keys)), "an iteration was logged twice"
    evals = {r['iter']: r for r in rows if r['kind'] == 'eval'}
    trains = {r['iter']: r for r in rows if r['kind'] == 'train'}
    assert sorted(evals) == [0, 2, 4, 6] and sorted(trains) == list(range(7))
    printed = {**printed_evals(first_stdout), **printed_evals(proc.stdout)}
    for it, (train_loss, val_loss) in printed.items():
        assert (round(evals[it]['train_loss'], 4), round(evals[it]['val_loss'], 4)) == (train_loss, val_loss)
    for kind_rows in (evals, trains):
        tokens = [kind_rows[it]['tokens'] for it in sorted(kind_rows)]
        assert all(t is not None for t in tokens) and tokens == sorted(tokens) and tokens[-1] > 0
    assert all(r['ms_per_iter'] is not None and r['lr'] is not None for r in trains.values())
    run_script('plot.py', f'--out_dir={out_dir}')
    assert png_size(out_dir / 'loss.png')[0] > 300
