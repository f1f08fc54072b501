"""The README's performance tables on this machine: bench.py's iteration, train.py's time to a model (on a CPU
nanoGPT's recipe against the laptop configs) and the KV cache; --runs_dir keeps the runs for plot.py."""
import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import REPO_ROOT, UserError, data, files  # noqa: E402

CPU_RECIPE = ('config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 '
              '--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 '
              '--lr_decay_iters=2000 --dropout=0.0')  # nanoGPT's README, as it stands there
CHAR_MODEL = '--dataset=shakespeare_char --n_layer=6 --n_head=6 --n_embd=384 --block_size=256 --batch_size=64'
RECIPE_MODEL = '--dataset=shakespeare_char --n_layer=4 --n_head=4 --n_embd=128 --block_size=64 --batch_size=12'
# the training runs, (label, command, run folder); on a CPU the first is the reference the others are timed against
CPU_RUNS = (("nanoGPT's CPU recipe (the reference)", CPU_RECIPE, 'nanogpt-cpu-recipe'),
            ('the laptop config', 'config/train_shakespeare_char_cpu.py', 'laptop'),
            ('the long laptop config', 'config/train_shakespeare_char_cpu_long.py', 'laptop-long'))
GPU_RUNS = (('shakespeare_char, 5000 iterations', 'config/train_shakespeare_char.py', 'shakespeare-char'),)
MADE_HERE = 'made_by_performance.txt'  # in each run folder this script made: the ones it may replace

def made_here(folder):
    """Whether this script may replace the run in folder: it made it, or it is empty."""
    return os.path.isdir(folder) and (not os.listdir(folder) or os.path.isfile(os.path.join(folder, MADE_HERE)))

def machine():
    cpu = platform.processor() or platform.machine()
    if os.path.exists('/proc/cpuinfo'):
        cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')),
                   cpu)
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ''
    return f"machine: {cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}; date: {datetime.date.today()}"

def run(*args):
    """(stdout, wall seconds) of `python args` in the repo root; exits on a failure."""
    start = time.time()
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"python {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout, time.time() - start

def bench_row(label, command):
    out, _ = run(*command.split())
    ms, tokens, mfu = re.search(r'time per iteration: ([\d.]+)ms, tokens/s: ([\d,]+), MFU: (\S+)', out).groups()
    return f"| {label} | `python {command}` | {ms} | {tokens} | {mfu.rstrip(',')} |"

def train_row(label, command, out_dir):
    files.write_text(os.path.join(out_dir, MADE_HERE),
                     "benchmarks/performance.py made this folder and replaces the run in it each time it runs\n")
    out, seconds = run('train.py', *command.split(), f'--out_dir={out_dir}', '--overwrite=True')
    step, val = re.findall(r'^step (\d+): train loss [\d.]+, val loss ([\d.]+)', out, re.M)[-1]
    return seconds, float(val), (f"| {label} (`{os.path.basename(out_dir)}`) | `python train.py {command}` | "
                                 f"{seconds:.0f} s | {val} (step {step}) |")

def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--only', choices=['training', 'laptop', 'sampling'], help='one group of rows')
    parser.add_argument('--runs_dir', help="keep the training runs here, one out_dir each (plot.py reads them)")
    args = parser.parse_args()
    if args.runs_dir and os.path.exists(args.runs_dir) and not os.path.isdir(args.runs_dir):
        raise UserError(f"--runs_dir={args.runs_dir} is a file; name a folder (it is created if missing)")
    cuda = torch.cuda.is_available()
    if args.runs_dir and args.only in (None, 'laptop'):
        for *_, name in GPU_RUNS if cuda else CPU_RUNS:
            files.refuse_foreign(os.path.join(args.runs_dir, name), made_here, 'benchmarks/performance.py',
                                 '--runs_dir')
    if not os.path.exists(os.path.join(data.data_dir('shakespeare_char'), 'train.bin')):
        run('data/shakespeare_char/prepare.py')
    print(f"{machine()}; load average before: {os.getloadavg()[0]:.2f}")
    if args.only in (None, 'training'):  # each table after a blank line
        print("\n| model | command | ms/iter | tokens/s | MFU |\n|---|---|---:|---:|---:|")
        if not cuda:
            print(bench_row('CPU recipe (4 x 128, 64 characters, batch 12)',
                            f'bench.py --device=cpu {RECIPE_MODEL} --bench_iters=100'))
        print(bench_row('shakespeare_char config (10.7M)',
                        f'bench.py {CHAR_MODEL}' + ('' if cuda else ' --warmup_iters=2 --bench_iters=3')))
        print(bench_row(f"GPT-2 124M, batch {12 if cuda else 1} x 1024", 'bench.py --real_data=False' +
                        ('' if cuda else ' --batch_size=1 --warmup_iters=1 --bench_iters=3')))
    if args.only in (None, 'laptop'):
        print("\n| run | command | wall time | final val loss |" +
              ("\n|---|---|---:|---:|" if cuda else " time / recipe |\n|---|---|---:|---:|---:|"))
        with tempfile.TemporaryDirectory() as tmp:
            reference = None
            for label, command, name in GPU_RUNS if cuda else CPU_RUNS:
                seconds, _, row = train_row(label, command, os.path.join(args.runs_dir or tmp, name))
                reference = reference or seconds
                print(row if cuda else f"{row} {seconds / reference:.2f}x |")  # a CPU's time over the recipe's
    if args.only in (None, 'sampling'):
        out, _ = run('benchmarks/sampling.py', f"--device={'cuda' if cuda else 'cpu'}")
        print('\n' + '\n'.join(line for line in out.splitlines() if line.startswith(('|', 'device'))))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")

if __name__ == '__main__':
    main()
