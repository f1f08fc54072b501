"""sample.py on a checkpoint trained here: text comes out, seeded per sample, from ckpt.pt or
from latest.pt when that is all there is, with prompts given inline or from a file."""
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, assert_user_error, core_text, run_inproc, run_script

SEPARATOR = '---------------'


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


# ----------------------------------------------------------------------------- ending a sample

def scripted_generation(monkeypatch, tokens):
    """Make GPT.generate_tokens yield these token ids, in every row, whatever the model says: the
    tests below see exactly what sample.py prints for a given stream of tokens."""
    import torch
    from model import GPT

    def generate_tokens(self, idx, max_new_tokens, *args, **kwargs):
        for token in tokens[:max_new_tokens]:
            yield torch.full((idx.size(0), 1), token, dtype=torch.long, device=idx.device)
    monkeypatch.setattr(GPT, 'generate_tokens', generate_tokens)


def char_checkpoint(out_dir, dataset_name, vocab_size):
    import tiny_runs
    tiny_runs.save_checkpoint(tiny_runs.make_model(vocab_size=vocab_size, block_size=32), str(out_dir), dataset_name)


@pytest.mark.parametrize('stream', [True, False])
def test_a_sample_ends_at_the_datasets_separator(monkeypatch, make_dataset, tmp_path, stream):
    text = 'the cat sat|a dog ran far|' * 50
    name = make_dataset('separator', text=text, meta_extra={'separator': '|'})
    char_checkpoint(tmp_path, name, len(set(text)))
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    scripted_generation(monkeypatch, [stoi[c] for c in 'a dog|the cat'])
    args = sample_args(tmp_path, start='ran', num_samples=2, stream=stream)
    assert samples_of(run_inproc('sample.py', *args, check=True).stdout, 'ran') == ['rana dog'] * 2
    kept = run_inproc('sample.py', *args, '--stop_at_end=False', check=True).stdout
    assert samples_of(kept, 'ran') == ['rana dog|the cat'] * 2  # the old behaviour, separator and all


def test_a_gpt2_sample_ends_at_endoftext(monkeypatch, tmp_path):
    import tiktoken
    import tiny_runs
    tiny_runs.save_checkpoint(tiny_runs.make_model(vocab_size=50304, n_embd=16, block_size=32), str(tmp_path),
                              '_no_such_dataset')
    enc = tiktoken.get_encoding('gpt2')
    scripted_generation(monkeypatch, enc.encode(' Hello world.') + [enc.eot_token] + enc.encode(' More text'))
    out = run_inproc('sample.py', f'--out_dir={tmp_path}', '--device=cpu', '--num_samples=1', '--start=Say:',
                     check=True).stdout
    assert out.split('\n---------------')[0].endswith('Say: Hello world.')
    assert '<|endoftext|>' not in out and 'More' not in out


@pytest.mark.parametrize('stream', [True, False])
def test_a_stop_string_across_tokens_ends_the_sample_and_nothing_after_it_is_printed(
        monkeypatch, tiny_run, stream):
    vocab = sorted(set(core_text()))
    scripted_generation(monkeypatch, [vocab.index(c) for c in ' cat sat on a mat\nthen'])
    run = run_inproc('sample.py', *sample_args(tiny_run.out_dir, num_samples=2, stream=stream,
                                               stop="['at o', 'mat']"), check=True)
    assert samples_of(run.stdout, 'the') == ['the cat s'] * 2  # the earliest stop wins; neither is printed
    printed = printed_text(run.stdout)
    assert 'at o' not in printed and 'mat' not in printed
    # a stop string that never appears changes nothing; one that is a prefix of the text ends it at once
    never = run_inproc('sample.py', *sample_args(tiny_run.out_dir, num_samples=1, stream=stream, stop='xyz',
                                                 max_new_tokens=30), check=True)
    assert samples_of(never.stdout, 'the') == ['the cat sat on a mat\nthen']
    at_once = run_inproc('sample.py', *sample_args(tiny_run.out_dir, num_samples=1, stream=stream, stop=' c'),
                         check=True)
    assert samples_of(at_once.stdout, 'the') == ['the']


