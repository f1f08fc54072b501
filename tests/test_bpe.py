"""A BPE learned from the dataset's own text (data/bpe/prepare.py) and bits per byte, on every kind of dataset."""
import json
import math
import os
import types

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import DATA_ROOT, assert_user_error, core_text, core_train_args, run_inproc
from helpers import checkpoint, data, metrics, tokenizer

# CJK, emoji (one of them joined by a zero-width joiner), combining marks: byte-level BPE never meets the unknown
MIXED = "The cat sat. 猫坐在垫子上。🐈‍⬛ naïve cafe\u0301 — 東京タワー 😀 ñ\n"

def mixed_text():
    words = core_text(3000).split(' ')
    return ''.join(' '.join(words[i:i + 30]) + ('\n' if i % 90 else '\n' + MIXED) for i in range(0, len(words), 30))

def spread_split(text, fraction):
    """(train, val) text of --val_split=spread under a million characters: 10 val parts, one every 1/fraction."""
    size, every = int(len(text) * fraction) // 10, round(1 / fraction)
    parts = [text[i:i + size] for i in range(0, len(text), size)]
    return ''.join(p for i, p in enumerate(parts) if i % every != every - 1), ''.join(parts[every - 1::every])

@pytest.fixture(scope='module')
def bpe_run(tmp_path_factory):
    """A BPE dataset of the mixed text and a tiny run trained on it."""
    folder = tmp_path_factory.mktemp('bpe')
    source = folder / 'mixed.txt'
    source.write_text(mixed_text(), encoding='utf-8')
    run_inproc('data/bpe/prepare.py', f'--input={source}', '--name=_test_bpe', '--vocab_size=320',
               '--val_split=spread', check=True)
    run = run_inproc('train.py', *core_train_args(folder / 'out', dataset='_test_bpe'), check=True)
    return types.SimpleNamespace(source=source, out_dir=folder / 'out', meta=data.read_meta('_test_bpe'),
                                 stdout=run.stdout)

def split_ids(name, split):
    return np.fromfile(os.path.join(DATA_ROOT, name, f'{split}.bin'), dtype=np.uint16).tolist()

def test_prepare_is_deterministic_splits_across_the_text_and_round_trips(bpe_run):
    """The BPE dataset, and --val_split=spread of data/char too."""
    text, meta = bpe_run.source.read_text(encoding='utf-8'), bpe_run.meta
    assert meta['vocab_size'] == 320 and set(meta) == {'vocab_size', 'bpe'}
    run_inproc('data/bpe/prepare.py', f'--input={bpe_run.source}', '--name=_test_bpe_again', '--vocab_size=320',
               '--val_split=spread', check=True)
    for name in ('train.bin', 'val.bin', 'meta.pkl'):  # the same text and settings: the same bytes
        assert (open(os.path.join(DATA_ROOT, '_test_bpe', name), 'rb').read() ==
                open(os.path.join(DATA_ROOT, '_test_bpe_again', name), 'rb').read()), name
    bpe = tokenizer.TextBPETokenizer(meta['bpe'])
    # --val_split=spread: val is every 10th part of the text, the rest train, each decoding to its text exactly
    for split, expected in zip(('train', 'val'), spread_split(text, 0.1)):
        assert bpe.tokens.decode(split_ids('_test_bpe', split)) == expected
    for sample in (MIXED, "日本語のテキスト、한국어 텍스트, Ελληνικά, a\u0308\u0301 👩‍👩‍👧 \t\r\n"):
        ids = bpe.encode(sample)
        assert bpe.tokens.decode(ids) == sample
        step = bpe.stream_decoder()  # streamed token by token: a character split over tokens comes out whole
        assert ''.join(step(t) for t in ids) == sample
    assert len(bpe.encode(MIXED)) < len(MIXED.encode('utf-8'))  # the merges were learned from the text
    from tokenizers import pre_tokenizers
    assert set(tokenizer.byte_symbols().values()) == set(pre_tokenizers.ByteLevel.alphabet())
    run_inproc('data/char/prepare.py', f'--input={bpe_run.source}', '--name=_test_spread', '--val_split=spread',
               '--val_fraction=0.2', check=True)
    itos = data.read_meta('_test_spread')['itos']
    for split, expected in zip(('train', 'val'), spread_split(text, 0.2)):
        assert ''.join(itos[i] for i in split_ids('_test_spread', split)) == expected
    assert 0.19 < len(split_ids('_test_spread', 'val')) / len(text) < 0.21

