"""benchmarks/gpu_check.py, the GPU tier's one command, with the GPU parts faked: the parts run in order of
value within the budget, each with its seconds; the table survives a budget cut or Ctrl+C; a failure or a
machine without a visible GPU exits non-zero."""
import os
import sys

import pytest

from conftest import REPO_ROOT, assert_user_error, run_inproc

sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import gpu_check  # noqa: E402

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_gpu" name="test_gpt2_124m_mfu_is_plausible" time="41.2">
  <properties><property name="GPT-2 124M, 12 x 1024: ms/iter, MFU" value="98.1 ms, 44.0%"/></properties></testcase>
<testcase classname="tests.test_gpu" name="test_two_gpus_learn_as_one" time="0.001">
  <skipped type="pytest.skip" message="needs two or more NVIDIA GPUs">skipped</skipped></testcase>
{failure}</testsuite></testsuites>"""
FAILURE = """<testcase classname="tests.test_gpu" name="test_torchrun_over_nccl" time="1.5">
  <failure message="AssertionError">assert False</failure></testcase>"""

def test_without_a_visible_gpu_the_check_is_one_line():
    assert_user_error(run_inproc('benchmarks/gpu_check.py'), 'no CUDA device is visible', 'CUDA build of torch')

@pytest.mark.parametrize('interrupt', [False, True])
def test_parts_run_in_order_of_value_within_the_budget(monkeypatch, capsys, tmp_path, interrupt):
    clock, calls = [0.0], []

    def fake_run(args, seconds):
        calls.append(seconds)
        if interrupt and len(calls) == 2:
            raise KeyboardInterrupt
        clock[0] += 100  # every part takes 100 s of the 540
        if args[:2] == ['-m', 'pytest']:
            junit = next(a for a in args if a.startswith('--junitxml=')).split('=', 1)[1]
            with open(junit, 'w') as f:
                f.write(JUNIT.format(failure=FAILURE if 'torchrun' in ' '.join(args) else ''))
        return 0, 'time per iteration: 5.00ms, tokens/s: 1,000, MFU: 40.00%'
    monkeypatch.setattr(gpu_check, 'run', fake_run)
    monkeypatch.setattr(gpu_check.time, 'time', lambda: clock[0])
    monkeypatch.setattr(gpu_check.data, 'data_dir', lambda name: str(tmp_path))  # shakespeare_char not prepared
    assert gpu_check.main(9, str(tmp_path)) == 1
    table = capsys.readouterr().out.split('|---|---|---|---:|\n')[1].splitlines()
    parts = [row.split(' | ')[0].strip('| ') for row in table]
    if interrupt:
        assert parts == [gpu_check.PARTS[0][0], '(stopped by Ctrl+C)']
        return
    assert parts == [part for part, _, _ in gpu_check.PARTS]  # the table lists every part, in the order of value
    assert calls == [540, 440, 340, 240, 140]  # each part gets what is left of the budget
    rows = [row.split(' | ') for row in table]
    assert rows[0][1:] == ['passed', '1 passed, 1 skipped; GPT-2 124M, 12 x 1024: ms/iter, MFU: 98.1 ms, 44.0%',
                           '100 |']
    assert rows[2][1].startswith('failed: test_gpu::test_torchrun_over_nccl failure')
    assert rows[6][1] == 'skipped: 40 s of the budget left, it needs 45 s' and rows[6][3] == '0 |'
    assert rows[5][1].startswith('skipped: prepare the data first') and rows[7][1] == rows[5][1]

def test_the_table_rows_say_what_each_test_proved(tmp_path):
    path = tmp_path / 'gpu.xml'
    path.write_text(JUNIT.format(failure=FAILURE))
    assert gpu_check.test_rows(str(path)) == [
        ('test_gpu::test_gpt2_124m_mfu_is_plausible', 'passed', 'GPT-2 124M, 12 x 1024: ms/iter, MFU: 98.1 ms, 44.0%'),
        ('test_gpu::test_two_gpus_learn_as_one', 'skipped: needs two or more NVIDIA GPUs', '0.0 s'),
        ('test_gpu::test_torchrun_over_nccl', 'failure', '1.5 s')]

def test_a_part_reports_its_exit_status_and_is_stopped_at_its_budget():
    assert gpu_check.run(['-c', 'import sys; print("ran"); sys.exit(3)'], 60) == (3, 'ran\n')
    status, output = gpu_check.run(['-c', 'import time; print("begun", flush=True); time.sleep(60)'],
                                   gpu_check.GRACE + 1)
    assert status is None and output.startswith('begun') and 'KeyboardInterrupt' in output
