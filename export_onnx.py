"""
Export a trained model (out_dir's checkpoint) to ONNX, to run it without PyTorch.

$ python export_onnx.py --out_dir=out-shakespeare-char
$ python sample_onnx.py --out_dir=out-shakespeare-char --top_k=1   # generate with onnxruntime

The graph maps token ids `idx` (int64, batch x seq) to `logits` (float32, batch x seq x
vocab_size) for every position; batch is free and seq runs from 1 to block_size. It has no KV
cache: a generation loop feeds the whole context, cropped to its last block_size tokens, at
each step. The file's metadata (nanogpt.block_size, nanogpt.vocab_size, nanogpt.tokenizer
'char', 'gpt2' or 'unknown', and nanogpt.itos, a JSON list from token id to character) holds
what a sampler needs besides the graph. A model over 1.8 GB keeps its weights beside the file,
in model.onnx.<id>.data, which the file names. Before the file takes the place of an earlier
export, the script runs it with onnxruntime on random prompts and fails when its logits differ
from PyTorch's by more than `tolerance`: the earlier export goes only once a whole and checked
one replaces it, and only an earlier export_onnx.py file is ever replaced.
"""
import json
import logging
import os
import re
import secrets
import time
import warnings

import torch
import torch.nn as nn

import configurator
from helpers import UserError, checkpoint, tokenizer
from helpers.exports import random_prompts, replace_with, writable

# -----------------------------------------------------------------------------
out_dir = 'out'  # the checkpoint to export: out_dir/ckpt.pt (or latest.pt when it is the only one)
output = ''  # the .onnx file to write; default out_dir/model.onnx
opset = 18  # ONNX opset; the dynamo exporter needs >= 18 (onnxruntime >= 1.14 runs it)
dynamo = True  # torch.export-based exporter; False uses the older TorchScript exporter
verify = True  # compare onnxruntime's logits with PyTorch's on random prompts after exporting
tolerance = 1e-4  # largest absolute logit difference accepted by the check
seed = 1337  # for the check's random prompts
# -----------------------------------------------------------------------------
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf files stop at 2 GB: larger models keep their weights beside the file


