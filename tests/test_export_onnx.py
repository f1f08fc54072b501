"""ONNX export: onnxruntime gives PyTorch's logits for every position, any batch and any length
up to block_size, and greedy decoding on onnxruntime writes the same text as sample.py --top_k=1."""
import functools
import itertools
import json
import os
import re

import pytest
import torch

import export_onnx
import tiny_runs
from conftest import run_inproc
from helpers import UserError, exports, files

ort = pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')
from onnx.external_data_helper import convert_model_to_external_data  # noqa: E402

BLOCK = 16
TORCHSCRIPT = functools.partial(export_onnx.export, dynamo=False)  # the fallback exporter: fast

@pytest.fixture(scope='module')
def char_dataset():
    name = tiny_runs.make_char_dataset('onnx')
    yield name
    tiny_runs.remove_dataset(name)

def onnx_logits(path, idx):
    return export_onnx.onnx_logits(str(path))(idx)

def sample_text(stdout):
    """The sample printed by sample.py / sample_onnx.py: what follows the settings lines."""
    lines = stdout.split('\n---------------')[0].split('\n')
    while lines and lines[0].startswith(('Overriding:', 'Loading meta')):
        lines.pop(0)
    return '\n'.join(lines)

def checked_model(seed=0, activation='gelu', bias=False):
    """A model, a batch of full windows and their logits, large enough for a comparison to mean something."""
    model = tiny_runs.make_model(activation, bias=bias, block_size=BLOCK, seed=seed)
    idx = torch.randint(len(tiny_runs.CHARS), (2, BLOCK), generator=torch.Generator().manual_seed(1))
    expected = tiny_runs.full_logits(model, idx)
    assert expected.abs().max() > 3
    return model, idx, expected

def test_cli_export_dynamic_shapes_and_greedy_sampling(tmp_path, char_dataset):
    model = tiny_runs.make_model('gelu', bias=False, block_size=BLOCK)
    out = tmp_path / 'run'
    tiny_runs.save_checkpoint(model, str(out), char_dataset)
    proc = run_inproc('export_onnx.py', f'--out_dir={out}', check=True)
    assert 'with the dynamo exporter' in proc.stdout, proc.stdout
    assert float(re.search(r'max abs diff ([0-9.eE+-]+)', proc.stdout).group(1)) <= 1e-4
    session = ort.InferenceSession(str(out / 'model.onnx'), providers=['CPUExecutionProvider'])
    assert [i.shape for i in session.get_inputs()] == [['batch', 'seq']]
    logits_of, g = export_onnx.onnx_logits(str(out / 'model.onnx')), torch.Generator().manual_seed(5)
    for batch, seq in [(1, 1), (5, BLOCK), (3, 11), (1, 2)]:  # none of them the export's example (2, 8)
        idx = torch.randint(len(tiny_runs.CHARS), (batch, seq), generator=g)
        expected = tiny_runs.full_logits(model, idx)
        assert expected.abs().max() > 3  # large enough for the comparison to mean something
        torch.testing.assert_close(logits_of(idx), expected, rtol=0, atol=1e-4)
    with pytest.raises(Exception):  # longer than block_size: refused, not silently wrong
        logits_of(torch.zeros(1, BLOCK + 1, dtype=torch.long))
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta['nanogpt.itos']) == tiny_runs.CHARS
    assert (meta['nanogpt.tokenizer'], meta['nanogpt.block_size'], meta['nanogpt.activation']) == ('char', '16', 'gelu')
    # greedy decoding: 30 new tokens run past block_size, where sample.py leaves its KV cache for
    # full windows and the onnxruntime loop starts cropping its context to the last block_size tokens
    args = ('--top_k=1', '--num_samples=1', '--max_new_tokens=30', '--start=ab')
    expected = sample_text(run_inproc('sample.py', f'--out_dir={out}', *args, '--device=cpu', check=True).stdout)
    got = sample_text(run_inproc('sample_onnx.py', f'--onnx_path={out / "model.onnx"}', *args, check=True).stdout)
    assert len(expected) == 2 + 30 and expected.startswith('ab') and got == expected

