"""Export out_dir's checkpoint to ONNX, to run it without PyTorch: every position's logits, nanogpt.* metadata.
$ python export_onnx.py --out_dir=out-shakespeare-char    # -> out_dir/model.onnx, for sample_onnx.py
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
    """The nanogpt.* strings stored in the .onnx file for samplers outside Python: settings and vocabulary."""
    cfg, vocab = model.config, dict(vocabulary or {'kind': 'unknown'})
    if 'itos' in vocab:
        vocab['itos'] = json.dumps(vocab['itos'], ensure_ascii=False)
    metadata = dict(block_size=cfg.block_size, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                    n_embd=cfg.n_embd, bias=cfg.bias, activation=cfg.activation, iter_num=ckpt.get('iter_num', ''),
                    tokenizer=vocab.pop('kind'), dataset=(ckpt.get('config') or {}).get('dataset') or '', **vocab)
    return {f'nanogpt.{k}': str(v) for k, v in metadata.items()}

def export(model, path, opset=18, dynamo=True, metadata=None, data_name=None):
    """Write model to path as ONNX (large weights beside it, in data_name); returns the exporter used."""
    import onnx
    block_size = model.config.block_size
    example = torch.zeros(2, min(block_size, 8), dtype=torch.long)  # batch and seq >= 2: neither becomes a constant
    args = dict(opset_version=opset, input_names=['idx'], output_names=['logits'])
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
    """Point proto's external weights at one file, folder/data_name: dynamo's one renamed, or TorchScript's gathered."""
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
    """The logits function of onnxruntime running the file at path."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return lambda idx: torch.from_numpy(session.run(['logits'], {'idx': idx.numpy()})[0])

def earlier_export(path):
    """The weight files of the export at path; a UserError for a folder, a foreign file or no write access."""
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

def main():
    path = output or os.path.join(out_dir, 'model.onnx')
    earlier = earlier_export(path)
    model, ckpt, vocabulary = exports.load_checkpoint(out_dir, path)
    # written beside path and swapped in once checked; large weights get a name of their own: the earlier ones stay
    folder, tmp = os.path.dirname(os.path.abspath(path)), files.temp_path(path)
    data = os.path.join(folder, f"{os.path.basename(path)}.{secrets.token_hex(4)}.data")
    os.makedirs(folder, exist_ok=True)
    # one export of path at a time: the clean-up at the end of one would delete the other's new weights
    with files.lock(f"{path}.lock", f"another export_onnx.py (pid {{pid}}) is writing {path}; wait for it to end"):
        files.finish_swaps(folder)  # complete one killed mid-swap before its file is taken for an orphan
        files.remove_orphaned_temp_files(path)
        t0 = time.time()
        try:
            used = export(model, tmp, opset, dynamo, model_metadata(ckpt, model, vocabulary), os.path.basename(data))
            print(f"exported with the {used} exporter, opset {opset}, in {time.time() - t0:.1f}s")
            if verify:
                print("checking the export with onnxruntime ...", flush=True)
                exports.check_logits(model, [('onnxruntime', onnx_logits(tmp))], seed, tolerance, 'onnx')
        except BaseException:  # the earlier export stays as it was, and this one goes
            for name in (tmp, tmp + '.data', data):
                files.remove(name)
            raise
        # the earlier export's weights, and those of exports killed before their swap, go in the swap: one that
        # fails midway is finished by the next export (what it leaves before it begins, the next one deletes)
        stale = re.compile(re.escape(os.path.basename(path)) + r'\.[0-9a-f]{8}\.data')
        old = (earlier | {n for n in os.listdir(folder) if stale.fullmatch(n)}) - {os.path.basename(data)}
        exports.replace_with(tmp, path, [n for n in old if os.path.isfile(os.path.join(folder, n))])
    print(f"wrote {path}" + (f" and its weights, {data}" if os.path.exists(data) else ""))

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