class AllPositionLogits(nn.Module):
    """GPT.forward for inference, with the logits of every position (GPT.forward without
    targets returns only the last one, which is all sample.py needs)."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()

    def forward(self, idx):
        tf = self.model.transformer
        x = tf.wte(idx) + tf.wpe(torch.arange(idx.shape[1], dtype=torch.long, device=idx.device))
        for block in tf.h:
            x = block(x)
        return self.model.lm_head(tf.ln_f(x))


def model_metadata(ckpt, model):
    """The nanogpt.* strings stored in the .onnx file for samplers outside Python."""
    cfg = model.config
    metadata = {f'nanogpt.{k}': getattr(cfg, k) for k in ('block_size', 'vocab_size', 'n_layer', 'n_head',
                                                          'n_embd', 'bias', 'activation')}
    try:
        vocabulary = tokenizer.checkpoint_entry(ckpt)
    except UserError:  # a nanoGPT checkpoint whose meta.pkl is gone: the graph is still of use
        vocabulary = {'kind': 'unknown'}
    metadata.update({'nanogpt.iter_num': ckpt.get('iter_num', ''), 'nanogpt.tokenizer': vocabulary['kind'],
                     'nanogpt.dataset': (ckpt.get('config') or {}).get('dataset') or ''})
    if vocabulary['kind'] == 'char':
        metadata['nanogpt.itos'] = json.dumps(vocabulary['itos'], ensure_ascii=False)
        metadata['nanogpt.separator'] = vocabulary.get('separator', '')
    return {k: str(v) for k, v in metadata.items()}


def export(model, path, opset=18, dynamo=True, metadata=None, data_name=None):
    """Write model (a GPT) to path as ONNX with a dynamic batch and sequence length; weights over
    EXTERNAL_DATA_BYTES go to data_name beside it (default: path's name + '.data'). Returns the
    exporter used ('dynamo', or 'torchscript' when asked for or when dynamo fails)."""
    import onnx
    block_size = model.config.block_size
    example = torch.zeros(2, min(block_size, 8), dtype=torch.long)  # batch and seq >= 2: neither becomes a constant
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    logging.getLogger('torch.onnx').setLevel(logging.ERROR)  # notes such as "torchvision is not installed"
    used = None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # the exporters' deprecation and tracer chatter
        if dynamo:
            try:
                seq = {1: torch.export.Dim('seq', min=1, max=block_size)} if block_size > 1 else {}
                torch.onnx.export(AllPositionLogits(model), (example,), path, dynamo=True, opset_version=opset,
                                  input_names=['idx'], output_names=['logits'], external_data=external,
                                  dynamic_shapes={'idx': {0: torch.export.Dim('batch'), **seq}})  # prints its stages
                used = 'dynamo'
            except Exception as e:  # any failure of the new exporter: fall back to the TorchScript one
                print(f"the dynamo exporter failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); "
                      "falling back to dynamo=False")
        if used is None:
            torch.onnx.export(AllPositionLogits(model), (example,), path, dynamo=False, opset_version=opset,
                              input_names=['idx'], output_names=['logits'],
                              dynamic_axes={'idx': {0: 'batch', 1: 'seq'}, 'logits': {0: 'batch', 1: 'seq'}})
            used = 'torchscript'
    proto = onnx.load(path, load_external_data=False)  # external weights stay where the exporter put them
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    if weight_files(proto):
        gather_weights(proto, os.path.dirname(os.path.abspath(path)), data_name or os.path.basename(path) + '.data')
    onnx.save(proto, path)
    return used


def weight_files(proto):
    """The files beside an ONNX model that hold its weights."""
    return {e.value for t in proto.graph.initializer for e in t.external_data if e.key == 'location'}


def gather_weights(proto, folder, data_name):
    """Point proto's external weights at one file, folder/data_name: the dynamo exporter's file
    renamed, or the TorchScript exporter's file per tensor gathered into one."""
    from onnx.external_data_helper import convert_model_to_external_data, load_external_data_for_model
    files = weight_files(proto)
    if len(files) == 1:
        os.replace(os.path.join(folder, files.pop()), os.path.join(folder, data_name))
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == 'location':
                    entry.value = data_name
        return
    load_external_data_for_model(proto, folder)  # the weights in memory once, for onnx.save to write them anew
    convert_model_to_external_data(proto, all_tensors_to_one_file=True, location=data_name)
    for name in files:
        os.remove(os.path.join(folder, name))


def max_logit_difference(model, path, prompts):
    """Largest |onnxruntime - PyTorch| over all positions of all prompts, and the largest |logit|."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    worst, scale = 0.0, 0.0
    for idx in prompts:
        with torch.no_grad():
            expected, _ = model.eval()(idx, idx)  # with targets, GPT.forward returns every position's logits
        got = torch.from_numpy(session.run(['logits'], {'idx': idx.numpy()})[0])
        if got.shape != expected.shape:
            raise RuntimeError(f"onnxruntime returned logits of shape {tuple(got.shape)}, not {tuple(expected.shape)}")
        worst = max(worst, (got - expected.float()).abs().max().item())
        scale = max(scale, expected.abs().max().item())
    return worst, scale


def earlier_export(path):
    """The weight files of the export_onnx.py file at path (none when path is free); a UserError,
    before any work, for an output this script must not write: a folder, a file it did not write,
    a place that cannot be written."""
    import onnx
    if os.path.isdir(path):
        raise UserError(f"--output '{path}' is a folder, and the ONNX export is one file: pass a file's path, "
                        f"e.g. --output={os.path.join(path, 'model.onnx')}")
    writable(path)
    if not os.path.exists(path):
        return set()
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # not ONNX at all
        proto = None
    if proto is None or not any(p.key == 'nanogpt.block_size' for p in proto.metadata_props):
        raise UserError(f"{path} exists and export_onnx.py did not write it; pass another --output, or move it away")
    return {name for name in weight_files(proto) if os.path.basename(name) == name}


def main():
    path = output or os.path.join(out_dir, 'model.onnx')
    earlier = earlier_export(path)
    ckpt = checkpoint.load(out_dir, checkpoint.sample_name(out_dir))
    model = checkpoint.model_from_checkpoint(ckpt, dropout=0.0).float().eval()
    metadata = model_metadata(ckpt, model)
    del ckpt
    print(f"exporting {model.get_num_params() / 1e6:.2f}M parameters (block_size {model.config.block_size}, "
          f"activation {model.config.activation}) to {path} ...")
    # written beside path and renamed over it once checked; large weights get a name of their own, so
    # that the earlier export's stay whole until then
    folder, tmp = os.path.dirname(os.path.abspath(path)), checkpoint.temp_path(path)
    data = os.path.join(folder, f"{os.path.basename(path)}.{secrets.token_hex(4)}.data")
    os.makedirs(folder, exist_ok=True)
    checkpoint.remove_orphaned_temp_files(path)
    t0 = time.time()
    try:
        used = export(model, tmp, opset, dynamo, metadata, os.path.basename(data))
        print(f"exported with the {used} exporter, opset {opset}, in {time.time() - t0:.1f}s")
        if verify:
            print("checking the export with onnxruntime ...", flush=True)
            prompts = random_prompts(model.config.vocab_size, model.config.block_size, seed)
            diff, scale = max_logit_difference(model, tmp, prompts)
            print(f"onnxruntime vs PyTorch logits: max abs diff {diff:.3g} (largest |logit| {scale:.3g})")
            if not diff <= tolerance:
                raise UserError(f"the exported model's logits differ from PyTorch's by {diff:.3g}, more than "
                                f"tolerance {tolerance:g}, so it was not kept; please report this with your torch "
                                "and onnx versions")
        replace_with(tmp, path)
    except BaseException:  # the earlier export stays as it was, and this one goes (unless it is in place: tmp gone)
        for name in [tmp + '.data'] + ([tmp, data] if os.path.exists(tmp) else []):
            if os.path.exists(name):
                os.remove(name)
        raise
    # the earlier export's weights, and those of exports killed before they were renamed into place
    stale = re.compile(re.escape(os.path.basename(path)) + r'\.[0-9a-f]{8}\.data')
    for name in earlier | {n for n in os.listdir(folder) if stale.fullmatch(n)}:
        if os.path.join(folder, name) != data and os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    print(f"wrote {path}" + (f" and its weights, {data}" if os.path.exists(data) else ""))


if __name__ == '__main__':
    configurator.configure(globals())
    configurator.check_seed(seed)
    if dynamo and opset < 18:
        raise UserError(f"opset {opset} is too old for the dynamo exporter; use --opset=18 or newer "
                        "(or --dynamo=False for the TorchScript exporter)")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise UserError(f"ONNX export needs the onnx and onnxruntime packages ({e}); "
                        "pip install onnx onnxruntime onnxscript")
    main()