@pytest.mark.parametrize('activation', ['gelu', 'gelu_tanh'])
@pytest.mark.parametrize('bias', [False, True])
def test_every_variant_matches_and_the_check_sees_a_wrong_gelu(tmp_path, activation, bias):
    # the TorchScript exporter covers every variant; the dynamo exporter is covered above
    # (gelu, no bias) and below (tanh, biases, weights beside)
    model = tiny_runs.make_model(activation, bias=bias, block_size=BLOCK)
    path = str(tmp_path / 'model.onnx')
    assert TORCHSCRIPT(model, path) == 'torchscript'
    prompts = exports.random_prompts(model.config.vocab_size, BLOCK, seed=1)
    diff, scale = exports.max_logit_difference(model, export_onnx.onnx_logits(path), prompts)
    assert diff <= 1e-4 and scale > 3
    # the same weights with the other GELU are far outside the tolerance: the check has teeth
    other = tiny_runs.make_model('gelu' if activation == 'gelu_tanh' else 'gelu_tanh', bias=bias, block_size=BLOCK)
    other.load_state_dict(model.state_dict())
    assert exports.max_logit_difference(other, export_onnx.onnx_logits(path), prompts)[0] > 1e-3
    # the wrapper that is exported computes GPT.forward's logits, position by position
    idx = torch.randint(model.config.vocab_size, (2, BLOCK), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(export_onnx.AllPositionLogits(model)(idx), tiny_runs.full_logits(model, idx),
                                   rtol=0, atol=1e-5)

def weights_beside(model, path, one_file=None, metadata=None):
    """The TorchScript export at path, its weights then moved beside it: into the file one_file, or one file a
    tensor (as the TorchScript exporter writes models over 2 GB)."""
    TORCHSCRIPT(model, path, metadata=metadata)
    proto = onnx.load(path)
    convert_model_to_external_data(proto, all_tensors_to_one_file=bool(one_file), location=one_file,
                                   size_threshold=0)
    onnx.save(proto, path)

def quick_export(model, path, opset, dynamo, metadata, data_name):
    """export_onnx.export's output for a model over 2 GB, in a second."""
    weights_beside(model, path, data_name, metadata)
    return 'torchscript'

def test_weights_in_a_file_per_tensor_are_gathered_into_one(tmp_path):
    """What the TorchScript exporter writes for models over 2 GB."""
    model = tiny_runs.make_model('gelu', bias=True, block_size=BLOCK)
    path = str(tmp_path / 'model.onnx')
    weights_beside(model, path)
    assert len(os.listdir(tmp_path)) > 10
    proto = onnx.load(path, load_external_data=False)
    export_onnx.gather_weights(proto, str(tmp_path), 'model.onnx.0123abcd.data')
    onnx.save(proto, path)
    assert sorted(os.listdir(tmp_path)) == ['model.onnx', 'model.onnx.0123abcd.data']
    prompts = exports.random_prompts(len(tiny_runs.CHARS), BLOCK, 3)
    assert exports.max_logit_difference(model, export_onnx.onnx_logits(path), prompts)[0] <= 1e-4

@pytest.mark.skipif(not hasattr(os, 'fork'), reason='forks the export to kill it')
def test_weights_beside_the_file_are_replaced_only_whole(tmp_path, char_dataset, monkeypatch, capsys):
    """A model over 2 GB keeps its weights beside the .onnx file (here any model: the threshold is 0), under a
    name of each export's own: the earlier pair stays whole until the new .onnx file is renamed over the old one,
    then the old weights go. The first export is the dynamo exporter's (tanh GELU, biases); the next, quicker
    ones are stopped by Ctrl+C, then killed (os._exit: no clean-up runs) before each of their renames and
    removals in turn: model.onnx always runs, as the earlier export or the new one, and the next export leaves
    no file behind but its own. A second export of one file at once is refused (its clean-up would delete the
    other's new weights)."""
    monkeypatch.setattr(export_onnx, 'EXTERNAL_DATA_BYTES', 0)
    out = tmp_path / 'run'
    monkeypatch.setattr(export_onnx, 'out_dir', str(out))
    (model, idx, old), (new_model, _, new) = checked_model(3, 'gelu_tanh', bias=True), checked_model(1)
    tiny_runs.save_checkpoint(model, str(out), char_dataset)
    export_onnx.main()
    assert 'exported with the dynamo exporter' in capsys.readouterr().out
    first = sorted(os.listdir(out))
    assert len(first) == 4 and re.fullmatch(r'model\.onnx\.[0-9a-f]{8}\.data', first[2]), first
    torch.testing.assert_close(onnx_logits(out / 'model.onnx', idx), old, rtol=0, atol=1e-4)
    monkeypatch.setattr(export_onnx, 'export', quick_export)
    tiny_runs.save_checkpoint(new_model, str(out), char_dataset)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:  # Ctrl+C while the new export is checked
        m.setattr(ort, 'InferenceSession', interrupted)
        with pytest.raises(KeyboardInterrupt):
            export_onnx.main()
    assert sorted(os.listdir(out)) == first
    for step in itertools.count(1):
        pid = os.fork()
        if pid == 0:  # the export, killed at its step-th change to a file
            code, calls = 1, itertools.count(1)
            try:
                for name in ('replace', 'rename', 'remove', 'unlink'):
                    def deadly(*args, real=getattr(os, name), **kwargs):
                        return os._exit(137) if next(calls) == step else real(*args, **kwargs)
                    setattr(os, name, deadly)
                export_onnx.main()
                code = 0
            finally:
                os._exit(code)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        assert code in (0, 137), code
        got = onnx_logits(out / 'model.onnx', idx)
        assert [torch.allclose(got, e, rtol=0, atol=1e-4) for e in (old, new)].count(True) == 1, step
        if code == 0:  # it ran to the end: no step left
            break
    assert step > 2 and torch.allclose(got, new, rtol=0, atol=1e-4)
    second = sorted(os.listdir(out))
    assert len(second) == 4 and second[2] != first[2]  # ckpt.pt, model.onnx, its weights, model.onnx.lock
    export_onnx.main()
    assert len(os.listdir(out)) == 4  # nothing else left
    with files.lock(str(out / 'model.onnx.lock'), 'held'):  # as an export in progress holds it
        before = {name: (out / name).read_bytes() for name in os.listdir(out)}
        with pytest.raises(UserError, match=r"^another export_onnx\.py \(pid \d+\) is writing .*model\.onnx; wait"):
            export_onnx.main()
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
