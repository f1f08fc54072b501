"""sample.py on a checkpoint trained here: text seeded per sample, from ckpt.pt (or latest.pt when that is all there
is), prompts inline or from a file, samples ended at the separator or a stop string."""
import functools
import os
import re
import subprocess
import sys

import pytest

from conftest import CORE_WORDS, REPO_ROOT, core_text, make_model, run_inproc, save_checkpoint
from model import GPT

SEPARATOR = '---------------'
PROMPTS = ('the cat', 'the dog', 'a mat')

def printed_text(stdout):
    """What sample.py printed after its set-up lines."""
    lines = stdout.split('\n')
    while lines and lines[0].startswith(('Overriding:', 'Loading meta from', 'loading weights')):
        lines.pop(0)
    return '\n'.join(lines)

def samples_of(stdout, prompt):
    """The samples printed, in order."""
    text = printed_text(stdout)
    assert text.startswith(prompt), text[:200]
    return [s.strip('\n') for s in text.split(SEPARATOR) if s.strip()]

def sample_args(out_dir, **settings):
    settings = dict(dict(device='cpu', num_samples=3, max_new_tokens=20, start='the', seed=7), **settings)
    return [f'--out_dir={out_dir}', *[f'--{k}={v}' for k, v in settings.items() if v is not None]]

@pytest.fixture(scope='module')
def sample(tiny_run):
    """sample.py on the tiny run with these settings: each set of settings runs once per module."""
    @functools.cache
    def run(**settings):
        return run_inproc('sample.py', *sample_args(tiny_run.out_dir, **settings), check=True)
    return run

def test_samples_of_the_trained_model_each_seeded_alike_streamed_or_batched_and_greedy(sample):
    run = sample()
    samples = samples_of(run.stdout, 'the')
    assert len(samples) == 3 and len(set(samples)) > 1  # each sample has its own seed
    assert all(s.startswith('the') and len(s) == 3 + 20 and set(s) <= set(core_text()) for s in samples), samples
    assert re.search(r'generated 60 tokens in [\d.]+s', run.stderr)
    # a model that learned the words writes mostly words of the list, not random characters
    words = ' '.join(s.replace('\n', ' ') for s in samples).split()
    assert sum(w in CORE_WORDS for w in words) >= len(words) // 3, samples
    assert samples_of(sample(stream=False).stdout, 'the') == samples
    assert samples_of(sample(seed=8).stdout, 'the') != samples
    greedy = samples_of(sample(top_k=1).stdout, 'the')  # which a tiny temperature samples too
    assert samples_of(sample(temperature=1e-39, top_k=None).stdout, 'the') == greedy and len(set(greedy)) == 1

@pytest.mark.parametrize('stream', [True, False])
def test_stopped_samples_are_the_unstopped_ones_cut_at_the_stop(sample, stream):
    """With the real model and sampling: stopping changes where a sample ends, never what it says."""
    full = samples_of(sample().stdout, 'the')
    stopped = samples_of(sample(stop="'a'", stream=stream).stdout, 'the')
    assert stopped == ['the' + s[3:].split('a')[0] for s in full]
    assert any(len(s) < len(f) for s, f in zip(stopped, full)), "no sample met the stop: the test proves little"

def test_prompt_files_and_many_prompts_each_equal_to_the_prompt_sampled_alone(sample, tmp_path):
    prompt = tmp_path / 'prompt.txt'  # a prompt file with Windows line ends reads as text
    prompt.write_bytes(b'the dog\r\nran')
    [s] = samples_of(sample(start=f'FILE:{prompt}', num_samples=1).stdout, 'the dog\nran')
    assert s.startswith('the dog\nran') and len(s) == len('the dog\nran') + 20
    prompts = tmp_path / 'prompts.txt'
    prompts.write_text('the cat\n\nthe dog\na mat\n')  # the blank line is skipped; two prompts of equal length
    short = dict(num_samples=2, max_new_tokens=8)
    alone = {top_p: [samples_of(sample(start=p, top_p=top_p, **short).stdout, p) for p in PROMPTS]
             for top_p in (1.0, 0.8)}
    for settings in (dict(), dict(stream=False), dict(use_kv_cache=False), dict(top_p=0.8, stream=False)):
        out = sample(start=None, prompts=prompts, **short, **settings).stdout
        parts = re.split(r"^=== prompt (\d)/3: '([^']*)' ===\n", out, flags=re.M)
        assert [(parts[i], parts[i + 1]) for i in range(1, len(parts), 3)] == [('1', 'the cat'), ('2', 'the dog'),
                                                                              ('3', 'a mat')]
        assert [[s.strip('\n') for s in parts[i].split(SEPARATOR) if s.strip()] for i in range(3, len(parts), 3)] \
            == alone[settings.get('top_p', 1.0)]