def direct_bits_per_byte(model, ids, text_bytes, excluded=()):
    """Every token after the first predicted once, in block_size windows as evaluate.py's full pass; the loss by
    log_softmax over the targets that are text (not in excluded), the bytes from the text: a computation apart."""
    nll, T = 0.0, model.config.block_size
    with torch.no_grad():
        for start in range(0, len(ids) - 1, T):
            x, y = torch.tensor(ids[start:start + T + 1][:-1])[None], torch.tensor(ids[start + 1:start + T + 1])[None]
            losses = -F.log_softmax(model(x, y)[0].double(), -1).gather(-1, y[..., None])[0, :, 0]
            nll += sum(loss for loss, target in zip(losses.tolist(), y[0].tolist()) if target not in excluded)
    return nll / math.log(2) / text_bytes

def gpt2_run(tmp_path):
    """A GPT-2 BPE dataset (no meta.pkl) of documents each ended by <|endoftext|>, with a random transformers GPT-2 of
    its vocabulary (bits per byte need no trained model): the model's folder, val's ids and the bytes they predict."""
    from transformers import GPT2Config, GPT2LMHeadModel
    docs, enc = [MIXED * 3 + core_text(40, seed=i) for i in range(40)], tokenizer.gpt2_encoding()
    folder = os.path.join(DATA_ROOT, '_test_bpb_gpt2')
    os.makedirs(folder, exist_ok=True)
    for split, part in (('train', docs[:30]), ('val', docs[30:])):
        ids = [t for doc in part for t in enc.encode_ordinary(doc) + [tokenizer.GPT2_EOT]]
        np.array(ids, dtype=np.uint16).tofile(os.path.join(folder, f'{split}.bin'))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32)).save_pretrained(tmp_path / 'gpt2')
    predicted = sum(len(doc.encode('utf-8')) for doc in docs[30:]) - len(enc.decode_single_token_bytes(ids[0]))
    return tmp_path / 'gpt2', ids, predicted

@pytest.mark.parametrize('kind', ['char', 'bpe', 'gpt2'])
def test_bits_per_byte_agree_with_a_direct_computation(kind, tiny_run, bpe_run, tmp_path):
    results = tmp_path / 'results.json'
    if kind == 'gpt2':
        folder, ids, text_bytes = gpt2_run(tmp_path)
        source = [f'--init_from={folder}', '--dataset=_test_bpb_gpt2']
        model = checkpoint.pretrained(str(folder), 0.0)
    else:
        run = tiny_run if kind == 'char' else bpe_run
        source, name = [f'--out_dir={run.out_dir}'], '_test_core' if kind == 'char' else '_test_bpe'
        ids, meta = split_ids(name, 'val'), data.read_meta(name)
        if kind == 'bpe':  # the val text, decoded whole, less the first token's bytes (a symbol a byte)
            hf = tokenizer.TextBPETokenizer(meta['bpe']).tokens
            text_bytes = len(hf.decode(ids).encode('utf-8')) - len(hf.id_to_token(ids[0]))
        else:
            text_bytes = len(''.join(meta['itos'][i] for i in ids[1:]).encode('utf-8'))
        model = checkpoint.model_from_checkpoint(checkpoint.load(str(run.out_dir), 'ckpt.pt', map_location='cpu'))
    evaluated = run_inproc('evaluate.py', *source, '--full_pass=True', '--device=cpu', f'--results_file={results}',
                           check=True)
    reported = json.loads(results.read_text())['splits']['val']['bpb']
    direct = direct_bits_per_byte(model.eval(), ids, text_bytes, excluded={tokenizer.GPT2_EOT})
    assert reported == pytest.approx(direct, rel=1e-5)
    assert f"{reported:.4f} bits per byte" in evaluated.stdout
    if kind != 'gpt2':  # the training log, metrics.csv and evaluate.py's fixed batches (train.py's): the same figure
        logged = run.stdout.split('val bpb ')[-1].split()[0]
        assert f"{logged} bits per byte" in run_inproc('evaluate.py', *source, '--device=cpu', check=True).stdout
        last = [r for r in metrics.read_metrics(run.out_dir / 'metrics.csv') if r['kind'] == 'eval'][-1]
        assert f"{last['val_bpb']:.4f}" == logged and last['train_bpb'] > 0
        if kind == 'char':  # one byte a character: bits per byte are the loss in bits
            assert last['val_bpb'] == pytest.approx(last['val_loss'] / math.log(2))

