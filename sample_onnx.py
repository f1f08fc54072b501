"""Generate text from export_onnx.py's model with onnxruntime and numpy only: the loop another language would write.
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

def load(path):
    """onnxruntime's session of the model export_onnx.py wrote at path, its block_size and its tokenizer."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("sample_onnx.py needs onnxruntime: pip install onnxruntime")
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; pass the .onnx file that export_onnx.py wrote with --onnx_path")
    if not os.path.isfile(path):
        raise UserError(f"no ONNX model at {path}; export one first: python export_onnx.py --out_dir=<your out_dir>")
    try:
        session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    except Exception as e:  # onnxruntime's errors for damaged or foreign files run over many lines
        raise UserError(f"{path} is not a readable ONNX model ({' '.join(str(e).split())[:200]}); export it "
                        "again: python export_onnx.py --out_dir=<your out_dir>")
    meta = session.get_modelmeta().custom_metadata_map
    if 'nanogpt.block_size' not in meta:
        raise UserError(f"{path} was not written by export_onnx.py (it has no nanogpt.* metadata)")
    entry = {k.removeprefix('nanogpt.'): v for k, v in meta.items()}
    if entry.get('tokenizer') not in ('char', 'gpt2', 'bpe'):
        raise UserError("the model's vocabulary is unknown (its dataset had no meta.pkl when it was exported "
                        "and it is not a GPT-2 BPE model); prepare the dataset and export again")
    entry.update(kind=entry['tokenizer'], itos=json.loads(entry.get('itos', '[]')))
    return session, int(entry['block_size']), tokenizer.from_entry(entry)

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

def main():
    session, block_size, vocab = load(onnx_path or os.path.join(out_dir, 'model.onnx'))
    [prompt] = tokenizer.read_prompts(start)
    start_ids = vocab.encode(prompt)
    t0 = time.time()
    for k in range(num_samples):
        # numpy's draws (seeded seed + sample number) differ from sample.py's; --top_k=1 gives its tokens
        ids, rng, decode_next = list(start_ids), np.random.default_rng(seed + k), vocab.stream_decoder()
        sys.stdout.write(prompt)
        for _ in range(max_new_tokens):  # each step runs the whole context, cropped to block_size
            logits = session.run(['logits'], {'idx': np.asarray([ids[-block_size:]], dtype=np.int64)})[0][0, -1]
            ids.append(pick_token(logits.astype(np.float64), temperature, top_k, rng))
            print(decode_next(ids[-1]), end='', flush=True)
        print('\n---------------')
    n_tokens, elapsed = num_samples * max_new_tokens, time.time() - t0
    print(f"generated {n_tokens} tokens in {elapsed:.2f}s ({n_tokens / elapsed:.1f} tokens/s, onnxruntime)",
          file=sys.stderr)

if __name__ == '__main__':
    configurator.configure_sampling(globals())
    main()
