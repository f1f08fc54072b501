"""Exports: onnxruntime and the Hugging Face folder (in transformers and GPT.from_pretrained) give the checkpoint's
logits for every position, either GELU, with or without biases; an export replaces only an earlier one."""
import functools
import json
import os
import re

import pytest
import torch

import export_hf
import export_onnx
from conftest import CHARS, RunsCode, ctrl_c, every_kill, full_logits, make_model, run_inproc, save_checkpoint
from helpers import UserError, checkpoint, exports, files
from model import GPT

ort = pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')
transformers = pytest.importorskip('transformers')
safetensors_torch = pytest.importorskip('safetensors.torch')
from onnx.external_data_helper import convert_model_to_external_data  # noqa: E402

BLOCK = 16
HF_GELU = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new'}  # transformers' names
TORCHSCRIPT = functools.partial(export_onnx.export, dynamo=False)  # the fallback exporter: fast

def sample_text(stdout):
    """The sample printed by sample.py / sample_onnx.py: what follows the settings lines."""
    lines = stdout.split('\n---------------')[0].split('\n')
    while lines and lines[0].startswith(('Overriding:', 'Loading meta')):
        lines.pop(0)
    return '\n'.join(lines)

def checked_logits(model, idx):
    """The model's logits for idx, large enough for a comparison to mean something."""
    expected = full_logits(model, idx)
    assert expected.abs().max() > 3
    return expected

def test_cli_exports_onnx_with_dynamic_shapes_and_greedy_sampling_and_hf(tmp_path, char_dataset):
    model, out = make_model('gelu', bias=False, block_size=BLOCK), tmp_path / 'run'
    save_checkpoint(model, str(out), char_dataset)
    proc = run_inproc('export_onnx.py', f'--out_dir={out}', check=True)
    assert 'with the dynamo exporter' in proc.stdout, proc.stdout
    assert float(re.search(r'max abs diff ([0-9.eE+-]+)', proc.stdout).group(1)) <= 1e-4
    session = ort.InferenceSession(str(out / 'model.onnx'), providers=['CPUExecutionProvider'])
    assert [i.shape for i in session.get_inputs()] == [['batch', 'seq']]
    logits_of, g = export_onnx.onnx_logits(str(out / 'model.onnx')), torch.Generator().manual_seed(5)
    for batch, seq in [(1, 1), (5, BLOCK), (3, 11), (1, 2)]:  # none of them the export's example (2, 8)
        idx = torch.randint(len(CHARS), (batch, seq), generator=g)
        torch.testing.assert_close(logits_of(idx), checked_logits(model, idx), rtol=0, atol=1e-4)
    with pytest.raises(Exception):  # longer than block_size: refused, not silently wrong
        logits_of(torch.zeros(1, BLOCK + 1, dtype=torch.long))
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta['nanogpt.itos']) == CHARS
    assert (meta['nanogpt.tokenizer'], meta['nanogpt.block_size'], meta['nanogpt.activation']) == ('char', '16', 'gelu')
    # greedy decoding: 30 new tokens run past block_size, where sample.py leaves its KV cache for
    # full windows and the onnxruntime loop starts cropping its context to the last block_size tokens
    args = ('--top_k=1', '--num_samples=1', '--max_new_tokens=30', '--start=ab')
    expected = sample_text(run_inproc('sample.py', f'--out_dir={out}', *args, '--device=cpu', check=True).stdout)
    got = sample_text(run_inproc('sample_onnx.py', f'--onnx_path={out / "model.onnx"}', *args, check=True).stdout)
    assert len(expected) == 2 + 30 and expected.startswith('ab') and got == expected
    proc = run_inproc('export_hf.py', f'--out_dir={out}', check=True)  # which checks its export itself
    assert "activation_function='gelu'" in proc.stdout and 'zero biases' in proc.stdout
    diffs = [float(d) for d in re.findall(r'max abs diff ([0-9.eE+-]+)', proc.stdout)]
    assert len(diffs) == 2 and max(diffs) <= 1e-5, proc.stdout
    assert (out / 'hf' / 'config.json').is_file() and (out / 'hf' / 'model.safetensors').is_file()

