"""ONNX export: onnxruntime gives PyTorch's logits for every position, any batch and any length
up to block_size, and greedy decoding on onnxruntime writes the same text as sample.py --top_k=1."""
import json
import os
import re

import numpy as np
import pytest
import torch

import export_onnx
import tiny_runs
from conftest import run_script

ort = pytest.importorskip('onnxruntime')
pytest.importorskip('onnx')

BLOCK = 16



@pytest.fixture(scope='module')
def char_dataset():
    name = tiny_runs.make_char_dataset('onnx')
    yield name
    tiny_runs.remove_dataset(name)


def ort_logits(session, idx):
    return torch.from_numpy(session.run(['logits'], {'idx': idx.numpy()})[0])


def sample_text(stdout):
    """The sample printed by sample.py / sample_onnx.py: what follows the settings lines."""
    lines = stdout.split('\n---------------')[0].split('\n')
    while lines and lines[0].startswith(('Overriding:', 'Loading meta')):
        lines.pop(0)
    return '\n'.join(lines)


def test_cli_export_dynamic_shapes_and_greedy_sampling(tmp_path, char_dataset):
    model = tiny_runs.make_model('gelu', bias=False, block_size=BLOCK)
    out = tmp_path / 'run'
    tiny_runs.save_checkpoint(model, str(out), char_dataset)
    proc = run_script('export_onnx.py', f'--out_dir={out}')
    assert 'with the dynamo exporter' in proc.stdout, proc.stdout
    reported = float(re.search(r'max abs diff ([0-9.eE+-]+)', proc.stdout).group(1))
    assert reported <= 1e-4

    session = ort.InferenceSession(str(out / 'model.onnx'), providers=['CPUExecutionProvider'])
    assert [i.shape for i in session.get_inputs()] == [['batch', 'seq']]
    g = torch.Generator().manual_seed(5)
    for batch, seq in [(1, 1), (5, BLOCK), (3, 11), (1, 2)]:  # none of them the export's example (2, 8)
        idx = torch.randint(len(tiny_runs.CHARS), (batch, seq), generator=g)
        expected = tiny_runs.full_logits(model, idx)
        assert expected.abs().max() > 3  # large enough for the comparison to mean something
        torch.testing.assert_close(ort_logits(session, idx), expected, rtol=0, atol=1e-4)
    with pytest.raises(Exception):  # longer than block_size: refused, not silently wrong
        ort_logits(session, torch.zeros(1, BLOCK + 1, dtype=torch.long))

    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta['nanogpt.itos']) == tiny_runs.CHARS
    assert (meta['nanogpt.tokenizer'], meta['nanogpt.block_size'], meta['nanogpt.activation']) == ('char', '16', 'gelu')

    # greedy decoding: 30 new tokens run past block_size, where sample.py leaves its KV cache for
    # full windows and the onnxruntime loop starts cropping its context to the last block_size tokens
    args = ('--top_k=1', '--num_samples=1', '--max_new_tokens=30', '--start=ab')
    expected = sample_text(run_script('sample.py', f'--out_dir={out}', *args, '--device=cpu').stdout)
    got = sample_text(run_script('sample_onnx.py', f'--onnx_path={out / "model.onnx"}', *args).stdout)
    assert len(expected) == 2 + 30 and expected.startswith('ab')
    assert got == expected


@pytest.mark.parametrize('activation', ['gelu', 'gelu_tanh'])
@pytest.mark.parametrize('bias', [False, True])
def test_every_variant_matches_and_the_check_sees_a_wrong_gelu(tmp_path, activation, bias):
    # the TorchScript exporter (the fallback) is fast enough to cover every variant;
    # the dynamo exporter is covered above (gelu, no bias) and below (tanh, biases)
    model = tiny_runs.make_model(activation, bias=bias, block_size=BLOCK)
    path = str(tmp_path / 'model.onnx')
    assert export_onnx.export(model, path, dynamo=False) == 'torchscript'
    prompts = export_onnx.random_prompts(model.config.vocab_size, BLOCK, seed=1)
    diff, scale = export_onnx.max_logit_difference(model, path, prompts)
    assert diff <= 1e-4 and scale > 3
    # the same weights with the other GELU are far outside the tolerance: the check has teeth
    other = tiny_runs.make_model('gelu' if activation == 'gelu_tanh' else 'gelu_tanh', bias=bias, block_size=BLOCK)
    other.load_state_dict(model.state_dict())
    wrong_diff, _ = export_onnx.max_logit_difference(other, path, prompts)
    assert wrong_diff > 1e-3


