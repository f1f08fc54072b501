"""
Generate text from a model exported with export_onnx.py with onnxruntime and numpy only, no PyTorch: the loop a
program in another language would write. --top_k=1 gives sample.py --top_k=1's tokens; other draws use numpy's
generator (seeded seed + sample number), so they differ from sample.py's.

$ python sample_onnx.py --out_dir=out-shakespeare-char                  # reads out_dir/model.onnx
$ python sample_onnx.py --onnx_path=model.onnx --top_k=1 --start="ROMEO:"
"""
import json
import os
import sys
import time

import numpy as np

import configurator
from helpers import UserError, tokenizer

# -----------------------------------------------------------------------------
out_dir = 'out'  # where export_onnx.py wrote model.onnx
onnx_path = ''  # the .onnx file; default out_dir/model.onnx
start = "\n"  # the prompt, or "FILE:prompt.txt"
num_samples = 10
max_new_tokens = 500
temperature = 0.8  # < 1.0 sharper, > 1.0 more random
top_k = 200  # keep only the top_k most likely tokens; 1 is greedy decoding
seed = 1337
# -----------------------------------------------------------------------------

class OnnxGPT:
    """An exported model and the settings stored in its metadata."""

    def __init__(self, path):
        import onnxruntime as ort
        if os.path.isdir(path):
            raise UserError(f"{path} is a folder; pass the .onnx file that export_onnx.py wrote with --onnx_path")
        if not os.path.isfile(path):
            raise UserError(f"no ONNX model at {path}; export one first: "
                            "python export_onnx.py --out_dir=<your out_dir>")
        try:
            self.session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        except Exception as e:  # onnxruntime's errors for damaged or foreign files run over many lines
            raise UserError(f"{path} is not a readable ONNX model ({' '.join(str(e).split())[:200]}); export it "
                            "again: python export_onnx.py --out_dir=<your out_dir>")
        self.meta = self.session.get_modelmeta().custom_metadata_map
        if 'nanogpt.block_size' not in self.meta:
            raise UserError(f"{path} was not written by export_onnx.py (it has no nanogpt.* metadata)")
        self.block_size = int(self.meta['nanogpt.block_size'])

    def next_token_logits(self, ids):
        """The last position's logits for one sequence, its context cropped to block_size."""
        idx = np.asarray([ids[-self.block_size:]], dtype=np.int64)
        return self.session.run(['logits'], {'idx': idx})[0][0, -1].astype(np.float64)

def pick_token(logits, temperature, top_k, rng):
    """Greedy for top_k == 1; otherwise a draw from softmax(logits / temperature) over the top_k."""
    if top_k == 1:
        return int(np.argmax(logits))
    with np.errstate(over='ignore'):  # the largest is 0 first, so a tiny temperature sends the rest to -inf: greedy
        logits = (logits - logits.max()) / temperature
    if top_k is not None and top_k < logits.size:
        kth_largest = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < kth_largest, -np.inf, logits)
    probs = np.exp(logits)
    return int(rng.choice(logits.size, p=probs / probs.sum()))

def generate(model, ids, max_new_tokens, temperature, top_k, rng):
    """Yield max_new_tokens tokens continuing ids; each step runs the whole cropped context."""
    ids = list(ids)
    for _ in range(max_new_tokens):
        ids.append(pick_token(model.next_token_logits(ids), temperature, top_k, rng))
        yield ids[-1]

def tokenizer_for(meta):
    """The model's own characters or BPE from its metadata, or GPT-2's BPE."""
    kind = meta.get('nanogpt.tokenizer')
    if kind == 'char':
        return tokenizer.CharTokenizer(json.loads(meta['nanogpt.itos']), meta.get('nanogpt.separator'))
    if kind == 'gpt2':
        return tokenizer.BPETokenizer()
    if kind == 'bpe':
        return tokenizer.TextBPETokenizer(meta['nanogpt.bpe'])
    raise UserError("the model's vocabulary is unknown (its dataset had no meta.pkl when it was exported "
                    "and it is not a GPT-2 BPE model); prepare the dataset and export again")

def main():
    model = OnnxGPT(onnx_path or os.path.join(out_dir, 'model.onnx'))
    vocab = tokenizer_for(model.meta)
    prompt = tokenizer.read_prompt(start)
    start_ids = vocab.encode(prompt)
    n_tokens, t0 = 0, time.time()
    for k in range(num_samples):
        decode_next = vocab.stream_decoder()
        sys.stdout.write(prompt)
        for token in generate(model, start_ids, max_new_tokens, temperature, top_k, np.random.default_rng(seed + k)):
            sys.stdout.write(decode_next(token))
            sys.stdout.flush()
            n_tokens += 1
        print('\n---------------')
    elapsed = time.time() - t0
    print(f"generated {n_tokens} tokens in {elapsed:.2f}s ({n_tokens / elapsed:.1f} tokens/s, onnxruntime)",
          file=sys.stderr)

if __name__ == '__main__':
    configurator.configure(globals())
    configurator.require_positive(globals(), 'num_samples', 'max_new_tokens')
    configurator.check_sampling(temperature, top_k)
    configurator.check_seed(seed)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("sample_onnx.py needs onnxruntime: pip install onnxruntime")
    main()
