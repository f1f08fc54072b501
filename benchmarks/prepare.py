"""Benchmark of dataset preparation: dataprep's streaming code against the simple methods.

    python bench_prepare.py                                 # 1 GB character level, 256 MB BPE: ~6 minutes
    python bench_prepare.py --size_mb=32 --bpe_size_mb=8    # a quick one

Writes a synthetic corpus in TinyStories' text format (stories separated by a line holding
<|endoftext|>), then runs every method as its own process and reports wall time and peak
resident memory (os.wait4's ru_maxrss of that process), and its CPU time (user + system), which
other jobs on the machine disturb less than wall time:

characters  reference: the whole-file-in-memory method of nanoGPT's shakespeare_char
            (read all, sorted(set(text)), a list of ints per split, np.array)
            data/char/prepare.py on the same file (must give byte-identical train/val.bin)
            data/tinystories_char/prepare.py on the same stories (story-aware)
GPT-2 BPE   reference: read all, one encode_ordinary call per story, a list of ints, np.array
            data/tinystories/prepare.py (batched tiktoken on all cores; must give identical .bin files)

Temporary datasets go to data/_bench_*/ and are deleted afterwards; the corpus goes to --workdir.
"""
import argparse
import filecmp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORDS = ("once upon a time there was little girl boy named lily tom sue ben who loved to play with "
         "her his ball red blue big small happy sad dog cat bird tree park house mom dad friend day "
         "sun sky went saw said found wanted help share kind brave toy box garden water jump run fast "
         "slow smile laugh cried because but then so very and the of in on at it was is").split()
NAMES = ['Lily', 'Tom', 'Sue', 'Ben', 'Mia', 'Max', 'Zoë', 'Anna']
EXTRA = ['’', '“', '”', 'é', '—', '…']


def make_story(rng):
    """One synthetic story: a few paragraphs of short sentences, mostly ASCII."""
    paragraphs = []
    for _ in range(rng.integers(1, 4)):
        sentences = []
        for _ in range(rng.integers(2, 7)):
            words = list(rng.choice(WORDS, rng.integers(4, 14)))
            words[0] = words[0].capitalize()
            if rng.random() < 0.3:
                words.insert(int(rng.integers(0, len(words))), str(rng.choice(NAMES)))
            sentence = ' '.join(words) + str(rng.choice(['.', '.', '!', '?']))
            if rng.random() < 0.05:
                sentence = sentence[:-1] + str(rng.choice(EXTRA)) + sentence[-1]
            sentences.append(sentence)
        paragraphs.append(' '.join(sentences))
    return '\n\n'.join(paragraphs)


def write_corpus(path, size_bytes, seed=1337, pool=4096):
    """A TinyStories-format file of about size_bytes: stories drawn from a pool, in random order."""
    rng = np.random.default_rng(seed)
    stories = [(make_story(rng) + '\n<|endoftext|>\n').encode() for _ in range(pool)]
    end = b'\n<|endoftext|>\n'
    written = 0
    with open(path, 'wb') as f:
        while written < size_bytes:
            block = b''.join(stories[i] for i in rng.integers(0, pool, 20000))
            if written + len(block) > size_bytes:   # the last block: cut after the last whole story that fits
                block = block[:size_bytes - written]
                block = block[:block.rfind(end) + len(end)] if end in block else b''
                f.write(block)
                break
            f.write(block)
            written += len(block)
    return path


def reference_char(input_path, out_dir):
    """nanoGPT's shakespeare_char method: the whole text in memory and a Python list of ints."""
    with open(input_path, 'r', encoding='utf-8') as f:
        data = f.read()
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(data)
    train_text, val_text = data[:int(n * 0.9)], data[int(n * 0.9):]
    train_ids = [stoi[c] for c in train_text]
    val_ids = [stoi[c] for c in val_text]
    np.array(train_ids, dtype=np.uint16).tofile(os.path.join(out_dir, 'train.bin'))
    np.array(val_ids, dtype=np.uint16).tofile(os.path.join(out_dir, 'val.bin'))
    print(f"{n} characters, vocab size {len(chars)}")


