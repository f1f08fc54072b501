"""Everything that needs a GPU, in one command and one table: the GPU tier of the tests, the GPU
rows of the README's performance tables and the sampling benchmark.

    python benchmarks/gpu_check.py                 # at most 9 minutes; no network needed

It needs a CUDA (or Apple MPS) build of torch and the packages of requirements.txt; the
shakespeare_char rows need data/shakespeare_char prepared. Steps run in order of importance within
the time budget (--minutes): the tests get 60% of it (cut short, they report what finished), and a
benchmark that would not fit in what is left is listed as skipped. Without a GPU every GPU check is
listed as skipped, with the tests' reasons.
"""
import argparse
import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.performance import CHAR_MODEL, machine  # noqa: E402
from helpers import REPO_ROOT, data  # noqa: E402

# the tests whose paths differ on a GPU machine: the GPU tier, FSDP on the CPU of a GPU machine, and
# the device errors, whose suggestions name the best device present
TESTS = ['tests/test_gpu.py', 'tests/test_fsdp.py', 'tests/test_errors.py::test_unknown_or_absent_device']


def run(args, seconds):
    """Run python args in the repository; (exit status, stdout + stderr), or (None, why) past seconds. A
    run past its time is interrupted as Ctrl+C would (pytest then writes the results it has), and its
    process group killed if it does not end."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output = proc.communicate(timeout=max(seconds, 1))[0]
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        return None, f"stopped after {seconds:.0f} s"


def test_rows(junit_path):
    """(check, result, figure) for each test case of a junit XML file."""
    rows = []
    for case in ElementTree.parse(junit_path).iter('testcase'):
        if case.get('name') is None:  # pytest's record of an interrupted session, not a test
            continue
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome = next((child for child in case if child.tag in ('failure', 'error', 'skipped')), None)
        result = 'passed' if outcome is None else outcome.tag if outcome.tag != 'skipped' else \
            f"skipped: {outcome.get('message', '').removeprefix('Skipped: ')}"
        figures = [f"{p.get('name')}: {p.get('value')}" for p in case.iter('property')]
        rows.append((name, result, '; '.join(figures) or f"{float(case.get('time', 0)):.1f} s"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--minutes', type=float, default=9.0, help='the time budget of the whole command')
    args = parser.parse_args()
    deadline = time.time() + 60 * args.minutes
    cuda = torch.cuda.is_available()
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, 'gpu.xml')
        status, output = run(['-m', 'pytest', '-q', '-rA', f'--junitxml={junit}', *TESTS],
                             0.6 * (deadline - time.time()))
        rows += test_rows(junit) if os.path.exists(junit) else [('GPU tier', f'failed: not run ({output[-300:]})', '')]
        if status is None:
            rows.append(('GPU tier', f'failed: cut short, {output}; the checks not listed did not run', ''))

        # the README's GPU rows, most telling first, while the budget lasts: (label, seconds it should
        # take, command, what to show of its output)
        prepared = os.path.exists(os.path.join(data.data_dir('shakespeare_char'), 'train.bin'))
        # (GPT-2 124M's ms/iter and MFU come from the tier's test_gpt2_124m_mfu_is_plausible)
        steps = [('shakespeare_char config training iteration (10.7M)', 60, ['bench.py', *CHAR_MODEL.split()],
                  r'time per iteration: .*'),
                 ('sampling with and without the KV cache', 60, ['benchmarks/sampling.py', '--models=gpt2'],
                  r'^\| GPT-2 .*'),
                 ('config/train_shakespeare_char.py, 5000 iterations', 240,
                  ['train.py', 'config/train_shakespeare_char.py', f'--out_dir={os.path.join(tmp, "char")}'],
                  r'^step \d+: .*val loss [\d.]+|^finished .*')]
        for label, expected, command, shown in steps:
            if not cuda:
                rows.append((label, 'skipped: no CUDA device', ''))
            elif 'shakespeare_char' in ' '.join(command) and not prepared:
                rows.append((label, 'skipped: prepare the data first: python data/shakespeare_char/prepare.py', ''))
            elif deadline - time.time() < expected:
                rows.append((label, f'skipped: under {expected} s of the budget left', ''))
            else:
                start = time.time()
                status, output = run(command, deadline - time.time())
                figures = '; '.join(m.strip('| ') for m in re.findall(shown, output, re.M)[-2:])
                result = 'passed' if status == 0 else f'failed: {output}' if status is None else f'failed ({status})'
                rows.append((label, result, f"{figures} ({time.time() - start:.0f} s)"))

    print(f"\nmachine: {machine()}; date: {datetime.date.today()}; "
          f"{args.minutes - (deadline - time.time()) / 60:.1f} of {args.minutes:g} minutes\n")
    print("| check | result | figure |\n|---|---|---|")
    for check, result, figure in rows:
        print(f"| {check} | {result} | {figure} |")
    sys.exit(0 if all(not r.startswith(('failed', 'failure', 'error')) for _, r, _ in rows) else 1)


if __name__ == '__main__':
    main()