def test_sample_reads_latest_when_it_is_the_only_checkpoint(copy_run):
    os.remove(copy_run / 'ckpt.pt')
    result = run_inproc('sample.py', *sample_args(copy_run, num_samples=1, max_new_tokens=2), check=True)
    assert len(samples_of(result.stdout, 'the')) == 1

def test_a_reader_that_leaves_ends_sampling_without_a_traceback(tiny_run):
    """python sample.py | head -30: the reader goes in the middle of the samples."""
    proc = subprocess.Popen([sys.executable, 'sample.py', *sample_args(tiny_run.out_dir, num_samples=200)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.stdout.readline() != SEPARATOR + '\n':
        pass
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 1 and stderr == '', stderr

def scripted_generation(monkeypatch, tokens):
    """GPT.generate_tokens yields these token ids in every row, whatever the model says."""
    def generate_tokens(self, idx, max_new_tokens, *args, **kwargs):
        for token in tokens[:max_new_tokens]:
            yield idx.new_full((idx.size(0), 1), token)
    monkeypatch.setattr(GPT, 'generate_tokens', generate_tokens)

def test_a_gpt2_sample_ends_at_endoftext(monkeypatch, tmp_path):
    import tiktoken
    save_checkpoint(make_model(vocab_size=50304, n_embd=16, block_size=32), str(tmp_path),
                              '_no_such_dataset')
    enc = tiktoken.get_encoding('gpt2')
    scripted_generation(monkeypatch, enc.encode(' Hello world.') + [enc.eot_token] + enc.encode(' More text'))
    out = run_inproc('sample.py', f'--out_dir={tmp_path}', '--device=cpu', '--num_samples=1', '--start=Say:',
                     check=True).stdout
    assert out.split('\n---------------')[0].endswith('Say: Hello world.')
    assert '<|endoftext|>' not in out and 'More' not in out

SCRIPT = ' cat sat on a mat\nthen'

@pytest.mark.parametrize('stream', [True, False])
@pytest.mark.parametrize('script,settings,expected', [
    # the dataset's separator ends a sample, unless --stop_at_end=False (the old behaviour, separator and all)
    ('a dog|the cat', dict(start='ran'), 'rana dog'),
    ('a dog|the cat', dict(start='ran', stop_at_end=False), 'rana dog|the cat'),
    # a stop string across tokens ends it, and nothing after it is printed: the earliest one wins; one that
    # never appears changes nothing; one that is a prefix of the text ends it at once
    (SCRIPT, dict(stop="['at o', 'mat']"), 'the cat s'),
    (SCRIPT, dict(stop='xyz', max_new_tokens=30), 'the' + SCRIPT),
    (SCRIPT, dict(stop=' c'), 'the'),
])
def test_a_sample_ends_at_the_separator_or_a_stop_string(monkeypatch, make_dataset, tmp_path, stream, script,
                                                         settings, expected):
    text = 'the cat sat on a mat\nthen|a dog ran far|' * 50
    name = make_dataset('separator', text=text, meta_extra={'separator': '|'})
    save_checkpoint(make_model(vocab_size=len(set(text)), block_size=32), str(tmp_path), name)
    scripted_generation(monkeypatch, [sorted(set(text)).index(c) for c in script])
    out = run_inproc('sample.py', *sample_args(tmp_path, num_samples=2, stream=stream, **settings), check=True)
    assert samples_of(out.stdout, settings.get('start', 'the')) == [expected] * 2
