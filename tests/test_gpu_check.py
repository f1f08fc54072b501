"""benchmarks/gpu_check.py, the one command of the GPU tier: its table says, for each check, what
it proved (passed, with a figure the test recorded), why it did not run, or that it failed."""
import os
import sys

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import gpu_check  # noqa: E402

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_gpu" name="test_gpt2_124m_mfu_is_plausible" time="41.2">
  <properties><property name="GPT-2 124M, 12 x 1024: ms/iter, MFU" value="98.1 ms, 44.0%"/></properties></testcase>
<testcase classname="tests.test_gpu" name="test_two_gpus_train_as_one_with_the_same_total_batch" time="0.001">
  <skipped type="pytest.skip" message="needs two or more NVIDIA GPUs">skipped</skipped></testcase>
<testcase classname="tests.test_fsdp" name="test_fsdp_without_torchrun_is_a_clear_error" time="1.5">
  <failure message="AssertionError">assert False</failure></testcase>
</testsuite></testsuites>"""


def test_the_table_rows_say_what_each_check_proved(tmp_path):
    path = tmp_path / 'gpu.xml'
    path.write_text(JUNIT)
    assert gpu_check.test_rows(str(path)) == [
        ('test_gpu::test_gpt2_124m_mfu_is_plausible', 'passed', 'GPT-2 124M, 12 x 1024: ms/iter, MFU: 98.1 ms, 44.0%'),
        ('test_gpu::test_two_gpus_train_as_one_with_the_same_total_batch', 'skipped: needs two or more NVIDIA GPUs',
         '0.0 s'),
        ('test_fsdp::test_fsdp_without_torchrun_is_a_clear_error', 'failure', '1.5 s')]