@pytest.mark.parametrize('stream', [True, False])
def test_stopped_samples_are_the_unstopped_ones_cut_at_the_stop(tiny_run, stream):
    """With the real model and sampling: stopping changes where a sample ends, never what it says."""
    settings = dict(num_samples=4, max_new_tokens=30, stream=stream)
    full = samples_of(run_inproc('sample.py', *sample_args(tiny_run.out_dir, **settings), check=True).stdout, 'the')
    stopped = samples_of(run_inproc('sample.py', *sample_args(tiny_run.out_dir, stop="'a'", **settings),
                                    check=True).stdout, 'the')
    expected = ['the' + sample[3:].split('a')[0] for sample in full]
    assert stopped == expected
    assert any(len(s) < len(f) for s, f in zip(stopped, full)), "no sample met the stop: the test proves little"


def test_many_prompts_each_equal_to_the_prompt_sampled_alone(tiny_run, tmp_path):
    prompts = tmp_path / 'prompts.txt'
    prompts.write_text('the cat\n\nthe dog\na mat\n')  # the blank line is skipped; two prompts of equal length
    for settings in (dict(), dict(stream=False), dict(use_kv_cache=False), dict(top_p=0.8, stream=False)):
        args = sample_args(tiny_run.out_dir, num_samples=2, **settings)
        args.remove('--start=the')
        out = run_inproc('sample.py', *args, f'--prompts={prompts}', check=True).stdout
        parts = re.split(r"^=== prompt (\d)/3: '([^']*)' ===\n", out, flags=re.M)
        assert [(parts[i], parts[i + 1]) for i in range(1, len(parts), 3)] == \
            [('1', 'the cat'), ('2', 'the dog'), ('3', 'a mat')]
        for i, prompt in zip(range(3, len(parts), 3), ('the cat', 'the dog', 'a mat')):
            alone = run_inproc('sample.py', *sample_args(tiny_run.out_dir, num_samples=2, start=prompt,
                                                         **settings), check=True).stdout
            assert [s.strip('\n') for s in parts[i].split(SEPARATOR) if s.strip()] == samples_of(alone, prompt)


def test_a_tiny_temperature_samples_the_greedy_text(tiny_run):
    greedy = samples_of(run_inproc('sample.py', *sample_args(tiny_run.out_dir, top_k=1), check=True).stdout, 'the')
    tiny = samples_of(run_inproc('sample.py', *sample_args(tiny_run.out_dir, temperature=1e-39, top_k=None),
                                 check=True).stdout, 'the')
    assert tiny == greedy and len(set(greedy)) == 1


def test_a_prompt_file_with_windows_line_ends_reads_as_text(tiny_run, tmp_path):
    prompt = tmp_path / 'prompt.txt'
    prompt.write_bytes(b'the cat\r\nsat')
    result = run_inproc('sample.py', *sample_args(tiny_run.out_dir, start=f'FILE:{prompt}', num_samples=1),
                        check=True)
    assert samples_of(result.stdout, 'the cat\nsat')[0].startswith('the cat\nsat')


def test_a_reader_that_leaves_ends_sampling_without_a_traceback(tiny_run):
    """python sample.py | head -30: the reader goes in the middle of the samples."""
    proc = subprocess.Popen([sys.executable, 'sample.py', *sample_args(tiny_run.out_dir, num_samples=200)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.stdout.readline() != SEPARATOR + '\n':
        pass
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert stderr == '', stderr


def test_a_transformers_folder_too_small_for_gpt2s_tokens_and_without_its_own(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=19, bos_token_id=None,
                               eos_token_id=None)).save_pretrained(tmp_path)
    assert_user_error(run_inproc('sample.py', f'--init_from={tmp_path}', '--device=cpu'),
                      'has 19 tokens', "too few for GPT-2's BPE", 'no tokenizer.json', 'export_hf.py')
