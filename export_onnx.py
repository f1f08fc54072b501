"""Export a trained model (out_dir's checkpoint) to ONNX, to run it without PyTorch.

$ python export_onnx.py --out_dir=out-shakespeare-char              # -> out_dir/model.onnx
$ python sample_onnx.py --out_dir=out-shakespeare-char --top_k=1    # generate with onnxruntime

The graph maps idx (int64, batch x 1..block_size) to every position's logits, without a KV cache; nanogpt.*
metadata holds the settings and vocabulary; weights over 1.8 GB go beside it (model.onnx.<id>.data).
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
from helpers import UserError, exports, files

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
    """GPT.forward with every position's logits (without targets it returns only the last one)."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()

    def forward(self, idx):
        tf = self.model.transformer
        x = tf.wte(idx) + tf.wpe(torch.arange(idx.shape[1], dtype=torch.long, device=idx.device))
        for block in tf.h:
            x = block(x)
        return self.model.lm_head(tf.ln_f(x))

def model_metadata(ckpt, model, vocabulary):
    """The nanogpt.* strings stored in the .onnx file for samplers outside Python."""
    cfg, kind = model.config, vocabulary['kind'] if vocabulary else 'unknown'
    metadata = dict(block_size=cfg.block_size, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                    n_embd=cfg.n_embd, bias=cfg.bias, activation=cfg.activation, iter_num=ckpt.get('iter_num', ''),
                    tokenizer=kind, dataset=(ckpt.get('config') or {}).get('dataset') or '')
    if kind == 'char':
        metadata.update(itos=json.dumps(vocabulary['itos'], ensure_ascii=False),
                        separator=vocabulary.get('separator', ''))
    if kind == 'bpe':
        metadata.update(bpe=vocabulary['bpe'])
    return {f'nanogpt.{k}': str(v) for k, v in metadata.items()}

def export(model, path, opset=18, dynamo=True, metadata=None, data_name=None):
    """Write model (a GPT) to path as ONNX, weights over EXTERNAL_DATA_BYTES to data_name beside it (default:
    path's name + '.data'); returns the exporter used ('dynamo', or 'torchscript': asked for, or dynamo failed)."""
    import onnx
    block_size = model.config.block_size
    example = torch.zeros(2, min(block_size, 8), dtype=torch.long)  # batch and seq >= 2: neither becomes a constant
    args = dict(opset_version=opset, input_names=['idx'], output_names=['logits'])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    logging.getLogger('torch.onnx').setLevel(logging.ERROR)  # notes such as "torchvision is not installed"
    used = 'torchscript'
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # the exporters' deprecation and tracer chatter
        if dynamo:
            try:
                seq = {1: torch.export.Dim('seq', min=1, max=block_size)} if block_size > 1 else {}
                external = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
                torch.onnx.export(AllPositionLogits(model), (example,), path, dynamo=True, **args,  # prints its stages
                                  external_data=external, dynamic_shapes={'idx': {0: torch.export.Dim('batch'), **seq}})
                used = 'dynamo'
            except Exception as e:  # any failure of the new exporter: fall back to the TorchScript one
                print(f"the dynamo exporter failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); "
                      "falling back to dynamo=False")
        if used == 'torchscript':
            torch.onnx.export(AllPositionLogits(model), (example,), path, dynamo=False, **args,
                              dynamic_axes={'idx': {0: 'batch', 1: 'seq'}, 'logits': {0: 'batch', 1: 'seq'}})
    proto = onnx.load(path, load_external_data=False)  # external weights stay where the exporter put them
    proto.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v) for k, v in (metadata or {}).items())
    if weight_files(proto):
        gather_weights(proto, os.path.dirname(os.path.abspath(path)), data_name or os.path.basename(path) + '.data')
    onnx.save(proto, path)
    return used

def weight_files(proto):
    """The files beside an ONNX model that hold its weights."""
    return {e.value for t in proto.graph.initializer for e in t.external_data if e.key == 'location'}

def gather_weights(proto, folder, data_name):
    """Point proto's external weights at one file, folder/data_name: the dynamo exporter's renamed, or the
    TorchScript exporter's files (one per tensor) gathered."""
    from onnx.external_data_helper import convert_model_to_external_data, load_external_data_for_model
    names = weight_files(proto)
    if len(names) == 1:
        os.replace(os.path.join(folder, names.pop()), os.path.join(folder, data_name))
        for entry in (e for t in proto.graph.initializer for e in t.external_data if e.key == 'location'):
            entry.value = data_name
        return
    load_external_data_for_model(proto, folder)  # the weights in memory once, for onnx.save to write them anew
    convert_model_to_external_data(proto, all_tensors_to_one_file=True, location=data_name)
    for name in names:
        os.remove(os.path.join(folder, name))