def test_dynamo_export_tanh_gelu_with_biases(tmp_path):
    model = tiny_runs.make_model('gelu_tanh', bias=True, block_size=BLOCK, seed=3)
    path = str(tmp_path / 'model.onnx')
    assert export_onnx.export(model, path, dynamo=True, metadata={'nanogpt.block_size': str(BLOCK)}) == 'dynamo'
    diff, scale = export_onnx.max_logit_difference(model, path, export_onnx.random_prompts(
        model.config.vocab_size, BLOCK, seed=2))
    assert diff <= 1e-4 and scale > 3
    # the wrapper that was exported computes GPT.forward's logits, position by position
    idx = torch.randint(model.config.vocab_size, (2, BLOCK), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(export_onnx.AllPositionLogits(model)(idx), tiny_runs.full_logits(model, idx),
                                   rtol=0, atol=1e-5)


def test_sampler_draws_from_top_k_only():
    import sample_onnx
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 4.0, -1.0, 3.0])
    assert sample_onnx.pick_token(logits, 1.0, 1, rng) == 1
    drawn = {sample_onnx.pick_token(logits, 1.0, 2, rng) for _ in range(200)}
    assert drawn == {1, 2}


def test_sampler_with_a_tiny_temperature_is_greedy_and_keeps_ties():
    import sample_onnx
    rng = np.random.default_rng(0)
    logits = np.array([0.5, 3.0, 3.0, -1.0, 2.999])
    for temperature in (1e-39, 1e-300, 5e-324):
        assert {sample_onnx.pick_token(logits, temperature, None, rng) for _ in range(200)} == {1, 2}


def test_weights_beside_the_file_are_replaced_with_it_and_only_whole(tmp_path, char_dataset, monkeypatch):
    """A model over 2 GB keeps its weights beside the .onnx file (here any model: the threshold is 0).
    Each export's weights have a name of their own, so the earlier pair stays whole until the new
    .onnx file is renamed over the old one; then the old weights go."""
    monkeypatch.setattr(export_onnx, 'EXTERNAL_DATA_BYTES', 0)
    model = tiny_runs.make_model('gelu', bias=False, block_size=BLOCK)
    out = tmp_path / 'run'
    tiny_runs.save_checkpoint(model, str(out), char_dataset)
    monkeypatch.setattr(export_onnx, 'out_dir', str(out))
    export_onnx.main()
    first = sorted(os.listdir(out))
    assert len(first) == 3 and re.fullmatch(r'model\.onnx\.[0-9a-f]{8}\.data', first[2]), first
    with monkeypatch.context() as m:  # Ctrl+C while the new export is checked
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt
        m.setattr(ort, 'InferenceSession', interrupted)
        with pytest.raises(KeyboardInterrupt):
            export_onnx.main()
    assert sorted(os.listdir(out)) == first
    export_onnx.main()
    second = sorted(os.listdir(out))
    assert len(second) == 3 and second[2] != first[2]
    session = ort.InferenceSession(str(out / 'model.onnx'), providers=['CPUExecutionProvider'])
    idx = torch.randint(len(tiny_runs.CHARS), (2, BLOCK), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ort_logits(session, idx), tiny_runs.full_logits(model, idx), rtol=0, atol=1e-4)


def test_weights_in_a_file_per_tensor_are_gathered_into_one(tmp_path):
    """What the TorchScript exporter writes for models over 2 GB."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data
    model = tiny_runs.make_model('gelu', bias=True, block_size=BLOCK)
    path = str(tmp_path / 'model.onnx')
    export_onnx.export(model, path, dynamo=False)
    proto = onnx.load(path)
    convert_model_to_external_data(proto, all_tensors_to_one_file=False, size_threshold=0)
    onnx.save(proto, path)
    assert len(os.listdir(tmp_path)) > 10
    proto = onnx.load(path, load_external_data=False)
    export_onnx.gather_weights(proto, str(tmp_path), 'model.onnx.0123abcd.data')
    onnx.save(proto, path)
    assert sorted(os.listdir(tmp_path)) == ['model.onnx', 'model.onnx.0123abcd.data']
    diff, _ = export_onnx.max_logit_difference(model, path, export_onnx.random_prompts(len(tiny_runs.CHARS), BLOCK, 3))
    assert diff <= 1e-4