@pytest.mark.parametrize('activation', ['gelu', 'gelu_tanh'])
@pytest.mark.parametrize('bias', [False, True])
def test_every_variant_exports_and_the_checks_see_a_wrong_gelu(tmp_path, activation, bias):
    """ONNX by the TorchScript exporter (dynamo's: the tests around); the HF folder loads in transformers and GPT."""
    model, path = make_model(activation, bias=bias, block_size=BLOCK), str(tmp_path / 'model.onnx')
    assert TORCHSCRIPT(model, path) == 'torchscript'
    onnx_prompts = exports.random_prompts(model.config.vocab_size, BLOCK, seed=1)
    diff, scale = exports.max_logit_difference(model, export_onnx.onnx_logits(path), onnx_prompts)
    assert diff <= 1e-4 and scale > 3
    # the same weights with the other GELU are far outside the tolerance: the check has teeth
    other = make_model('gelu' if activation == 'gelu_tanh' else 'gelu_tanh', bias=bias, block_size=BLOCK)
    other.load_state_dict(model.state_dict())
    assert exports.max_logit_difference(other, export_onnx.onnx_logits(path), onnx_prompts)[0] > 1e-3
    export_hf.export(model, str(tmp_path / 'hf'))
    config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
    assert config['activation_function'] == HF_GELU[activation] and config['layer_norm_epsilon'] == 1e-5
    assert (config['n_positions'], config['vocab_size'], config['n_layer'], config['n_head'], config['n_embd']) == \
        (BLOCK, len(CHARS), 2, 2, 32)
    assert config['resid_pdrop'] == config['embd_pdrop'] == config['attn_pdrop'] == 0.0
    weights = safetensors_torch.load_file(str(tmp_path / 'hf' / 'model.safetensors'))
    # Conv1D layout: (in, out), the transpose of nn.Linear's (assert_close compares the shapes too)
    torch.testing.assert_close(weights['transformer.h.0.mlp.c_fc.weight'],
                               model.transformer.h[0].mlp.c_fc.weight.detach().t(), rtol=0, atol=0)
    # GPT-2 always has biases: a bias=False model gets zeros
    assert bias or not (weights['transformer.h.1.attn.c_attn.bias'].any() or weights['transformer.ln_f.bias'].any())
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / 'hf')).eval()
    back = GPT.from_pretrained(str(tmp_path / 'hf')).eval()  # transformers' own folder, as save_pretrained writes it
    assert (back.config.block_size, back.config.vocab_size, back.config.bias, back.config.activation) == \
        (BLOCK, len(CHARS), True, activation)
    wrong = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / 'hf'),
                                                         activation_function=HF_GELU[other.config.activation]).eval()
    with torch.no_grad():
        for idx in exports.random_prompts(model.config.vocab_size, BLOCK, seed=7):
            expected = checked_logits(model, idx)
            torch.testing.assert_close(hf_model(idx).logits, expected, rtol=0, atol=1e-5)
            got = full_logits(back, idx)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
            torch.testing.assert_close(back(idx)[0][:, -1], expected[:, -1], rtol=0, atol=1e-5)  # the KV-cache path
            assert idx.size(1) == 1 or (wrong(idx).logits - expected).abs().max() > 1e-3

def weights_beside(model, path, opset=None, dynamo=None, metadata=None, data_name=None):
    """export_onnx.export's output for a model over 2 GB, in a second: the TorchScript export, its weights then moved
    beside it into data_name, or into one file a tensor as the TorchScript exporter writes them."""
    TORCHSCRIPT(model, path, metadata=metadata)
    proto = onnx.load(path)
    convert_model_to_external_data(proto, all_tensors_to_one_file=bool(data_name), location=data_name,
                                   size_threshold=0)
    onnx.save(proto, path)
    return 'torchscript'

def test_weights_in_a_file_per_tensor_are_gathered_into_one(tmp_path):
    model, path = make_model('gelu', bias=True, block_size=BLOCK), str(tmp_path / 'model.onnx')
    weights_beside(model, path)
    assert len(os.listdir(tmp_path)) > 10
    proto = onnx.load(path, load_external_data=False)
    export_onnx.gather_weights(proto, str(tmp_path), 'model.onnx.0123abcd.data')
    onnx.save(proto, path)
    assert sorted(os.listdir(tmp_path)) == ['model.onnx', 'model.onnx.0123abcd.data']
    prompts = exports.random_prompts(len(CHARS), BLOCK, 3)
    assert exports.max_logit_difference(model, export_onnx.onnx_logits(path), prompts)[0] <= 1e-4

