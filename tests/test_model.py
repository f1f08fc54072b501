"""model.py: shapes, tying, initial loss, both attention paths, crop_block_size, parameter counts and groups (GPT-2
parity: test_export.py), activation checkpointing, and torch.compile on the CPU (inductor, the machine's C++)."""
import math

import pytest
import torch

from conftest import (assert_user_error, attention, compiled_graphs, core_text, core_train_args, iteration_losses,
                      make_model, run_script, save_checkpoint)
from model import GPT, GPTConfig

VOCAB = 100

def tiny_model(seed=0, block_size=64, vocab_size=VOCAB, bias=True):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, bias=bias))

def random_tokens(shape, seed=1, vocab=VOCAB):
    return torch.randint(vocab, shape, generator=torch.Generator().manual_seed(seed))

@pytest.mark.parametrize('vocab_size', [65, 1000])
def test_forward_shapes_an_initial_loss_close_to_uniform_and_tied_embeddings(vocab_size):
    """Untrained, cross-entropy ~ ln(vocab_size). The output layer is the token embedding: one tensor (so a change
    or a gradient through either name is the other's), counted once."""
    model = tiny_model(vocab_size=vocab_size).eval()
    idx, targets = random_tokens((8, 64), seed=4, vocab=vocab_size), random_tokens((8, 64), seed=5, vocab=vocab_size)
    with torch.no_grad():
        logits, loss = model(idx, targets)
        last, no_loss = model(idx)  # without targets only the last position is computed, keeping the time dimension
    assert logits.shape == (8, 64, vocab_size) and loss.shape == ()
    assert abs(loss.item() - math.log(vocab_size)) < 0.05
    assert no_loss is None and last.shape == (8, 1, vocab_size)
    torch.testing.assert_close(last[:, 0], logits[:, -1], rtol=0, atol=1e-6)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert sum(p is model.lm_head.weight for p in model.parameters()) == 1

def test_masked_softmax_fallback_equals_flash_path_and_both_are_causal():
    model = tiny_model(seed=3).eval()
    idx, targets = random_tokens((3, 40), seed=7), random_tokens((3, 40), seed=8)
    changed = idx.clone()
    changed[:, 8] = (changed[:, 8] + 1) % VOCAB
    results = []
    for flash in (True, False):
        model.zero_grad()
        with attention(flash):
            logits, loss = model(idx, targets)
            loss.backward()
            with torch.no_grad():  # changing a later token never changes the logits of earlier positions
                other = model(changed, targets)[0]
        torch.testing.assert_close(other[:, :8], logits[:, :8])
        assert not torch.allclose(other[:, 8:], logits[:, 8:])
        results.append((logits, loss, torch.cat([p.grad.flatten() for p in model.parameters()])))
    for slow, flash, (atol, rtol) in zip(results[1], results[0], [(1e-5, 1e-5), (1e-6, 1e-6), (1e-5, 1e-4)]):
        torch.testing.assert_close(slow, flash, atol=atol, rtol=rtol)  # logits, loss, gradients

def test_crop_block_size():
    model = tiny_model(seed=6).eval()
    idx = random_tokens((2, 16), seed=11)
    with torch.no_grad():
        before, _ = model(idx, idx)
    wpe_before = model.transformer.wpe.weight[:16].clone()
    with pytest.raises(ValueError, match='block_size'):
        model(random_tokens((1, 65)))
    model.crop_block_size(16)
    wpe = model.transformer.wpe.weight
    assert model.config.block_size == 16 and wpe.shape == (16, 32) and torch.equal(wpe, wpe_before)
    # still a parameter the optimizer sees, so the cropped model trains
    assert isinstance(wpe, torch.nn.Parameter) and any(p is wpe for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(idx, idx)[0], before)
    with pytest.raises(ValueError, match='block_size'):
        model(random_tokens((1, 17)))
    tiny_model(block_size=16).load_state_dict(model.state_dict())  # fits a fresh model of the smaller size

@pytest.mark.parametrize('bias', [True, False])
def test_parameter_count_and_the_optimizer_decays_matrices_only(bias):
    L, C, V, T, b = 2, 32, VOCAB, 64, int(bias)
    model = tiny_model(bias=bias)
    # a block: attention's 4C^2 and the MLP's 8C^2, two LayerNorm gains, biases (2 LayerNorms, 3C + C, 4C + C)
    per_block = 12 * C * C + 2 * C + b * 11 * C
    total = V * C + T * C + L * per_block + C + b * C  # wte (tied with lm_head), wpe, blocks, ln_f
    assert model.get_num_params(non_embedding=False) == total == sum(p.numel() for p in model.parameters())
    assert model.get_num_params() == total - T * C
    optimizer = model.configure_optimizers(weight_decay=0.1, learning_rate=3e-4, betas=(0.9, 0.95),
                                           device_type='cpu')
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults['lr'] == 3e-4 and optimizer.defaults['betas'] == (0.9, 0.95)
    decay, no_decay = optimizer.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert all(p.dim() >= 2 for p in decay['params']) and all(p.dim() < 2 for p in no_decay['params'])
    grouped = [id(p) for g in optimizer.param_groups for p in g['params']]
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    assert set(grouped) == {id(p) for p in model.parameters()}
    model(random_tokens((2, 8)), random_tokens((2, 8), seed=3))[1].backward()
    optimizer.step()  # one step with the groups works

