"""KV-cache generation gives the full-context reference's tokens and frees its memory; top_k, top_p, temperature."""
import gc
import weakref

import numpy as np
import pytest
import torch

import model as model_module
import sample_onnx
from helpers import tokenizer
from conftest import attention
from model import GPT, GPTConfig

BLOCK = 16

@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=BLOCK, vocab_size=53, n_layer=2, n_head=2, n_embd=32, bias=True)).eval()

def reference_generate(m, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=1.0):
    """The plain definition: the whole window of the last block_size tokens, the top_k logits, the nucleus, a draw."""
    for _ in range(max_new_tokens):
        logits, _ = m(idx[:, -m.config.block_size:])
        logits = logits[:, -1, :] / temperature
        if top_k is not None:
            kth = logits.sort(dim=-1, descending=True).values[:, min(top_k, logits.size(-1)) - 1, None]
            logits = torch.where(logits < kth, float('-inf'), logits)
        probs = torch.softmax(logits, dim=-1)
        if top_p < 1.0:  # the nucleus: from the most likely token down, kept while those before add up to < top_p
            ordered, order = probs.sort(dim=-1, descending=True)
            probs = torch.zeros_like(probs).scatter(-1, order, ordered * (ordered.cumsum(-1) - ordered < top_p))
        idx = torch.cat((idx, torch.multinomial(probs, 1)), dim=1)
    return idx

# prompts shorter than, equal to and longer than block_size; generation inside the window and far past it
@pytest.mark.parametrize('prompt_len,new_tokens', [(1, 10), (5, 40), (BLOCK, 8), (BLOCK + 7, 12)])
@pytest.mark.parametrize('temperature,top_k,top_p', [(1.0, 1, 1.0), (0.8, 5, 1.0), (1.3, None, 1.0),
                                                       (1.0, None, 0.6), (1.2, 20, 0.9)])
