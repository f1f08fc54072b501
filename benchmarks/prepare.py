"""Benchmark of the data/*/prepare.py scripts against the simple whole-file methods, each a process of its own on a
synthetic TinyStories-format corpus: wall time, CPU time, peak RSS, same .bin files. Results: benchmarks/README.md."""
import argparse
import filecmp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import DATA_ROOT, REPO_ROOT  # noqa: E402  (not helpers.data: torch would swell the RSS measured)
WORDS = ("once upon a time there was little girl boy named who loved to play with her his ball red blue big small "
         "happy sad dog cat bird tree park house mom dad friend day sun sky went saw said found wanted help share "
         "kind brave toy box garden water jump run fast slow smile laugh cried because but then so very and the of "
         "in on at it was is").split() + ['Lily', 'Tom', 'Zoë', 'café', 'don’t', '“yes”', '—', '…']
BINS = ['train.bin', 'val.bin']

def write_corpus(path, size_bytes, seed):
    """About size_bytes of stories (a few paragraphs of short sentences each), drawn from a pool in random order."""
    if os.path.exists(path):
        return path
    rng = np.random.default_rng(seed)
    def sentence():
        return ' '.join(rng.choice(WORDS, rng.integers(4, 14))).capitalize() + str(rng.choice(['.', '.', '!', '?']))
    pool = [('\n\n'.join(' '.join(sentence() for _ in range(rng.integers(2, 7))) for _ in range(rng.integers(1, 4)))
             + '\n<|endoftext|>\n').encode() for _ in range(4096)]
    with open(path, 'wb') as f:
        while f.tell() < size_bytes:
            f.write(b''.join(pool[i] for i in rng.integers(0, len(pool), 1000)))
    return path

def corpus(workdir, kind, size_mb, seed):
    """A train file of size_mb MiB and a validation file of 1/128 of that (64 KiB at least)."""
    return [write_corpus(os.path.join(workdir, f'{kind}_{size_mb}mb_{split}.txt'), size, seed + i)
            for i, (split, size) in enumerate((('train', size_mb << 20), ('valid', max(size_mb << 13, 1 << 16))))]

def reference_char(path, out_dir):
    """nanoGPT's data/shakespeare_char/prepare.py: the whole text in memory and a list of ints per split."""
    with open(path, 'r', encoding='utf-8') as f:
        data = f.read()
    stoi, n = {ch: i for i, ch in enumerate(sorted(set(data)))}, int(len(data) * 0.9)
    for name, part in (('train.bin', slice(None, n)), ('val.bin', slice(n, None))):
        np.array([stoi[c] for c in data[part]], dtype=np.uint16).tofile(os.path.join(out_dir, name))

def reference_bpe(train_path, val_path, out_dir):
    """The plain BPE method: the whole file in memory, one encode_ordinary call per story."""
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    for split, path in (('train', train_path), ('val', val_path)):
        with open(path, 'r', encoding='utf-8') as f:
            stories = [story.strip() for story in f.read().split('\n<|endoftext|>\n')]
        ids = []
        for story in filter(None, stories):
            ids.extend(enc.encode_ordinary(story))
            ids.append(enc.eot_token)
        np.array(ids, dtype=np.uint16).tofile(os.path.join(out_dir, f'{split}.bin'))

def measure(*args):
    """Run `python args` in the repo root: (wall seconds, CPU seconds, peak RSS in MiB) of that process.
    This process stays small, because a child started by fork+exec reports at least its parent's peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"python {' '.join(args)} failed:\n{output.decode(errors='replace')[-3000:]}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024

def run(script, inputs, ref_dir=None):
    """A table row for data/<script>/prepare.py, its output compared with the reference's in ref_dir, if given."""
    usage = measure(f'data/{script}/prepare.py', *inputs, '--name', f'_bench_{script}', '--force')
    out_dir, same = os.path.join(DATA_ROOT, f'_bench_{script}'), 'n/a'
    if ref_dir:
        same = 'yes' if filecmp.cmpfiles(ref_dir, out_dir, BINS, shallow=False)[0] == BINS else 'NO'
    shutil.rmtree(out_dir)
    return f'data/{script}/prepare.py', usage, same

def table(title, unit, amount, rows):
    """rows: (method, (wall, CPU, RSS), same output as the reference); the reference comes first."""
    ref_wall, _, ref_rss = rows[0][1]
    lines = [('method', 'wall s', 'CPU s', unit, 'peak RSS MiB', 'speed vs ref', 'memory vs ref', 'same output')]
    lines += [(name, f'{wall:.1f}', f'{cpu:.1f}', f'{amount / wall:,.0f}', f'{rss:,.0f}', f'{ref_wall / wall:.1f}x',
               f'{rss / ref_rss:.3f}', same) for name, (wall, cpu, rss), same in rows]
    widths = [max(map(len, column)) for column in zip(*lines)]
    lines.insert(1, ['-' * w for w in widths])
    print(f"\n{title}")
    for line in lines:
        print('| ' + ' | '.join(cell.ljust(w) for cell, w in zip(line, widths)) + ' |')

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument('--size_mb', type=int, default=1024, help='size of the character-level corpus (32: quick)')
parser.add_argument('--bpe_size_mb', type=int, default=256, help='size of the BPE corpus (8: quick)')
parser.add_argument('--workdir', help='where the corpora go (default: a temporary folder, deleted)')
parser.add_argument('--reference', nargs='+', help=argparse.SUPPRESS)  # measure()'s child: char or bpe, its paths
args = parser.parse_args()
if args.reference:
    sys.exit({'char': reference_char, 'bpe': reference_bpe}[args.reference[0]](*args.reference[1:]))
print(f"machine: {platform.platform()}, {os.cpu_count()} CPU cores, "
      f"Python {platform.python_version()}, numpy {np.__version__}")
print("load average before: %.2f %.2f %.2f (other jobs slow wall times more than CPU times)" % os.getloadavg())
if args.workdir:
    os.makedirs(args.workdir, exist_ok=True)
# the references' outputs, and the corpora unless --workdir keeps them
with tempfile.TemporaryDirectory(prefix='bench_prepare_', dir=args.workdir) as ref_dir:
    workdir = args.workdir or ref_dir
    train, val = corpus(workdir, 'chars', args.size_mb, seed=10)
    rows = [('reference: whole file, list of ints (nanoGPT)', measure(__file__, '--reference', 'char', train, ref_dir),
             '-'), run('char', ['--input', train], ref_dir),
            run('tinystories_char', ['--train_file', train, '--val_file', val])]
    size = os.path.getsize(train)
    table(f"character level, {size / 2**20:,.0f} MiB TinyStories-format file ({size:,} bytes)", 'MiB/s',
          size / 2**20, rows)
    train, val = corpus(workdir, 'bpe', args.bpe_size_mb, seed=20)
    rows = [('reference: one encode_ordinary per story', measure(__file__, '--reference', 'bpe', train, val, ref_dir),
             '-'), run('tinystories', ['--train_file', train, '--val_file', val], ref_dir)]
    tokens = sum(os.path.getsize(os.path.join(ref_dir, f)) for f in BINS) // 2
    table(f"GPT-2 BPE, {(os.path.getsize(train) + os.path.getsize(val)) / 2**20:,.0f} MiB of TinyStories-format "
          f"text, {tokens:,} tokens, {os.cpu_count()} cores", 'tokens/s', tokens, rows)
    print("\nload average after: %.2f %.2f %.2f" % os.getloadavg())
