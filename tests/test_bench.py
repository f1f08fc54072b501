"""bench.py on real and random batches and the profiler; benchmarks/sampling.py and performance.py's tables;
gpu_check.py, GPU faked: checks by value within the budget, the table kept through a cut or Ctrl+C, failures exit 1."""
import os
import re

import pytest

from benchmarks import gpu_check, performance
from conftest import assert_user_error, run_inproc

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

PROFILE = ['bench.py', *TINY, '--real_data=False', '--profile=True', '--profile_dir={tmp}/bench_log']

@pytest.mark.parametrize('args, fragments', [
    # bench.py makes train.py's checks, before any model is built or trace written
    (PROFILE + ['--n_embd=30', '--n_head=4'], ['n_embd (30) must be divisible by n_head (4)', '--n_embd=32']),
    (PROFILE + ['--n_layer=0'], ['n_layer must be a positive number, got 0']),
    (PROFILE + ['--dropout=1.0'], ['dropout must be in [0, 1), got 1.0']),
    (PROFILE + ['--batch_size=-2'], ['batch_size must be a positive number, got -2']),
    *[(['benchmarks/sampling.py', f'--lengths={bad}'], ['lengths', '200,1000']) for bad in ('200,lots', '0', '200,-5')],
    (['benchmarks/sampling.py', '--models=gpt3'], ['models', 'gpt2', "'gpt3'"]),
    (['benchmarks/performance.py', '--only=laptop', '--runs_dir={tmp}/runs'], ['runs_dir', 'is a file']),
])
def test_benchmarks_refuse_bad_settings_in_one_line(tmp_path, args, fragments):
    (tmp_path / 'runs').write_text('not a folder')
    assert_user_error(run_inproc(*[arg.format(tmp=tmp_path) for arg in args]), *fragments)
    assert sorted(os.listdir(tmp_path)) == ['runs']  # no trace written

def test_bench_profile_writes_a_trace(tmp_path):
    result = run_inproc(*[arg.format(tmp=tmp_path) for arg in PROFILE], check=True)
    assert f"profiler trace written to {tmp_path / 'bench_log'}" in result.stdout
    traces = [n for n in os.listdir(tmp_path / 'bench_log') if n.endswith(('.json', '.json.gz'))]
    assert traces and os.path.getsize(tmp_path / 'bench_log' / traces[0]) > 1000, traces
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

def test_performance_rows_parse_what_bench_and_train_print(tmp_path, shakespeare_char):
    """performance.py's rows, on small commands: the figures it reads from bench.py's and train.py's output."""
    row = performance.bench_row('tiny', 'bench.py --device=cpu --dataset=shakespeare_char --n_layer=1 --n_head=2 '
                                        '--n_embd=16 --block_size=16 --batch_size=2 --warmup_iters=1 --bench_iters=2')
    assert re.fullmatch(r'\| tiny \| `python bench\.py [^`]+` \| [\d.]+ \| [\d,]+ \| n/a \|', row), row
    seconds, val, row = performance.train_row('tiny', 'config/train_shakespeare_char_cpu.py --max_iters=4 '
                                                      '--eval_interval=2 --eval_iters=2', tmp_path / 'out')
    assert seconds > 0 and 3.0 < val < 4.5 and '(step 4)' in row and row.startswith('| tiny (`out`) |')
    assert (tmp_path / 'out' / 'metrics.csv').exists()  # kept, for plot.py (--runs_dir)

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_gpu" name="test_gpt2_124m_mfu_is_plausible" time="41.2">
  <properties><property name="GPT-2 124M, 12 x 1024: ms/iter, MFU" value="98.1 ms, 44.0%"/></properties></testcase>
