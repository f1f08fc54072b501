"""
Export a trained model (out_dir's checkpoint) as a Hugging Face transformers GPT-2 directory.

$ python export_hf.py --out_dir=out-shakespeare-char          # writes out_dir/hf/

    from transformers import GPT2LMHeadModel
    hf_model = GPT2LMHeadModel.from_pretrained('out-shakespeare-char/hf')   # in transformers
    model = GPT.from_pretrained('out-shakespeare-char/hf')                  # back into model.py's GPT

The directory holds config.json (a GPT2Config) and model.safetensors, float32, and for a
character-level model its vocabulary as a transformers tokenizer (tokenizer.json, one token per
character: AutoTokenizer.from_pretrained loads it, and sample.py --init_from=<the directory>
uses it); a GPT-2 BPE model pairs with GPT-2's own tokenizer. The export keeps the model's own
GELU (activation_function 'gelu', exact, for models trained here; 'gelu_new', OpenAI's tanh
approximation, for those started from GPT-2), and a model trained with bias=False gets zero
biases (transformers' GPT-2 always has them): the logits are the same. export_hf.json lists the
files the export wrote.

The directory is written beside its place, loaded back with transformers and with
GPT.from_pretrained (the script prints the largest logit difference from the checkpoint's model),
and only then renamed into place: an earlier export there goes only once a whole and checked one
replaces it, and it is the only thing the script replaces (a folder holding anything else is
refused).
"""
import json
import os
import shutil
import time

import torch

import configurator
from helpers import UserError, checkpoint, tokenizer
from helpers.exports import random_prompts, replace_with, writable
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
    """A transformers GPT2LMHeadModel computing the same logits as model (a GPT); vocabulary, a
    checkpoint's tokenizer entry, names the end-of-text token."""
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = model.config
    eot = tokenizer.GPT2_EOT if cfg.vocab_size > tokenizer.GPT2_EOT else None
    if vocabulary and vocabulary['kind'] == 'char':  # the dataset's separator, if it has one
        eot = vocabulary['itos'].index(vocabulary['separator']) if vocabulary.get('separator') else None
    hf_model = GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function=HF_ACTIVATION[cfg.activation], layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=eot,
        eos_token_id=eot))
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


def char_tokenizer(vocabulary):
    """A transformers tokenizer with one token per character: a BPE model without merges."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    tokens = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(vocabulary['itos'])}, merges=[]))
    tokens.decoder = decoders.Fuse()  # characters join without spaces between them
    return PreTrainedTokenizerFast(tokenizer_object=tokens, eos_token=vocabulary.get('separator'))


def export(model, directory, vocabulary=None):
    """Write config.json, model.safetensors and, for a character vocabulary (a checkpoint's
    tokenizer entry), the tokenizer files for model (a GPT) into directory."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # the bars of tiny files are noise
    hf_model = to_hf(model, vocabulary)
    os.makedirs(directory, exist_ok=True)
    hf_model.save_pretrained(directory, safe_serialization=True)
    if vocabulary and vocabulary['kind'] == 'char':
        char_tokenizer(vocabulary).save_pretrained(directory)
    files = sorted(set(os.listdir(directory)) | {MARKER})
    with open(os.path.join(directory, MARKER), 'w') as f:
        json.dump({'written_by': 'export_hf.py', 'files': files}, f, indent=1)
    for name in os.listdir(directory):  # readable by others, like every other output (transformers writes 0600)
        os.chmod(os.path.join(directory, name), 0o644)
    return hf_model


def check_output(directory):
    """A UserError, before any work, unless directory is free for the export: absent, empty, or an
    earlier export and nothing else, in a place that can be written."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"--output '{directory}' is a file; the export is a folder: pass a folder's path")
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
    writable(directory)


@torch.no_grad()
def max_logit_difference(model, other, prompts, hf=True):
    """Largest |logits(other) - logits(model)| over every position of every prompt, and the largest |logit|."""
    worst, scale = 0.0, 0.0
    for idx in prompts:
        expected, _ = model.eval()(idx, idx)  # with targets, GPT.forward returns every position's logits
        got = other(idx).logits if hf else other(idx, idx)[0]
        worst = max(worst, (got.float() - expected.float()).abs().max().item())
        scale = max(scale, expected.abs().max().item())
    return worst, scale


def main():
    directory = output or os.path.join(out_dir, 'hf')
    check_output(directory)
    ckpt = checkpoint.load(out_dir, checkpoint.sample_name(out_dir))
    model = checkpoint.model_from_checkpoint(ckpt, dropout=0.0).float().eval()
    try:
        vocabulary = tokenizer.checkpoint_entry(ckpt)
    except UserError:  # a nanoGPT checkpoint whose meta.pkl is gone: the weights alone
        vocabulary = None
    del ckpt
    cfg = model.config
    print(f"exporting {model.get_num_params() / 1e6:.2f}M parameters to {directory} ...", flush=True)
    t0 = time.time()
    tmp = checkpoint.temp_path(directory)
    os.makedirs(os.path.dirname(os.path.abspath(directory)), exist_ok=True)
    checkpoint.remove_orphaned_temp_files(directory)
    try:
        export(model, tmp, vocabulary)
        print(f"exported config.json and model.safetensors in {time.time() - t0:.1f}s: "
              f"GPT-2 with n_layer={cfg.n_layer}, n_head={cfg.n_head}, n_embd={cfg.n_embd}, "
              f"n_positions={cfg.block_size}, vocab_size={cfg.vocab_size}, "
              f"activation_function='{HF_ACTIVATION[cfg.activation]}'"
              + ("" if cfg.bias else " (zero biases: the model was trained with bias=False)"))
        if verify:
            from transformers import GPT2LMHeadModel
            prompts = random_prompts(cfg.vocab_size, cfg.block_size, seed)
            diff_hf, scale = max_logit_difference(model, GPT2LMHeadModel.from_pretrained(tmp), prompts)
            print(f"transformers GPT2LMHeadModel vs checkpoint logits: max abs diff {diff_hf:.3g} "
                  f"(largest |logit| {scale:.3g})")
            diff_back, _ = max_logit_difference(model, GPT.from_pretrained(tmp).eval(), prompts, hf=False)
            print(f"GPT.from_pretrained round trip vs checkpoint logits: max abs diff {diff_back:.3g}")
            if not max(diff_hf, diff_back) <= tolerance:
                raise UserError(f"the exported model's logits differ by {max(diff_hf, diff_back):.3g}, more than "
                                f"tolerance {tolerance:g}, so it was not kept; please report this with your torch "
                                "and transformers versions")
        replace_with(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # what is left of an export that failed or was stopped
    print(f"wrote {directory}")


if __name__ == '__main__':
    configurator.configure(globals())
    configurator.check_seed(seed)
    try:
        import safetensors  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise UserError(f"export_hf.py needs transformers and safetensors ({e}); pip install transformers safetensors")
    main()
