"""Everything that needs an NVIDIA GPU in one command and one table, most telling part first, within --minutes: a
part that would not fit is skipped; a budget cut or Ctrl+C still prints the table; exits 1 if a part failed."""
import argparse
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
from helpers import REPO_ROOT, UserError, data  # noqa: E402

GPU = 'tests/test_gpu.py::'
GRACE = 15  # seconds a part stopped at the budget's end gets to write what it has
FIRST = ('mfu', 'tiny_run_on_the_device', 'resume_on_the_device', 'torchrun_over_nccl', 'compiled_sampling')
# (part, seconds it needs at the least, command): a pytest part names its tests, the others what to show
PARTS = [
    ('GPT-2 124M compiled, default dtype: ms/iter, MFU, peak memory', 90, [f'{GPU}test_gpt2_124m_mfu_is_plausible']),
    ('tiny training in each dtype, compiled, and exact resume', 60,
     ['tests/test_gpu.py', '-k', 'tiny_run_on_the_device or resume_on_the_device']),
    ('torchrun over NCCL: DDP and FSDP, compiled and resumed', 90,
     [f'{GPU}test_torchrun_over_nccl_compiled_and_resumed']),
    ('sampling with the KV cache, compiled', 40, [f'{GPU}test_compiled_sampling_gives_the_greedy_tokens_of_eager']),
    ('the rest of the GPU tier, and the device errors', 90,
     ['tests/test_gpu.py', 'tests/test_errors.py::test_train_refuses_and_creates_nothing', '-k',
      f"(test_gpu and not ({' or '.join(FIRST)})) or (refuses and device)"]),
    ('shakespeare_char model, one training iteration', 45,
     ['bench.py', *CHAR_MODEL.split(), r'time per iteration: .*']),
    ('sampling with and without the KV cache', 45, ['benchmarks/sampling.py', '--models=gpt2', r'^\| GPT-2 .*']),
    ('config/train_shakespeare_char.py, 5000 iterations', 240,
     ['train.py', 'config/train_shakespeare_char.py', '--out_dir={tmp}/char', r'^step \d+: .*|^finished .*']),
]

def run(args, seconds):
    """(exit status, output) of python args; past seconds a Ctrl+C (pytest writes what it has), then a kill: None."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output = proc.communicate(timeout=max(seconds - GRACE, 1))[0]
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            return None, proc.communicate(timeout=GRACE)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return None, proc.communicate()[0]
    except BaseException:  # Ctrl+C: no part goes on alone
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise

def test_rows(junit_path):
    """(test, result, figure) for each test case of a junit XML file."""
    rows = []
    for case in ElementTree.parse(junit_path).iterfind('.//testcase[@name]'):  # not an interrupt's nameless record
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome = next((child for child in case if child.tag in ('failure', 'error', 'skipped')), None)
        result = 'passed' if outcome is None else outcome.tag
        if result == 'skipped':
            result = f"skipped: {outcome.get('message', '').removeprefix('Skipped: ')}"
        figures = [f"{p.get('name')}: {p.get('value')}" for p in case.iter('property')]
        rows.append((name, result, '; '.join(figures) or f"{float(case.get('time', 0)):.1f} s"))
    return rows

def run_part(command, seconds, tmp):
    """(result, figure) of one part given seconds."""
    if command[0].startswith('tests/'):
        junit = os.path.join(tmp, f'part{len(os.listdir(tmp))}.xml')  # a killed part leaves no earlier part's
        # -n0: in one process (not pytest.ini's two), so that no other test shares the GPU with a timed one
        status, output = run(['-m', 'pytest', '-q', '-n0', f'--junitxml={junit}', *command], seconds)
        tests = test_rows(junit) if os.path.exists(junit) else []
        failed = [f"{name} {result}" for name, result, _ in tests if result in ('failure', 'error')]
        passed, skipped = (sum(r.startswith(kind) for _, r, _ in tests) for kind in ('passed', 'skipped'))
        figure = '; '.join([f"{passed} passed, {skipped} skipped"] +
                           [f for _, r, f in tests if r == 'passed' and not f.endswith(' s')])
    else:
        *args, shown = command
        status, output = run([a.format(tmp=tmp) for a in args], seconds)
        failed, figure = [], '; '.join(m.strip('| ') for m in re.findall(shown, output, re.M)[-2:])
    if status is None:
        return f"failed: cut at the budget's end ({output.strip().splitlines()[-1:] or ['no output']})", figure
    if status != 0 or failed:
        return f"failed: {', '.join(failed) or output.strip()[-300:]}", figure
    return 'passed', figure

def main(minutes, tmp):
    deadline, rows = time.time() + 60 * minutes, []
    prepared = os.path.exists(os.path.join(data.data_dir('shakespeare_char'), 'train.bin'))
    try:
        for part, need, command in PARTS:
            left, start = deadline - time.time(), time.time()
            if 'shakespeare_char' in ' '.join(command) and not prepared:
                rows.append((part, 'skipped: prepare the data first: python data/shakespeare_char/prepare.py', '', 0))
            elif left < need:
                rows.append((part, f'skipped: {left:.0f} s of the budget left, it needs {need} s', '', 0))
            else:
                rows.append((part, *run_part(command, left, tmp), time.time() - start))
    except KeyboardInterrupt:
        rows.append(('(stopped by Ctrl+C)', 'failed: the parts not listed did not run', '', 0))
    finally:
        print(f"\n{machine()}; {minutes - (deadline - time.time()) / 60:.1f} of {minutes:g} minutes\n")
        print("| part | result | figure | seconds |\n|---|---|---|---:|")
        for part, result, figure, seconds in rows:
            print(f"| {part} | {result} | {figure} | {seconds:.0f} |")
    return 0 if all(not r.startswith('failed') for _, r, _, _ in rows) else 1

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--minutes', type=float, default=9.0, help='the time budget of the whole command')
    minutes = parser.parse_args().minutes
    if not torch.cuda.is_available():
        raise UserError(f"no CUDA device is visible to this torch ({torch.__version__}, "
                        f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'a CPU-only build'}); on a machine "
                        "with an NVIDIA GPU, install a CUDA build of torch (README: Install) and check nvidia-smi")
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(main(minutes, tmp))