def reference_bpe(train_path, val_path, out_dir):
    """The plain BPE method: the whole file in memory, one encode_ordinary call per story."""
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    for split, path in (('train', train_path), ('val', val_path)):
        with open(path, 'r', encoding='utf-8') as f:
            text = f.read()
        ids = []
        for story in text.split('\n<|endoftext|>\n'):
            story = story.strip()
            if story:
                ids.extend(enc.encode_ordinary(story))
                ids.append(enc.eot_token)
        np.array(ids, dtype=np.uint16).tofile(os.path.join(out_dir, f'{split}.bin'))


def measure(args):
    """Run `python args` in the repo root; (wall seconds, peak RSS in MiB, CPU seconds) of that process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if usage.ru_maxrss <= own_peak:
        print(f"warning: the peak RSS of python {args[0]} may be this benchmark's own ({own_peak >> 10} MiB)")
    if proc.returncode != 0:
        sys.exit(f"python {' '.join(args)} failed ({proc.returncode}):\n{output.decode(errors='replace')[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def same_files(dir_a, dir_b, names=('train.bin', 'val.bin')):
    # filecmp reads in small pieces: this process must stay small, because a child started by
    # fork+exec reports at least its parent's peak RSS as its own ru_maxrss
    return all(filecmp.cmp(os.path.join(dir_a, n), os.path.join(dir_b, n), shallow=False) for n in names)


def table(title, header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    print(f"\n{title}")
    line = lambda r: '| ' + ' | '.join(str(c).ljust(w) for c, w in zip(r, widths)) + ' |'  # noqa: E731
    print(line(header))
    print('|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    for r in rows:
        print(line(r))


def bench_chars(workdir, size_mb, skip_reference):
    corpus = os.path.join(workdir, f'stories_{size_mb}mb.txt')
    valid = os.path.join(workdir, f'stories_{size_mb}mb_valid.txt')
    if not os.path.exists(corpus):
        write_corpus(corpus, size_mb << 20)
        write_corpus(valid, max(size_mb << 20 >> 7, 1 << 16), seed=7)
    size = os.path.getsize(corpus)
    rows = []
    base = None
    if not skip_reference:
        ref_dir = os.path.join(workdir, 'reference_char')
        os.makedirs(ref_dir, exist_ok=True)
        seconds, rss, cpu = base = measure([__file__, '--reference_char', corpus, ref_dir])
        rows.append(['reference: whole file, list of ints (nanoGPT)', f'{seconds:.1f}', f'{cpu:.1f}',
                     f'{size / seconds / 2**20:.0f}', f'{rss:,.0f}', '1.0x', '1.00', 'n/a'])
    runs = [('data/char/prepare.py (dataprep, streaming)', '_bench_char',
             ['data/char/prepare.py', '--input', corpus, '--name', '_bench_char', '--force']),
            ('data/tinystories_char/prepare.py (story-aware)', '_bench_tinystories_char',
             ['data/tinystories_char/prepare.py', '--train_file', corpus, '--val_file', valid,
              '--name', '_bench_tinystories_char', '--force'])]
    for label, name, args in runs:
        seconds, rss, cpu = measure(args)
        identical = 'n/a'
        if name == '_bench_char' and base:
            identical = 'yes' if same_files(ref_dir, os.path.join(REPO_ROOT, 'data', name)) else 'NO'
        rows.append([label, f'{seconds:.1f}', f'{cpu:.1f}', f'{size / seconds / 2**20:.0f}', f'{rss:,.0f}',
                     f'{base[0] / seconds:.1f}x' if base else '-', f'{rss / base[1]:.2f}' if base else '-', identical])
        shutil.rmtree(os.path.join(REPO_ROOT, 'data', name))
    table(f"character level, {size / 2**20:,.0f} MiB TinyStories-format file ({size:,} bytes)",
          ['method', 'wall s', 'CPU s', 'MiB/s', 'peak RSS MiB', 'speed vs ref', 'memory vs ref', 'same .bin as ref'],
          rows)


def bench_bpe(workdir, size_mb):
    corpus = os.path.join(workdir, f'bpe_stories_{size_mb}mb.txt')
    valid = os.path.join(workdir, f'bpe_stories_{size_mb}mb_valid.txt')
    if not os.path.exists(corpus):
        write_corpus(corpus, size_mb << 20, seed=11)
        write_corpus(valid, max(size_mb << 20 >> 7, 1 << 16), seed=13)
    ref_dir = os.path.join(workdir, 'reference_bpe')
    os.makedirs(ref_dir, exist_ok=True)
    out_dir = os.path.join(REPO_ROOT, 'data', '_bench_tinystories')
    ref = measure([__file__, '--reference_bpe', corpus, valid, ref_dir])
    new = measure(['data/tinystories/prepare.py', '--train_file', corpus, '--val_file', valid,
                   '--name', '_bench_tinystories', '--force'])
    tokens = sum(os.path.getsize(os.path.join(ref_dir, f'{split}.bin')) for split in ('train', 'val')) // 2
    identical = 'yes' if same_files(ref_dir, out_dir) else 'NO'
    shutil.rmtree(out_dir)
    rows = [['reference: one encode_ordinary per story', f'{ref[0]:.1f}', f'{ref[2]:.1f}', f'{tokens / ref[0]:,.0f}',
             f'{ref[1]:,.0f}', '1.0x', 'n/a'],
            [f'data/tinystories/prepare.py (batched, {len(os.sched_getaffinity(0))} threads)', f'{new[0]:.1f}',
             f'{new[2]:.1f}', f'{tokens / new[0]:,.0f}', f'{new[1]:,.0f}', f'{ref[0] / new[0]:.1f}x', identical]]
    size = os.path.getsize(corpus) + os.path.getsize(valid)
    table(f"GPT-2 BPE, {size / 2**20:,.0f} MiB of TinyStories-format text, {tokens:,} tokens (end to end, "
          "tokenizer load included)",
          ['method', 'wall s', 'CPU s', 'tokens/s', 'peak RSS MiB', 'speed vs ref', 'same .bin as ref'], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size_mb', type=int, default=1024, help='size of the character-level corpus')
    parser.add_argument('--bpe_size_mb', type=int, default=256, help='size of the BPE corpus')
    parser.add_argument('--workdir', help='where the corpora go (default: a temporary folder, deleted)')
    parser.add_argument('--only', choices=['char', 'bpe'], help='run one of the two benchmarks')
    parser.add_argument('--skip_reference', action='store_true', help='character level: skip the reference method')
    parser.add_argument('--reference_char', nargs=2, metavar=('INPUT', 'OUT_DIR'), help=argparse.SUPPRESS)
    parser.add_argument('--reference_bpe', nargs=3, metavar=('TRAIN', 'VAL', 'OUT_DIR'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_char:
        return reference_char(*args.reference_char)
    if args.reference_bpe:
        return reference_bpe(*args.reference_bpe)
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPU cores ({len(os.sched_getaffinity(0))} usable), "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}")
    workdir = args.workdir or tempfile.mkdtemp(prefix='bench_prepare_')
    os.makedirs(workdir, exist_ok=True)
    print("load average before: %.2f %.2f %.2f (other jobs on this machine slow the wall times; CPU s is the "
          "process's own user+system time)" % os.getloadavg())
    try:
        if args.only in (None, 'char'):
            bench_chars(workdir, args.size_mb, args.skip_reference)
        if args.only in (None, 'bpe'):
            bench_bpe(workdir, args.bpe_size_mb)
        print("\nload average after: %.2f %.2f %.2f" % os.getloadavg())
    finally:
        if not args.workdir:
            shutil.rmtree(workdir)


if __name__ == '__main__':
    main()
