"""sample.py on a checkpoint trained here: text comes out, seeded per sample, from ckpt.pt or
from latest.pt when that is all there is, with prompts given inline or from a file."""
import os
import re

from conftest import core_text, run_inproc, run_script

SEPARATOR = '---------------'


def samples_of(stdout, prompt):
    """The samples printed, in order (the set-up lines before them dropped)."""
    text = stdout.split('Loading meta from')[1].split('\n', 1)[1]
    assert text.startswith(prompt), text[:200]
    return [s.strip('\n') for s in text.split(SEPARATOR) if s.strip()]


def sample_args(out_dir, **settings):
    settings = dict(dict(device='cpu', num_samples=3, max_new_tokens=20, start='the', seed=7), **settings)
    return [f'--out_dir={out_dir}', *[f'--{k}={v}' for k, v in settings.items()]]


def test_sample_prints_text_from_the_trained_checkpoint(tiny_run):
    proc = run_script('sample.py', *sample_args(tiny_run.out_dir), timeout=120)
    samples = samples_of(proc.stdout, 'the')
    assert len(samples) == 3
    vocabulary = set(core_text())
    for sample in samples:
        assert sample.startswith('the') and len(sample) == 3 + 20
        assert set(sample) <= vocabulary
    assert re.search(r'generated 60 tokens in [\d.]+s', proc.stderr)
    # a model that learned the words writes mostly words of the list, not random characters
    words = ' '.join(s.replace('\n', ' ') for s in samples).split()
    known = sum(w in {'the', 'cat', 'sat', 'on', 'a', 'mat', 'dog', 'ran', 'far', 'away', 'and', 'then', 'slept'}
                for w in words)
    assert known >= len(words) // 3, samples


def test_streamed_and_batched_samples_are_the_same(tiny_run):
    streamed = samples_of(run_inproc('sample.py', *sample_args(tiny_run.out_dir), check=True).stdout, 'the')
    batched = samples_of(run_inproc('sample.py', *sample_args(tiny_run.out_dir, stream=False), check=True).stdout,
                         'the')
    assert streamed == batched
    assert len(set(streamed)) > 1  # each sample has its own seed
    again = samples_of(run_inproc('sample.py', *sample_args(tiny_run.out_dir), check=True).stdout, 'the')
    assert again == streamed
    other_seed = samples_of(run_inproc('sample.py', *sample_args(tiny_run.out_dir, seed=8), check=True).stdout, 'the')
    assert other_seed != streamed


def test_prompt_from_a_file(tiny_run, tmp_path):
    prompt = tmp_path / 'prompt.txt'
    prompt.write_text('the dog ran')
    result = run_inproc('sample.py', *sample_args(tiny_run.out_dir, start=f'FILE:{prompt}', num_samples=1),
                        check=True)
    [sample] = samples_of(result.stdout, 'the dog ran')
    assert sample.startswith('the dog ran') and len(sample) == len('the dog ran') + 20


def test_sample_reads_latest_when_it_is_the_only_checkpoint(copy_run):
    os.remove(copy_run / 'ckpt.pt')
    result = run_inproc('sample.py', *sample_args(copy_run, num_samples=1), check=True)
    assert len(samples_of(result.stdout, 'the')) == 1
