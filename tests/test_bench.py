"""bench.py runs on real batches of the prepared shakespeare_char, on random tokens, and
under the profiler (which writes a trace); benchmarks/sampling.py prints its table of tokens/s."""
import os
import re

import pytest

from conftest import REPO_ROOT, assert_user_error, run_inproc

TINY = ['--device=cpu', '--compile=False', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16',
        '--batch_size=2', '--warmup_iters=2', '--bench_iters=3']
RESULT = re.compile(r'time per iteration: ([\d.]+)ms, tokens/s: ([\d,]+), MFU: n/a')

# the initial loss is near ln(vocabulary): shakespeare_char's 65 characters (4.17), GPT-2's padded 50304 (10.8)
@pytest.mark.parametrize('data, low, high', [(['--real_data=True', '--dataset=shakespeare_char'], 3.5, 4.8),
                                             (['--real_data=False'], 10.0, 11.5)])
def test_bench_on_real_batches_and_random_tokens(request, data, low, high):
    if '--real_data=True' in data:
        request.getfixturevalue('shakespeare_char')
    stdout = run_inproc('bench.py', *TINY, *data, check=True).stdout
    match = RESULT.search(stdout)
    assert match and float(match[1]) > 0 and re.search(r'benchmark: 3 iters, last loss ([\d.]+)', stdout), stdout
    assert low < float(re.search(r'warm-up: 2 iters, last loss ([\d.]+)', stdout)[1]) < high, stdout

@pytest.mark.parametrize('bad, fragments', [
    (['--n_embd=30', '--n_head=4'], ['n_embd (30) must be divisible by n_head (4)', '--n_embd=32']),
    (['--n_layer=0'], ['n_layer must be a positive number, got 0']),
    (['--dropout=1.0'], ['dropout must be in [0, 1), got 1.0']),
    (['--batch_size=-2'], ['batch_size must be a positive number, got -2']),
])
def test_bench_refuses_a_bad_shape_in_one_line(tmp_path, bad, fragments):
    """The checks train.py makes, before any model is built or trace written."""
    trace_dir = tmp_path / 'bench_log'
    assert_user_error(run_inproc('bench.py', *TINY, '--real_data=False', '--profile=True', f'--profile_dir={trace_dir}',
                                 *bad), *fragments)
    assert not trace_dir.exists()

def test_bench_profile_writes_a_trace(tmp_path):
    trace_dir = tmp_path / 'bench_log'
    result = run_inproc('bench.py', *TINY, '--real_data=False', '--profile=True', f'--profile_dir={trace_dir}',
                        check=True)
    assert f"profiler trace written to {trace_dir}" in result.stdout
    traces = [n for n in os.listdir(trace_dir) if n.endswith('.json') or n.endswith('.json.gz')]
    assert traces, os.listdir(trace_dir)
    assert os.path.getsize(trace_dir / traces[0]) > 1000
    assert result.stdout.count(' loss: ') == 15  # wait + warm-up + active steps

SAMPLE_ROW = re.compile(r'^\| (.+?) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \| (yes|NO) \|$', re.M)

def test_bench_sample_table(tiny_run):
    """GPT-2-sized rows and a trained checkpoint's rows, within its window (block_size 32) and past it."""
    result = run_inproc('benchmarks/sampling.py', '--device=cpu', '--lengths=3', '--min_seconds=0',
                        f'--shakespeare_out_dir={tiny_run.out_dir}', '--shakespeare_tokens=40', check=True)
    rows = SAMPLE_ROW.findall(result.stdout)
    assert [(name.split(' (')[0], int(n)) for name, n, *_ in rows] == [
        ('GPT-2 124M shape', 3), ('shakespeare_char', 31), ('shakespeare_char', 40)], result.stdout
    for name, n, slow, fast, speedup, same in rows:
        assert same == 'yes' and float(slow) > 0 and float(fast) > 0
        # the printed rates and ratio are rounded to one decimal
        assert float(speedup) == pytest.approx(float(fast) / float(slow), rel=0.03, abs=0.06)

def test_bench_sample_rejects_bad_lengths_and_models():
    for bad in ('200,lots', '0', '200,-5'):
        assert_user_error(run_inproc('benchmarks/sampling.py', f'--lengths={bad}'), 'lengths', '200,1000')
    assert_user_error(run_inproc('benchmarks/sampling.py', '--models=gpt3'), 'models', 'gpt2', "'gpt3'")

def test_performance_refuses_a_runs_dir_that_is_a_file(tmp_path):
    (tmp_path / 'runs').write_text('not a folder')
    assert_user_error(run_inproc('benchmarks/performance.py', '--only=laptop', f'--runs_dir={tmp_path / "runs"}'),
                      'runs_dir', 'is a file')

def test_performance_rows_parse_what_bench_and_train_print(tmp_path, shakespeare_char):
    """benchmarks/performance.py's rows, on commands small enough for a test: the figures it reads
    from bench.py's and train.py's output are there."""
    import importlib.util
    path = os.path.join(REPO_ROOT, 'benchmarks', 'performance.py')
    spec = importlib.util.spec_from_file_location('performance', path)
    performance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(performance)
    row = performance.bench_row('tiny', 'bench.py --device=cpu --dataset=shakespeare_char --n_layer=1 --n_head=2 '
                                        '--n_embd=16 --block_size=16 --batch_size=2 --warmup_iters=1 --bench_iters=2')
    assert re.fullmatch(r'\| tiny \| `python bench\.py [^`]+` \| [\d.]+ \| [\d,]+ \| n/a \|', row), row
    seconds, val, row = performance.train_row('tiny', 'config/train_shakespeare_char_cpu.py --max_iters=4 '
                                                      '--eval_interval=2 --eval_iters=2', tmp_path / 'out')
    assert seconds > 0 and 3.0 < val < 4.5 and '(step 4)' in row and row.startswith('| tiny (`out`) |')
    assert (tmp_path / 'out' / 'metrics.csv').exists()  # kept, for plot.py (--runs_dir)
