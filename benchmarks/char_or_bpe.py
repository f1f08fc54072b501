"""Which tokenizer trains the better model in equal time (the long laptop config's time on shakespeare_char): a
text by character and in BPEs of several sizes, in val bits per byte; a table for benchmarks/README.md.
$ python benchmarks/char_or_bpe.py --input=data/shakespeare_char/input.txt --name=tiny_shakespeare"""
import argparse
import concurrent.futures
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.performance import run  # noqa: E402

CONFIG = 'config/train_shakespeare_char_cpu_long.py'

def train(dataset, out_dir, iters, *settings):
    """(wall seconds, median ms per iteration) of the long laptop config on dataset."""
    log, seconds = run('train.py', CONFIG, f'--dataset={dataset}', f'--out_dir={out_dir}', '--overwrite=True',
                       f'--max_iters={iters}', f'--lr_decay_iters={iters}', f'--eval_interval={max(1, iters // 10)}',
                       *settings)
    return seconds, statistics.median(float(ms) for ms in re.findall(r'time ([\d.]+)ms', log))

def measure(dataset, out_dir, iters):
    seconds, _ = train(dataset, out_dir, iters)
    evaluation, _ = run('evaluate.py', f'--out_dir={out_dir}', '--full_pass=True')
    bpb = float(re.search(r'val: .*?([\d.]+) bits per byte', evaluation).group(1))
    sample, _ = run('sample.py', f'--out_dir={out_dir}', '--num_samples=1', '--max_new_tokens=120', '--start=\n')
    text = [s.strip() for s in sample.split('---------------')[0].splitlines() if not s.startswith('Overriding')]
    line = next((s for s in text if len(s) >= 40), max(text, key=len, default=''))  # a line of text, not a name
    return dict(dataset=dataset, iters=iters, seconds=seconds, bpb=bpb, sample=line[:80])

def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n$')[0])
    parser.add_argument('--input', required=True)
    parser.add_argument('--name', required=True, help='prefix of the datasets and out-tokenizers/ runs')
    parser.add_argument('--vocab_sizes', default='256,512,1024,2048,4096')
    parser.add_argument('--val_split', default='end', choices=('end', 'spread'))
    parser.add_argument('--budget_iters', type=int, default=3300, help="the long config's iterations (fewer: quicker)")
    args = parser.parse_args()
    os.environ['OMP_NUM_THREADS'] = '1'  # for every run: one core each, two side by side
    names = {0: f'{args.name}_char', **{int(v): f'{args.name}_bpe{v}' for v in args.vocab_sizes.split(',')}}
    for v, name in names.items():
        run(f'data/{"char" if v == 0 else "bpe"}/prepare.py', f'--input={args.input}', f'--name={name}', '--force',
            f'--val_split={args.val_split}', *([f'--vocab_size={v}'] if v else []))
    run('data/shakespeare_char/prepare.py')
    out = lambda name: os.path.join('out-tokenizers', name)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two runs at a time, each on one core
        # 200-iteration pilots time an iteration of each; the budget: the long laptop config's own iterations
        pilot = lambda name: train(name, out(name) + '-pilot', 200, '--eval_interval=1000', '--log_interval=10')[1]
        timed = ['shakespeare_char', *names.values()]
        pilots = dict(zip(timed, pool.map(pilot, timed)))
        iters = {v: round(args.budget_iters * pilots['shakespeare_char'] / pilots[name]) for v, name in names.items()}
        rows = list(pool.map(lambda v: measure(names[v], out(names[v]), iters[v]), names))
    print("| tokenizer | iterations | wall time | val bits per byte | sample |\n|---|---:|---:|---:|---|")
    for v, row in zip(names, rows):
        print(f"| {'characters' if v == 0 else f'BPE {v:,}'} | {row['iters']:,} | {row['seconds']:.0f} s | "
              f"{row['bpb']:.4f} | {row['sample'].replace('|', '/')} |")

if __name__ == '__main__':
    main()
