"""Hugging Face export: the directory loads with transformers' GPT2LMHeadModel.from_pretrained and
with GPT.from_pretrained, and both give the checkpoint's logits, for either GELU, with or without biases."""
import json
import os
import re

import pytest
import torch

import export_hf
import tiny_runs
from conftest import RunsCode, run_inproc
from helpers import UserError, checkpoint
from model import GPT

transformers = pytest.importorskip('transformers')
safetensors_torch = pytest.importorskip('safetensors.torch')

BLOCK = 16

def prompts(vocab_size):
    g = torch.Generator().manual_seed(7)
    return [torch.randint(vocab_size, shape, generator=g) for shape in [(2, BLOCK), (3, 5), (1, 1)]]

@pytest.mark.parametrize('activation,hf_activation', [('gelu', 'gelu'), ('gelu_tanh', 'gelu_new')])
@pytest.mark.parametrize('bias', [False, True])
def test_export_loads_in_transformers_and_back(tmp_path, activation, hf_activation, bias):
    model = tiny_runs.make_model(activation, bias=bias, block_size=BLOCK)
    export_hf.export(model, str(tmp_path))
    config = json.loads((tmp_path / 'config.json').read_text())
    assert config['activation_function'] == hf_activation and config['layer_norm_epsilon'] == 1e-5
    assert (config['n_positions'], config['vocab_size'], config['n_layer'], config['n_head'], config['n_embd']) == \
        (BLOCK, len(tiny_runs.CHARS), 2, 2, 32)
    assert config['resid_pdrop'] == config['embd_pdrop'] == config['attn_pdrop'] == 0.0
    weights = safetensors_torch.load_file(str(tmp_path / 'model.safetensors'))
    # Conv1D layout: (in, out), the transpose of nn.Linear's
    assert weights['transformer.h.0.mlp.c_fc.weight'].shape == (32, 128)
    torch.testing.assert_close(weights['transformer.h.0.mlp.c_fc.weight'],
                               model.transformer.h[0].mlp.c_fc.weight.detach().t(), rtol=0, atol=0)
    if not bias:  # GPT-2 always has biases: a bias=False model gets zeros
        assert not weights['transformer.h.1.attn.c_attn.bias'].any()
        assert not weights['transformer.ln_f.bias'].any()
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    back = GPT.from_pretrained(str(tmp_path)).eval()  # transformers' own folder, as save_pretrained writes it
    assert (back.config.block_size, back.config.vocab_size, back.config.bias) == (BLOCK, len(tiny_runs.CHARS), True)
    assert back.config.activation == activation
    wrong = transformers.GPT2LMHeadModel.from_pretrained(
        str(tmp_path), activation_function='gelu_new' if activation == 'gelu' else 'gelu').eval()
    with torch.no_grad():
        for idx in prompts(model.config.vocab_size):
            expected = tiny_runs.full_logits(model, idx)
            assert expected.abs().max() > 3  # large enough for the comparison to mean something
            torch.testing.assert_close(hf_model(idx).logits, expected, rtol=0, atol=1e-5)
            got = tiny_runs.full_logits(back, idx)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
            torch.testing.assert_close(back(idx)[0][:, -1], expected[:, -1], rtol=0, atol=1e-5)  # the KV-cache path
            if idx.size(1) > 1:
                # the other GELU is far outside the tolerance: the activation setting matters and is checked
                assert (wrong(idx).logits - expected).abs().max() > 1e-3

def test_cli_export_verifies_itself(tmp_path):
    name = tiny_runs.make_char_dataset('hf')
    try:
        out = tmp_path / 'run'
        tiny_runs.save_checkpoint(tiny_runs.make_model('gelu', bias=False, block_size=BLOCK, seed=4), str(out), name)
        proc = run_inproc('export_hf.py', f'--out_dir={out}', check=True)
    finally:
        tiny_runs.remove_dataset(name)
    assert "activation_function='gelu'" in proc.stdout and 'zero biases' in proc.stdout
    diffs = [float(d) for d in re.findall(r'max abs diff ([0-9.eE+-]+)', proc.stdout)]
    assert len(diffs) == 2 and max(diffs) <= 1e-5, proc.stdout
    assert (out / 'hf' / 'config.json').is_file() and (out / 'hf' / 'model.safetensors').is_file()

def test_only_an_earlier_export_is_ever_replaced(tmp_path):
    """export_hf.json lists what an export wrote; a folder holding anything else is refused, in one line."""
    folder = tmp_path / 'hf'
    export_hf.check_output(str(folder))  # absent
    folder.mkdir()
    export_hf.check_output(str(folder))  # empty
    export_hf.export(tiny_runs.make_model(block_size=BLOCK), str(folder))
    assert json.loads((folder / 'export_hf.json').read_text())['files'] == sorted(os.listdir(folder))
    export_hf.check_output(str(folder))  # an earlier export
    (folder / 'README.md').write_text('my notes on this model')
    with pytest.raises(UserError, match=r'holds files that no export_hf.py export wrote \(README.md\)'):
        export_hf.check_output(str(folder))
    os.remove(folder / 'README.md')
    os.remove(folder / 'export_hf.json')  # an export of an earlier version, or someone's own model
    with pytest.raises(UserError, match=r'\(config.json, generation_config.json, model.safetensors\)'):
        export_hf.check_output(str(folder))

def test_from_pretrained_overrides_and_refusals(tmp_path):
    """Only dropout can be overridden. Beside model.safetensors, transformers never opens pytorch_model.bin;
    alone, it is refused without running anything, in one line, as an unknown name is."""
    with pytest.raises(UserError, match="unknown init_from 'gpt3-not-a-model'"):
        checkpoint.pretrained('gpt3-not-a-model')
    model = tiny_runs.make_model(block_size=BLOCK)
    hf_model = export_hf.export(model, str(tmp_path))
    assert GPT.from_pretrained(str(tmp_path), dict(dropout=0.1)).config.dropout == 0.1
    with pytest.raises(AssertionError):
        GPT.from_pretrained(str(tmp_path), dict(n_layer=3))
    marker = tmp_path / 'PWNED'
    torch.save(dict(hf_model.state_dict(), note=RunsCode(marker)), tmp_path / 'pytorch_model.bin')
    idx = prompts(model.config.vocab_size)[0]
    torch.testing.assert_close(tiny_runs.full_logits(GPT.from_pretrained(str(tmp_path)), idx),
                               tiny_runs.full_logits(model, idx), rtol=0, atol=1e-5)
    os.remove(tmp_path / 'model.safetensors')
    with pytest.raises(UserError) as info:
        checkpoint.pretrained(str(tmp_path))
    assert str(info.value) == (f"{tmp_path} was refused: its pytorch_model.bin would run code when loaded (GLOBAL "
                               "posix.system); load only models you trust, re-saved as safetensors "
                               "(model.save_pretrained(folder) writes model.safetensors)")
    assert not marker.exists()
