"""Export out_dir's checkpoint as a Hugging Face transformers GPT-2 folder.
$ python export_hf.py --out_dir=out-shakespeare-char          # writes out_dir/hf/
    GPT2LMHeadModel.from_pretrained('out-shakespeare-char/hf')   # in transformers
    python sample.py --init_from=out-shakespeare-char/hf          # back here
"""
import json
import os
import time

import torch

import configurator
from helpers import UserError, exports, files, tokenizer
from model import CONV1D_WEIGHTS, GPT

# -----------------------------------------------------------------------------
out_dir = 'out'  # the checkpoint to export: out_dir/ckpt.pt (or latest.pt when it is the only one)
output = ''  # the directory to write; default out_dir/hf
verify = True  # reload the directory and compare logits with the checkpoint's model
tolerance = 1e-5  # largest absolute logit difference accepted by the check (float32)
seed = 1337  # for the check's random prompts
# -----------------------------------------------------------------------------

HF_ACTIVATION = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new'}  # ours -> transformers' activation_function
MARKER = 'export_hf.json'  # the files an export wrote: a folder with it and only those is an earlier export

def to_hf(model, vocabulary=None):
    """A transformers GPT2LMHeadModel computing model's logits; vocabulary (a tokenizer entry) names its EOT."""
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = model.config
    eot = tokenizer.GPT2_EOT if cfg.vocab_size > tokenizer.GPT2_EOT else None
    if vocabulary and vocabulary['kind'] == 'char':  # the dataset's separator, if it has one
        eot = vocabulary['itos'].index(vocabulary['separator']) if vocabulary.get('separator') else None
    hf_model = GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function=HF_ACTIVATION[cfg.activation], layer_norm_epsilon=1e-5, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=eot, eos_token_id=eot))
    ours = model.state_dict()
    with torch.no_grad():
        for name, target in hf_model.state_dict().items():
            if name.endswith(('.attn.bias', '.attn.masked_bias')):  # transformers' causal-mask buffers
                continue
            if name in ours:
                value = ours[name].float()
                target.copy_(value.t() if name.endswith(CONV1D_WEIGHTS) else value)
            elif name.endswith('.bias') and name[:-len('bias')] + 'weight' in ours:
                target.zero_()  # a bias=False model: zero biases compute the same function
            else:
                raise RuntimeError(f"transformers' GPT-2 has a parameter {name} that this model lacks")
    return hf_model.eval()

def export(model, directory, vocabulary=None):
    """Write config.json, model.safetensors and, for a dataset's own vocabulary, its tokenizer into directory."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # the bars of tiny files are noise
    hf_model = to_hf(model, vocabulary)
    hf_model.save_pretrained(directory, safe_serialization=True)
    if vocabulary and vocabulary['kind'] == 'bpe':
        PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(vocabulary['bpe'])).save_pretrained(directory)
    elif vocabulary and vocabulary['kind'] == 'char':  # a BPE without merges: one token per character
        tokens = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(vocabulary['itos'])}, merges=[]))
        tokens.decoder = decoders.Fuse()  # characters join without spaces between them
        tokens = PreTrainedTokenizerFast(tokenizer_object=tokens, eos_token=vocabulary.get('separator'))
        tokens.save_pretrained(directory)
    written = sorted(set(os.listdir(directory)) | {MARKER})
    with open(os.path.join(directory, MARKER), 'w') as f:
        json.dump({'written_by': 'export_hf.py', 'files': written}, f, indent=1)
    for name in os.listdir(directory):  # readable by others, like every other output (transformers writes 0600)
        os.chmod(os.path.join(directory, name), 0o644)
    return hf_model

def check_output(directory):
    """A UserError, before any work, unless directory is absent, empty or an earlier export, and writable."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"--output '{directory}' is a file; the export is a folder: pass a folder's path")
    files.finish_swaps(os.path.dirname(os.path.abspath(directory)))
    if os.path.isdir(directory):
        try:
            with open(os.path.join(directory, MARKER)) as f:
                ours = set(json.load(f)['files'])
        except (OSError, ValueError, KeyError, TypeError):
            ours = set()
        foreign = sorted(set(os.listdir(directory)) - ours)
        if foreign:
            raise UserError(f"--output {directory} holds files that no export_hf.py export wrote "
                            f"({', '.join(foreign[:4])}{', ...' if len(foreign) > 4 else ''}); pass a new or empty "
                            "folder, or move those files away")
    exports.writable(directory)

def main():
    directory = output or os.path.join(out_dir, 'hf')
    check_output(directory)
    model, _, vocabulary = exports.load_checkpoint(out_dir, directory)
    cfg = model.config
    t0, tmp = time.time(), files.temp_path(directory)
    os.makedirs(os.path.dirname(os.path.abspath(directory)), exist_ok=True)
    files.remove_orphaned_temp_files(directory)
    try:
        export(model, tmp, vocabulary)
        print(f"exported config.json and model.safetensors in {time.time() - t0:.1f}s: GPT-2 with "
              f"n_layer={cfg.n_layer}, n_head={cfg.n_head}, n_embd={cfg.n_embd}, n_positions={cfg.block_size}, "
              f"vocab_size={cfg.vocab_size}, activation_function='{HF_ACTIVATION[cfg.activation]}'"
              + ("" if cfg.bias else " (zero biases: the model was trained with bias=False)"))
        if verify:
            from transformers import GPT2LMHeadModel
            hf_model, back = GPT2LMHeadModel.from_pretrained(tmp), GPT.from_pretrained(tmp).eval()
            exports.check_logits(model, [('transformers GPT2LMHeadModel', lambda idx: hf_model(idx).logits),
                                         ('GPT.from_pretrained round trip', lambda idx: back(idx, idx)[0])],
                                 seed, tolerance, 'transformers')
        exports.replace_with(tmp, directory)
    finally:
        files.remove(tmp)  # what is left of an export that failed or was stopped
    print(f"wrote {directory}")

if __name__ == '__main__':
    configurator.configure(globals())
    configurator.check_seed(seed)
    try:
        import safetensors, transformers  # noqa: E401, F401
    except ImportError as e:
        raise UserError(f"export_hf.py needs transformers and safetensors ({e}); pip install transformers safetensors")
    main()