def sample_text(script, *args):
    return run_inproc(script, *args, '--num_samples=1', '--max_new_tokens=24', check=True).stdout.split(
        '\n---------------')[0].split('\n')[-1]

def test_the_bpe_travels_to_sample_hf_and_onnx(bpe_run, tmp_path):
    """A CJK prompt gives the same text from checkpoint and export; greedy, so do generate() and ONNX."""
    prompt, hf_dir = '猫坐在', tmp_path / 'hf'
    run_inproc('export_hf.py', f'--out_dir={bpe_run.out_dir}', f'--output={hf_dir}', check=True)
    sampled = {source: sample_text('sample.py', source, f'--start={prompt}', '--device=cpu', '--temperature=2.0')
               for source in (f'--out_dir={bpe_run.out_dir}', f'--init_from={hf_dir}')}
    assert len(set(sampled.values())) == 1 and len(set(sampled.popitem()[1])) > 12  # diverse, multi-byte too
    greedy = sample_text('sample.py', f'--init_from={hf_dir}', f'--start={prompt}', '--device=cpu', '--top_k=1')
    from transformers import AutoTokenizer, GPT2LMHeadModel
    hf_tokens, hf_model = AutoTokenizer.from_pretrained(hf_dir), GPT2LMHeadModel.from_pretrained(hf_dir)
    generated = hf_model.generate(hf_tokens(prompt, return_tensors='pt').input_ids, max_new_tokens=24,
                                  do_sample=False, pad_token_id=0)
    assert hf_tokens.decode(generated[0]) == greedy
    run_inproc('export_onnx.py', f'--out_dir={bpe_run.out_dir}', check=True)
    assert sample_text('sample_onnx.py', f'--out_dir={bpe_run.out_dir}', f'--start={prompt}', '--top_k=1') == greedy

def test_plot_draws_bits_per_byte_of_runs_of_any_tokenizers(tiny_run, bpe_run, tmp_path):
    import plot
    runs = [(str(d), metrics.read_metrics(os.path.join(d, 'metrics.csv'))) for d in (tiny_run.out_dir, bpe_run.out_dir)]
    ax = plot.figure(runs, ('iter',), side_by_side=False, y_name='bpb').axes[0]
    assert ax.get_ylabel() == 'bits per byte'
    val = [line for line in ax.get_lines() if line.get_label() == f'{runs[1][0]}: val (eval)'][0]
    assert list(val.get_ydata()) == [r['val_bpb'] for r in runs[1][1] if r['kind'] == 'eval']
    out = tmp_path / 'bpb.png'
    assert run_inproc('plot.py', f'--out_dirs={tiny_run.out_dir},{bpe_run.out_dir}', '--overlay=True', '--y=bpb',
                      f'--output={out}').returncode == 0 and out.stat().st_size > 0
    assert_user_error(run_inproc('plot.py', f'--out_dir={tiny_run.out_dir}', '--y=bits', f'--output={out}'),
                      "y must be 'loss' or 'bpb'")

@pytest.mark.parametrize('content, flags, fragments', [
    (MIXED, ['--vocab_size=255'], ['--vocab_size=255', 'use 256 or more']),
    (MIXED, [f'--vocab_size={2 ** 32}'], ['uint32']),
    (b'', [], ['is empty']),
    (b'caf\xe9 latin-1\n' * 50, [], ['not valid UTF-8', 'byte offset 3']),
    (MIXED * 100, ['--name=_test_core'], ['already holds a dataset', '--force']),
])
def test_bad_input_is_one_line_and_leaves_nothing(content, flags, fragments, core_dataset, tmp_path):
    source = tmp_path / 'in.txt'
    source.write_bytes(content.encode('utf-8') if isinstance(content, str) else content)
    before = {n: open(os.path.join(DATA_ROOT, '_test_core', n), 'rb').read() for n in ('train.bin', 'meta.pkl')}
    assert_user_error(run_inproc('data/bpe/prepare.py', f'--input={source}', '--name=_test_bad_bpe', *flags),
                      *fragments)   # a --name in flags comes last: it counts
    assert not os.path.exists(os.path.join(DATA_ROOT, '_test_bad_bpe'))
    assert before == {n: open(os.path.join(DATA_ROOT, '_test_core', n), 'rb').read() for n in before}
    wrong = run_inproc('data/bpe/prepare.py', f'--input={source}', '--name=_test_bad_bpe', '--val_split=middle')
    assert wrong.returncode == 2 and "invalid choice: 'middle'" in wrong.stderr