def test_cache_matches_reference(tiny, prompt_len, new_tokens, temperature, top_k, top_p):
    idx = torch.randint(53, (3, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    torch.manual_seed(11)
    expected = reference_generate(tiny, idx, new_tokens, temperature, top_k, top_p)
    for use_cache in (True, False):
        torch.manual_seed(11)
        got = tiny.generate(idx, new_tokens, temperature, top_k, top_p=top_p, use_cache=use_cache)
        assert torch.equal(got, expected), f"use_cache={use_cache}"

LOG = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().tolist()

# (logit of every other token, {token: logit}, settings, {token: expected frequency})
@pytest.mark.parametrize('rest,logits,settings,expected', [
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p=0.75 keeps the first two (0.5 < 0.75 before the second, 0.8 before
    # the third), drawn 5:3; top_p=0.5 keeps the first alone
    (-float('inf'), dict(zip([4, 17, 30, 44], LOG)), dict(top_p=0.75), {4: 0.625, 17: 0.375}),
    (-float('inf'), dict(zip([4, 17, 30, 44], LOG)), dict(top_p=0.5), {4: 1.0}),
    # the top_k only (12 is fourth), with softmax(logits / temperature) over them
    (-2.0, {7: 3.0, 30: 2.0, 41: 1.0, 12: 0.5}, dict(temperature=2.0, top_k=3),
     dict(zip([7, 30, 41], torch.softmax(torch.tensor([3.0, 2.0, 1.0]) / 2.0, 0).tolist()))),
    # top_k=2: token 3, then a three-way tie for second place, all of it kept
    (-4.0, {3: 2.0, 9: 1.0, 20: 1.0, 33: 1.0}, dict(top_k=2),
     dict(zip([3, 9, 20, 33], torch.softmax(torch.tensor([2.0, 1.0, 1.0, 1.0]), 0).tolist()))),
])
def test_draws_follow_the_renormalised_kept_probabilities(tiny, monkeypatch, rest, logits, settings, expected):
    row = torch.full((53,), rest)
    row[list(logits)] = torch.tensor(list(logits.values()))
    monkeypatch.setattr(tiny, 'forward', lambda idx, kv_cache=None: (row.expand(idx.size(0), 1, 53), None))
    torch.manual_seed(0)
    tokens = tiny.generate(torch.zeros((4000, 1), dtype=torch.long), 1, **settings)[:, 1]
    assert set(tokens.tolist()) == set(expected)
    observed = torch.stack([(tokens == t).float().mean() for t in expected])
    torch.testing.assert_close(observed, torch.tensor(list(expected.values())), rtol=0, atol=0.03)

def onnx_draws(logits, temperature, top_k):
    """The tokens that sample_onnx.py's numpy sampler picks in 200 draws."""
    rng = np.random.default_rng(0)
    return {sample_onnx.pick_token(logits, temperature, top_k, rng) for _ in range(200)}

@pytest.mark.parametrize('temperature', [1e-39, 1e-300, 5e-324])
def test_a_tiny_temperature_is_greedy_and_keeps_ties(temperature):
    """Dividing first would overflow to inf and NaN: the largest logit is 0 before it (in sample_onnx.py's too)."""
    logits = torch.tensor([[0.5, 3.0, 3.0, -1.0, 2.999]]).expand(2000, 5)
    torch.manual_seed(0)
    tokens = model_module.sample_next_token(logits, temperature)[:, 0]
    assert set(tokens.tolist()) == {1, 2}
    torch.testing.assert_close((tokens == 1).float().mean(), torch.tensor(0.5), rtol=0, atol=0.05)
    assert set(model_module.sample_next_token(logits[:50], temperature, top_k=3, top_p=0.9)[:, 0].tolist()) <= {1, 2}
    assert onnx_draws(logits[0].double().numpy(), temperature, None) == {1, 2}
    other = np.array([0.0, 5.0, 4.0, -1.0, 3.0])  # and with no tie, it draws from the top_k only
    assert onnx_draws(other, 1.0, 1) == {1} and onnx_draws(other, 1.0, 2) == {1, 2}

@pytest.mark.parametrize('flash', [True, False])
@pytest.mark.parametrize('step', [1, 7, 11])
def test_cached_logits_match_full_forward(tiny, flash, step):
    """A prefill, then step positions at a time on top of it: several need the offset causal mask."""
    idx = torch.randint(53, (2, BLOCK), generator=torch.Generator().manual_seed(4))
    cache = model_module.KVCache(tiny.config.n_layer, tiny.config.block_size)
    with torch.no_grad(), attention(flash):
        full, _ = tiny(idx, targets=idx)
        tiny(idx[:, :5], kv_cache=cache)
        for t in range(5, BLOCK, step):
            chunk = idx[:, t:t + step]  # one position: no targets, as generate() runs it
            got, _ = tiny(chunk, targets=chunk.contiguous() if step > 1 else None, kv_cache=cache)
            torch.testing.assert_close(got, full[:, t:t + step], rtol=0, atol=1e-5)
        assert cache.length == BLOCK
        with pytest.raises(ValueError, match='block_size'):
            tiny(idx[:, :1], kv_cache=cache)

@pytest.mark.parametrize('top_k,top_p', [(1, 1.0), (7, 1.0), (None, 1.0), (None, 0.7)])
def test_batched_rows_equal_rows_generated_alone(tiny, top_k, top_p):
    idx = torch.randint(53, (4, 6), generator=torch.Generator().manual_seed(5))
    def generate(rows, use_cache=True, top_k=top_k):
        generators = [torch.Generator().manual_seed(1000 + k) for k in rows]
        return tiny.generate(idx[rows], 30, 0.9, top_k, top_p=top_p, use_cache=use_cache, generators=generators)
    batched = generate([0, 1, 2, 3])
    assert torch.equal(batched, torch.cat([generate([k]) for k in range(4)]))
    assert torch.equal(batched, generate([0, 1, 2, 3], use_cache=False))
    if top_k is None:  # a top_k of the whole vocabulary (53) or more restricts nothing
        assert all(torch.equal(batched, generate([0, 1, 2, 3], top_k=k)) for k in (53, 1000))
    if top_k != 1:  # different seeds must give different samples, or the check above proves little
        assert not torch.equal(batched[0], batched[1])

def test_cache_memory_released(tiny, monkeypatch):
    caches = []
    def tracked_cache(*args, real=model_module.KVCache):
        cache = real(*args)
        caches.append(weakref.ref(cache))
        return cache
    monkeypatch.setattr(model_module, 'KVCache', tracked_cache)
    assert tiny.generate(torch.zeros((2, 1), dtype=torch.long), 10).shape == (2, 11) and len(caches) == 1
    gc.collect()
    assert caches[0]() is None, "the KV cache outlived generate()"

def test_stream_decoder_never_splits_characters():
    bpe, text = tokenizer.BPETokenizer(), "naïve café — 東京タワー 🙂🚀 done"
    ids = bpe.encode(text)
    assert any('\ufffd' in bpe.enc.decode_single_token_bytes(i).decode('utf-8', errors='replace') for i in ids), \
        "the text should hold tokens that are parts of characters"
    decode_next = bpe.stream_decoder()
    pieces = [decode_next(i) for i in ids]
    assert ''.join(pieces) == text and all('\ufffd' not in p for p in pieces)