def test_muon_orthogonalizes_in_float32_where_the_cpu_lacks_bfloat16_and_takes_each_lr(monkeypatch):
    import torch.optim._muon as muon
    from helpers import optim
    torch.manual_seed(0)
    for shape in ((48, 16), (16, 48)):  # tall matrices are orthogonalized through their transpose
        grad = torch.randn(shape)
        ours = optim.newton_schulz_float32(grad, (3.4445, -4.775, 2.0315), 5, 1e-7)
        torchs = muon._zeropower_via_newtonschulz(grad, (3.4445, -4.775, 2.0315), 5, 1e-7)
        assert ours.dtype == torch.float32 and ours.shape == grad.shape
        assert torch.allclose(ours, torchs.float(), atol=0.03)  # the same iteration, less bfloat16's rounding
        singular = torch.linalg.svdvals(ours)
        assert singular.min() > 0.5 and singular.max() < 1.5  # Muon's nearly orthogonal update
    monkeypatch.setattr(muon, '_zeropower_via_newtonschulz', muon._zeropower_via_newtonschulz)   # restored after
    both = optim.build('muon', tiny_model(), 0.1, 1e-3, (0.9, 0.95), 'cpu')
    both.load_state_dict(both.state_dict())  # as a resume does: each optimizer gets new group dicts
    for group in both.param_groups:  # as train.py sets the learning rate of each iteration
        group['lr'] = 0.123
    assert {g['lr'] for o in (both.muon, both.adamw) for g in o.param_groups} == {0.123}
    has_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert (muon._zeropower_via_newtonschulz is optim.newton_schulz_float32) == (not has_bf16)

def loss_gradients_and_kept_bytes(checkpointing):
    """A small GPT with dropout, forward and back: loss, gradients, bytes autograd kept (each storage once)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=96, n_layer=4, n_head=4, n_embd=64, dropout=0.1))
    model.activation_checkpointing = checkpointing
    idx = torch.randint(96, (8, 64), generator=torch.Generator().manual_seed(1))
    kept = {}
    def pack(tensor):
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor
    torch.manual_seed(2)  # the dropout masks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _, loss = model(idx, idx)
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}, sum(kept.values())

def test_activation_checkpointing_gives_the_same_loss_and_gradients_with_far_less_kept(monkeypatch):
    """Blocks run again in backward (the same dropout masks) instead of keeping activations; never without gradients."""
    loss, gradients, kept = loss_gradients_and_kept_bytes(False)
    loss_ac, gradients_ac, kept_ac = loss_gradients_and_kept_bytes(True)
    assert loss_ac == loss
    torch.testing.assert_close(gradients_ac, gradients, rtol=0, atol=1e-6)
    assert kept_ac < kept / 3, (kept_ac, kept)  # the blocks' activations are gone, the head's remain
    model, start = tiny_model(), torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        plain = model.generate(start, 20, top_k=1)
        model.activation_checkpointing = True
        monkeypatch.setattr(torch.utils.checkpoint, 'checkpoint',
                            lambda *a, **k: pytest.fail('recomputed without gradients'))
        model(random_tokens((2, 8)), random_tokens((2, 8)))  # an evaluation
        assert torch.equal(model.generate(start, 20, top_k=1), plain)  # the KV cache still works

def graph_breaks():
    return dict(torch._dynamo.utils.counters['graph_break'])

def test_compiled_training_equals_eager(tiny_run, tmp_path):
    """With activation checkpointing, as test_parallel's compiled DDP run: compiled once for both (inductor's cache)."""
    compiled, graphs = compiled_graphs('train.py', *core_train_args(tmp_path / 'out', compile=True, max_iters=10,
                                                                    activation_checkpointing=True))
    assert graphs >= 2 and not graph_breaks(), (graphs, graph_breaks())  # training's and evaluation's whole model
    eager, ours = iteration_losses(tiny_run.stdout), iteration_losses(compiled.stdout)
    assert sorted(ours) == list(range(11)) and ours[10] < ours[0] - 0.3
    # inductor fuses kernels and so rounds differently: the same losses to float32 noise
    assert all(ours[i] == pytest.approx(eager[i], abs=2e-3) for i in ours), (eager, ours)

def test_compiled_sampling_gives_the_greedy_tokens_of_eager(core_dataset, tmp_path):
    """40 steps, past block_size (32): a few graphs (prompt, cached steps, cropped window), each the whole model (a
    graph break would split it per layer, past 8 layers beyond torch's recompile limit: eager)."""
    model = make_model(n_layer=1, block_size=32, vocab_size=len(set(core_text())))
    save_checkpoint(model, str(tmp_path), core_dataset)
    greedy = [f'--out_dir={tmp_path}', '--device=cpu', '--num_samples=2', '--max_new_tokens=40', '--top_k=1',
              '--start=the cat']
    plain, _ = compiled_graphs('sample.py', *greedy)
    fast, graphs = compiled_graphs('sample.py', *greedy, '--compile=True')
    assert 1 <= graphs <= 4 and not graph_breaks(), (graphs, graph_breaks())
    assert fast.stdout.split('Overriding: compile = True')[1] == plain.stdout.split("Overriding: start = 'the cat'")[1]

def test_a_compiler_that_fails_is_one_line(tmp_path, core_dataset):
    result = run_script('train.py', *core_train_args(tmp_path / 'out', compile=True, max_iters=1), check=False,
                        env={'CXX': '/nonexistent/c++', 'TORCHINDUCTOR_CACHE_DIR': str(tmp_path / 'cache')})
    assert_user_error(result, 'torch.compile failed', '--compile=False')
    assert 'iter 0:' not in result.stdout  # it never went on eagerly