<testcase classname="tests.test_gpu" name="test_two_gpus_learn_as_one" time="0.001">
  <skipped type="pytest.skip" message="needs two or more NVIDIA GPUs">skipped</skipped></testcase>
{failure}</testsuite></testsuites>"""
FAILURE = """<testcase classname="tests.test_gpu" name="test_torchrun_over_nccl" time="1.5">
  <failure message="AssertionError">assert False</failure></testcase>"""

def test_gpu_check_without_a_visible_gpu_is_one_line():
    assert_user_error(run_inproc('benchmarks/gpu_check.py'), 'no CUDA device is visible', 'CUDA build of torch')

@pytest.mark.parametrize('interrupt', [False, True])
def test_gpu_check_parts_run_in_order_of_value_within_the_budget(monkeypatch, capsys, tmp_path, interrupt):
    clock, calls = [0.0], []
    def fake_run(args, seconds):
        calls.append(seconds)
        if interrupt and len(calls) == 2:
            raise KeyboardInterrupt
        clock[0] += 100  # every part takes 100 s of the 540
        if args[:2] == ['-m', 'pytest']:
            assert '-n0' in args  # in one process: no other test shares the GPU with a timed one
            junit = next(a for a in args if a.startswith('--junitxml=')).split('=', 1)[1]
            with open(junit, 'w') as f:
                f.write(JUNIT.format(failure=FAILURE if 'torchrun' in ' '.join(args) else ''))
        return 0, 'time per iteration: 5.00ms, tokens/s: 1,000, MFU: 40.00%'
    monkeypatch.setattr(gpu_check, 'run', fake_run)
    monkeypatch.setattr(gpu_check.time, 'time', lambda: clock[0])
    monkeypatch.setattr(gpu_check.data, 'data_dir', lambda name: str(tmp_path))  # shakespeare_char not prepared
    assert gpu_check.main(9, str(tmp_path)) == 1
    rows = [row.split(' | ') for row in capsys.readouterr().out.split('|---|---|---|---:|\n')[1].splitlines()]
    parts = [row[0].strip('| ') for row in rows]
    if interrupt:
        assert parts == [gpu_check.PARTS[0][0], '(stopped by Ctrl+C)']
        return
    assert parts == [part for part, _, _ in gpu_check.PARTS]  # the table lists every part, in the order of value
    assert calls == [540, 440, 340, 240, 140]  # each part gets what is left of the budget
    assert rows[0][1:] == ['passed', '1 passed, 1 skipped; GPT-2 124M, 12 x 1024: ms/iter, MFU: 98.1 ms, 44.0%',
                           '100 |']
    assert rows[2][1].startswith('failed: test_gpu::test_torchrun_over_nccl failure')
    assert rows[6][1] == 'skipped: 40 s of the budget left, it needs 45 s' and rows[6][3] == '0 |'
    assert rows[5][1].startswith('skipped: prepare the data first') and rows[7][1] == rows[5][1]

def test_gpu_check_table_rows_say_what_each_test_proved(tmp_path):
    (tmp_path / 'gpu.xml').write_text(JUNIT.format(failure=FAILURE))
    assert gpu_check.test_rows(str(tmp_path / 'gpu.xml')) == [
        ('test_gpu::test_gpt2_124m_mfu_is_plausible', 'passed', 'GPT-2 124M, 12 x 1024: ms/iter, MFU: 98.1 ms, 44.0%'),
        ('test_gpu::test_two_gpus_learn_as_one', 'skipped: needs two or more NVIDIA GPUs', '0.0 s'),
        ('test_gpu::test_torchrun_over_nccl', 'failure', '1.5 s')]

def test_gpu_check_part_reports_its_exit_status_and_is_stopped_at_its_budget():
    assert gpu_check.run(['-c', 'import sys; print("ran"); sys.exit(3)'], 60) == (3, 'ran\n')
    status, output = gpu_check.run(['-c', 'import time; print("begun", flush=True); time.sleep(60)'],
                                   gpu_check.GRACE + 1)
    assert status is None and output.startswith('begun') and 'KeyboardInterrupt' in output

def test_gpu_check_selects_only_tests_that_exist():
    """Each name FIRST keeps out of 'the rest' is part of a GPU test's name: else that part would run nothing."""
    with open(os.path.join(os.path.dirname(__file__), 'test_gpu.py'), encoding='utf-8') as f:
        names = re.findall(r'^def (test_\w+)', f.read(), re.MULTILINE)
    assert [key for key in gpu_check.FIRST if not any(key in name for name in names)] == []