def onnx_logits(path):
    """The logits function of onnxruntime running the file at path, for exports.max_logit_difference."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return lambda idx: torch.from_numpy(session.run(['logits'], {'idx': idx.numpy()})[0])

def earlier_export(path):
    """The weight files of the earlier export at path (none when path is free); a UserError, before any work,
    for a folder, a file this script did not write, or a place that cannot be written."""
    import onnx
    if os.path.isdir(path):
        raise UserError(f"--output '{path}' is a folder, and the ONNX export is one file: pass a file's path, "
                        f"e.g. --output={os.path.join(path, 'model.onnx')}")
    exports.writable(path)
    if not os.path.exists(path):
        return set()
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # not ONNX at all
        proto = onnx.ModelProto()
    if not any(p.key == 'nanogpt.block_size' for p in proto.metadata_props):
        raise UserError(f"{path} exists and export_onnx.py did not write it; pass another --output, or move it away")
    return {name for name in weight_files(proto) if os.path.basename(name) == name}

def write_export(model, metadata, path, earlier):
    """Export model to path, checked, in place of the earlier export (whose weight files are earlier)."""
    # written beside path, renamed over it once checked; large weights get a name of their own, the earlier ones stay
    folder, tmp = os.path.dirname(os.path.abspath(path)), files.temp_path(path)
    data = os.path.join(folder, f"{os.path.basename(path)}.{secrets.token_hex(4)}.data")
    files.finish_swaps(folder)  # complete one killed mid-swap before its file is taken for an orphan
    files.remove_orphaned_temp_files(path)
    t0 = time.time()
    try:
        used = export(model, tmp, opset, dynamo, metadata, os.path.basename(data))
        print(f"exported with the {used} exporter, opset {opset}, in {time.time() - t0:.1f}s")
        if verify:
            print("checking the export with onnxruntime ...", flush=True)
            prompts = exports.random_prompts(model.config.vocab_size, model.config.block_size, seed)
            diff, scale = exports.max_logit_difference(model, onnx_logits(tmp), prompts)
            print(f"onnxruntime vs PyTorch logits: max abs diff {diff:.3g} (largest |logit| {scale:.3g})")
            if not diff <= tolerance:
                raise UserError(f"the exported model's logits differ from PyTorch's by {diff:.3g}, more than "
                                f"tolerance {tolerance:g}, so it was not kept; please report this with your torch "
                                "and onnx versions")
        exports.replace_with(tmp, path)
    except BaseException:  # the earlier export stays as it was, and this one goes (unless it is in place: tmp gone)
        for name in [tmp + '.data'] + ([tmp, data] if os.path.exists(tmp) else []):
            files.remove(name)
        raise
    # the earlier export's weights, and those of exports killed before they were renamed into place
    stale = re.compile(re.escape(os.path.basename(path)) + r'\.[0-9a-f]{8}\.data')
    for name in earlier | {n for n in os.listdir(folder) if stale.fullmatch(n)}:
        if os.path.join(folder, name) != data and os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    print(f"wrote {path}" + (f" and its weights, {data}" if os.path.exists(data) else ""))

def main():
    path = output or os.path.join(out_dir, 'model.onnx')
    earlier = earlier_export(path)
    model, ckpt, vocabulary = exports.load_checkpoint(out_dir)
    print(f"exporting {model.get_num_params() / 1e6:.2f}M parameters (block_size {model.config.block_size}, "
          f"activation {model.config.activation}) to {path} ...")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # one export of path at a time: the clean-up at the end of one would delete the other's new weights
    with files.lock(f"{path}.lock", f"another export_onnx.py (pid {{pid}}) is writing {path}; wait for it to end"):
        write_export(model, model_metadata(ckpt, model, vocabulary), path, earlier)

if __name__ == '__main__':
    configurator.configure(globals())
    configurator.check_seed(seed)
    if dynamo and opset < 18:
        raise UserError(f"opset {opset} is too old for the dynamo exporter; use --opset=18 or newer "
                        "(or --dynamo=False for the TorchScript exporter)")
    try:
        import onnx, onnxruntime  # noqa: E401, F401
    except ImportError as e:
        raise UserError(f"ONNX export needs the onnx and onnxruntime packages ({e}); "
                        "pip install onnx onnxruntime onnxscript")
    main()
