"""Activation checkpointing: each block runs again in the backward pass instead of keeping its
activations. The same losses and gradients (the recomputation draws the same dropout masks), far
fewer bytes kept for the backward pass, and the same training in train.py (compiled, under DDP
and FSDP: test_parallel's 2-rank runs)."""
import pytest
import torch

from conftest import core_train_args, iteration_losses, run_inproc
from model import GPT, GPTConfig

def loss_gradients_and_kept_bytes(checkpointing):
    """One forward and backward pass of a small GPT with dropout; (loss, gradients, bytes of the
    tensors autograd kept for the backward pass)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=96, n_layer=4, n_head=4, n_embd=64, dropout=0.1))
    model.activation_checkpointing = checkpointing
    idx = torch.randint(96, (8, 64), generator=torch.Generator().manual_seed(1))
    kept = {}

    def pack(tensor):  # each storage counted once, as memory holds it once
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor
    torch.manual_seed(2)  # the dropout masks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _, loss = model(idx, idx)
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}, sum(kept.values())

def test_same_loss_and_gradients_with_far_less_kept():
    loss, gradients, kept = loss_gradients_and_kept_bytes(False)
    loss_ac, gradients_ac, kept_ac = loss_gradients_and_kept_bytes(True)
    assert loss_ac == loss
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradients_ac[name], gradient, rtol=0, atol=1e-6, msg=name)
    assert kept_ac < kept / 3, (kept_ac, kept)  # the blocks' activations are gone, the head's remain

def test_evaluation_and_sampling_do_not_recompute(monkeypatch):
    model = GPT(GPTConfig(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=16))
    model.activation_checkpointing = True
    with monkeypatch.context() as m:
        m.setattr(torch.utils.checkpoint, 'checkpoint', lambda *a, **k: pytest.fail('recomputed without gradients'))
        with torch.no_grad():
            model(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))  # an evaluation
            out = model.generate(torch.zeros(1, 1, dtype=torch.long), 20, top_k=1)  # the KV cache still works
    model.activation_checkpointing = False
    with torch.no_grad():
        assert torch.equal(out, model.generate(torch.zeros(1, 1, dtype=torch.long), 20, top_k=1))

def test_train_py_with_activation_checkpointing_trains_alike(tiny_run, tmp_path):
    checkpointed = run_inproc('train.py', *core_train_args(tmp_path / 'out', activation_checkpointing=True),
                              check=True).stdout
    plain = iteration_losses(tiny_run.stdout)
    assert all(iteration_losses(checkpointed)[i] == pytest.approx(plain[i], abs=1e-4) for i in plain)
