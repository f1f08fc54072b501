"""model.py: shapes, weight tying, initial loss, parity with transformers' GPT-2, the two
attention paths, crop_block_size, parameter counting and the optimizer's parameter groups."""
import math

import pytest
import torch

from conftest import attention
from model import GPT, GPTConfig

VOCAB = 100


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    args = dict(block_size=64, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, bias=True, dropout=0.0)
    args.update(overrides)
    return GPT(GPTConfig(**args))


def random_tokens(shape, seed=1, vocab=VOCAB):
    return torch.randint(vocab, shape, generator=torch.Generator().manual_seed(seed))


def test_forward_shapes():
    model = tiny_model()
    idx, targets = random_tokens((3, 17)), random_tokens((3, 17), seed=2)
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 17, VOCAB)
    assert loss.shape == () and torch.isfinite(loss)
    # without targets only the last position is computed, keeping the time dimension
    last, no_loss = model(idx)
    assert no_loss is None and last.shape == (3, 1, VOCAB)
    model.eval()
    assert torch.allclose(model(idx)[0][:, 0], model(idx, targets)[0][:, -1], atol=1e-6)


def test_token_embedding_and_output_layer_are_tied():
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    # one tensor: a change made through either name shows through the other, and gradients add up
    with torch.no_grad():
        model.lm_head.weight[3, 5] = 7.0
    assert model.transformer.wte.weight[3, 5].item() == 7.0
    _, loss = model(random_tokens((2, 8)), random_tokens((2, 8), seed=3))
    loss.backward()
    assert model.transformer.wte.weight.grad is model.lm_head.weight.grad
    # counted once among the parameters
    assert sum(p is model.lm_head.weight for p in model.parameters()) == 1


@pytest.mark.parametrize('vocab_size', [65, 1000])
def test_initial_loss_is_close_to_uniform(vocab_size):
    """An untrained model predicts nearly uniformly: cross-entropy ~ ln(vocab_size)."""
    model = tiny_model(vocab_size=vocab_size)
    idx, targets = random_tokens((8, 64), seed=4, vocab=vocab_size), random_tokens((8, 64), seed=5, vocab=vocab_size)
    model.eval()
    with torch.no_grad():
        _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(vocab_size)) < 0.05


# -----------------------------------------------------------------------------
# transformers parity

@pytest.fixture(scope='module')
def hf_gpt2(tmp_path_factory):
    """{activation: (transformers' GPT-2 with random values everywhere, the folder it is saved in)}. GPT-2's
    init leaves biases at 0 and norm gains at 1, which would hide one loaded into the wrong place."""
    import transformers
    models = {}
    for activation in ('gelu_new', 'gelu'):
        config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=VOCAB,
                                         activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0,
                                         attn_pdrop=0.0)
        torch.manual_seed(0)
        hf = transformers.GPT2LMHeadModel(config)
        with torch.no_grad():
            for p in hf.parameters():
                p.normal_(0.0, 0.3)
        folder = str(tmp_path_factory.mktemp(activation))
        hf.eval().save_pretrained(folder)
        models[activation] = hf, folder
    return models


@pytest.mark.parametrize('activation', ['gelu_new', 'gelu'])
def test_from_pretrained_matches_transformers(hf_gpt2, activation):
    hf, folder = hf_gpt2[activation]
    model = GPT.from_pretrained(folder).eval()
    assert model.config.block_size == 64 and model.config.vocab_size == VOCAB and model.config.bias
    assert model.config.activation == {'gelu_new': 'gelu_tanh', 'gelu': 'gelu'}[activation]
    idx = random_tokens((2, 64), seed=6)
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = model(idx, torch.zeros_like(idx))  # targets: logits at every position
        last, _ = model(idx)  # the KV-cache path gives the same last logits
        if activation == 'gelu_new':
            # the tolerance tells exact GELU from its tanh approximation: both parity checks
            # could not pass with a wrong activation mapping
            for block in model.transformer.h:
                block.mlp.gelu.approximate = 'none'
            assert (model(idx, idx)[0] - got).abs().max() > 1e-4
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last[:, -1], expected[:, -1], atol=1e-5, rtol=1e-5)


def test_from_pretrained_overrides_and_unknown_names(hf_gpt2):
    from helpers import UserError, checkpoint
    _, folder = hf_gpt2['gelu_new']
    assert GPT.from_pretrained(folder, dict(dropout=0.1)).config.dropout == 0.1
    with pytest.raises(AssertionError):
        GPT.from_pretrained(folder, dict(n_layer=3))
    with pytest.raises(UserError, match="unknown init_from 'gpt3-not-a-model'"):
        checkpoint.pretrained('gpt3-not-a-model')