@pytest.mark.skipif(not hasattr(os, 'fork'), reason='forks the export to kill it')
def test_weights_beside_the_file_are_replaced_only_whole(tmp_path, char_dataset, monkeypatch, capsys):
    """Threshold 0, named per export: the old pair stays whole until the new .onnx replaces it. Stopped by Ctrl+C or
    killed before each rename and removal, model.onnx runs, old or new; the next export leaves only its own files."""
    monkeypatch.setattr(export_onnx, 'EXTERNAL_DATA_BYTES', 0)
    out = tmp_path / 'run'
    monkeypatch.setattr(export_onnx, 'out_dir', str(out))
    model, new_model = make_model('gelu_tanh', bias=True, seed=3), make_model(bias=False, seed=1)
    idx = torch.randint(len(CHARS), (2, BLOCK), generator=torch.Generator().manual_seed(1))
    old, new = checked_logits(model, idx), checked_logits(new_model, idx)
    logits = lambda: export_onnx.onnx_logits(str(out / 'model.onnx'))(idx)  # noqa: E731
    save_checkpoint(model, str(out), char_dataset)
    export_onnx.main()
    assert 'exported with the dynamo exporter' in capsys.readouterr().out
    first = sorted(os.listdir(out))
    assert len(first) == 4 and re.fullmatch(r'model\.onnx\.[0-9a-f]{8}\.data', first[2]), first
    torch.testing.assert_close(logits(), old, rtol=0, atol=1e-4)
    monkeypatch.setattr(export_onnx, 'export', weights_beside)
    save_checkpoint(new_model, str(out), char_dataset)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):  # Ctrl+C while the new export is checked
        m.setattr(ort, 'InferenceSession', ctrl_c)
        export_onnx.main()
    assert sorted(os.listdir(out)) == first
    for step in every_kill(out, lambda: None, export_onnx.main):  # each kill's leftovers met by the next export
        assert [torch.allclose(logits(), e, rtol=0, atol=1e-4) for e in (old, new)].count(True) == 1, step
    assert step >= 2 and torch.allclose(logits(), new, rtol=0, atol=1e-4)
    second = sorted(os.listdir(out))
    assert len(second) == 4 and second[2] != first[2]  # ckpt.pt, model.onnx, its weights, model.onnx.lock
    export_onnx.main()
    assert len(os.listdir(out)) == 4  # nothing else left
    with files.lock(str(out / 'model.onnx.lock'), 'held'):  # as an export in progress holds it
        before = {name: (out / name).read_bytes() for name in os.listdir(out)}
        with pytest.raises(UserError, match=r"^another export_onnx\.py \(pid \d+\) is writing .*model\.onnx; wait"):
            export_onnx.main()
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before

def test_only_an_earlier_hf_export_is_replaced_and_from_pretrained_loads_only_what_it_trusts(tmp_path):
    """export_hf.json lists what an export wrote; a folder holding more is refused. Only dropout can be overridden.
    Beside model.safetensors, pytorch_model.bin is never opened; alone, it is refused unrun (bad names: test_errors)."""
    folder = tmp_path / 'hf'
    export_hf.check_output(str(folder))  # absent
    folder.mkdir()
    export_hf.check_output(str(folder))  # empty
    model = make_model(block_size=BLOCK)
    hf_model = export_hf.export(model, str(folder))
    assert json.loads((folder / 'export_hf.json').read_text())['files'] == sorted(os.listdir(folder))
    export_hf.check_output(str(folder))  # an earlier export
    (folder / 'README.md').write_text('my notes on this model')
    with pytest.raises(UserError, match=r'holds files that no export_hf.py export wrote \(README.md\)'):
        export_hf.check_output(str(folder))
    os.remove(folder / 'README.md')
    os.remove(folder / 'export_hf.json')  # an export of an earlier version, or someone's own model
    with pytest.raises(UserError, match=r'\(config.json, generation_config.json, model.safetensors\)'):
        export_hf.check_output(str(folder))
    assert GPT.from_pretrained(str(folder), dict(dropout=0.1)).config.dropout == 0.1
    with pytest.raises(AssertionError):
        GPT.from_pretrained(str(folder), dict(n_layer=3))
    marker = tmp_path / 'PWNED'
    torch.save(dict(hf_model.state_dict(), note=RunsCode(marker)), folder / 'pytorch_model.bin')
    idx = exports.random_prompts(model.config.vocab_size, BLOCK, seed=7)[0]
    torch.testing.assert_close(full_logits(GPT.from_pretrained(str(folder)), idx),
                               full_logits(model, idx), rtol=0, atol=1e-5)
    os.remove(folder / 'model.safetensors')
    with pytest.raises(UserError) as info:
        checkpoint.pretrained(str(folder))
    assert str(info.value) == (f"{folder} was refused: its pytorch_model.bin would run code when loaded (GLOBAL "
                               "posix.system); load only models you trust, re-saved as safetensors "
                               "(model.save_pretrained(folder) writes model.safetensors)")
    assert not marker.exists()

def test_an_output_folder_one_may_write_to_but_not_list_is_written(tmp_path, monkeypatch):
    def unlistable(path):
        raise PermissionError(13, 'Permission denied', os.path.dirname(path))
    monkeypatch.setattr(files, 'remove_orphaned_temp_files', unlistable)   # os.listdir there, for a non-root user
    exports.writable(str(tmp_path / 'model.onnx'))   # the probe alone decides
    assert os.listdir(tmp_path) == []