# -----------------------------------------------------------------------------
# attention paths

def test_masked_softmax_fallback_equals_flash_path_and_both_are_causal():
    model = tiny_model(seed=3)
    model.eval()
    idx, targets = random_tokens((3, 40), seed=7), random_tokens((3, 40), seed=8)
    with torch.no_grad():
        flash_logits, flash_loss = model(idx, targets)
        with attention(flash=False):
            slow_logits, slow_loss = model(idx, targets)
    torch.testing.assert_close(slow_logits, flash_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(slow_loss, flash_loss, atol=1e-6, rtol=1e-6)
    # gradients agree too
    grads = []
    for flash in (True, False):
        model.zero_grad()
        with attention(flash):
            model(idx, targets)[1].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    # changing a later token never changes the logits of earlier positions
    changed = idx.clone()
    changed[:, 8] = (changed[:, 8] + 1) % VOCAB
    for flash in (True, False):
        with torch.no_grad(), attention(flash):
            a, b = model(idx, targets)[0], model(changed, targets)[0]
        torch.testing.assert_close(a[:, :8], b[:, :8])
        assert not torch.allclose(a[:, 8:], b[:, 8:])


# -----------------------------------------------------------------------------
# crop_block_size, get_num_params, configure_optimizers

def test_crop_block_size():
    model = tiny_model(seed=6)
    model.eval()
    idx = random_tokens((2, 16), seed=11)
    with torch.no_grad():
        before, _ = model(idx, idx)
    wpe_before = model.transformer.wpe.weight[:16].clone()
    with pytest.raises(ValueError, match='block_size'):
        model(random_tokens((1, 65)))
    model.crop_block_size(16)
    assert model.config.block_size == 16
    assert model.transformer.wpe.weight.shape == (16, 32)
    assert isinstance(model.transformer.wpe.weight, torch.nn.Parameter)
    assert torch.equal(model.transformer.wpe.weight, wpe_before)
    with torch.no_grad():
        after, _ = model(idx, idx)
    torch.testing.assert_close(after, before)
    with pytest.raises(ValueError, match='block_size'):
        model(random_tokens((1, 17)))
    # the cropped model's weights load into a fresh model of the smaller size
    fresh = GPT(GPTConfig(block_size=16, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, bias=True))
    fresh.load_state_dict(model.state_dict())
    # and it still trains: the position embedding is a parameter the optimizer sees
    assert any(p is model.transformer.wpe.weight for p in model.parameters())


@pytest.mark.parametrize('bias', [True, False])
def test_get_num_params(bias):
    L, C, V, T = 2, 32, VOCAB, 64
    model = tiny_model(bias=bias)
    b = 1 if bias else 0
    # a block: attention's 4C^2 and the MLP's 8C^2, two LayerNorm gains, biases (2 LayerNorms, 3C + C, 4C + C)
    per_block = 12 * C * C + 2 * C + b * 11 * C
    total = V * C + T * C + L * per_block + C + b * C  # wte (tied with lm_head), wpe, blocks, ln_f
    assert model.get_num_params(non_embedding=False) == total
    assert model.get_num_params() == total - T * C
    assert model.get_num_params(non_embedding=False) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('bias', [True, False])
def test_configure_optimizers_decays_matrices_only(bias):
    model = tiny_model(bias=bias)
    optimizer = model.configure_optimizers(weight_decay=0.1, learning_rate=3e-4, betas=(0.9, 0.95),
                                           device_type='cpu')
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert all(p.dim() >= 2 for p in decay['params'])
    assert all(p.dim() < 2 for p in no_decay['params'])
    grouped = [id(p) for g in optimizer.param_groups for p in g['params']]
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    assert set(grouped) == {id(p) for p in model.parameters()}
    by_name = dict(model.named_parameters())
    decay_ids = {id(p) for p in decay['params']}
    assert id(by_name['transformer.wte.weight']) in decay_ids
    assert id(by_name['transformer.h.0.attn.c_attn.weight']) in decay_ids
    assert id(by_name['transformer.h.0.ln_1.weight']) not in decay_ids
    if bias:
        assert id(by_name['transformer.h.0.mlp.c_fc.bias']) not in decay_ids
    assert optimizer.defaults['lr'] == 3e-4 and optimizer.defaults['betas'] == (0.9, 0.95)
    # one step with the groups works
    model(random_tokens((2, 8)), random_tokens((2, 8), seed=3))[1].backward()
    optimizer.step()
