"""
Export a trained model (out_dir's checkpoint) as a Hugging Face transformers GPT-2 directory.

$ python export_hf.py --out_dir=out-shakespeare-char          # writes out_dir/hf/

    from transformers import GPT2LMHeadModel
    hf_model = GPT2LMHeadModel.from_pretrained('out-shakespeare-char/hf')   # in transformers
    model = GPT.from_pretrained('out-shakespeare-char/hf')                  # back into model.py's GPT

The directory holds config.json (a GPT2Config) and model.safetensors, float32.

The GELU: transformers' GPT-2 runs whichever activation its config names, so the export
keeps the one the model was trained with: activation_function 'gelu' (exact, erf-based,
nanoGPT's default) for models trained here with activation='gelu', and 'gelu_new'
(OpenAI's tanh approximation) for activation='gelu_tanh'. Loading reproduces the logits
either way; nothing is approximated.

Models trained with bias=False: GPT-2 in transformers always has biases, so the export
writes zero biases for every Linear and LayerNorm, which computes exactly the same function.
GPT.from_pretrained on the directory gives back a bias=True model with those zero biases.

The vocabulary is not exported: a GPT-2 BPE model pairs with the 'gpt2' tokenizer, a
character-level model with its dataset's meta.pkl (token id -> character).

After writing, the script loads the directory back with transformers and with
GPT.from_pretrained and prints the largest logit difference from the checkpoint's model.
"""
import os
import time

import torch

import configurator
from helpers import UserError, checkpoint
from export_onnx import random_prompts  # the same check prompts for both exports
from model import CONV1D_WEIGHTS, GPT

# -----------------------------------------------------------------------------
out_dir = 'out'  # the checkpoint to export: out_dir/ckpt.pt (or latest.pt when it is the only one)
output = ''  # the directory to write; default out_dir/hf
verify = True  # reload the directory and compare logits with the checkpoint's model
tolerance = 1e-5  # largest absolute logit difference accepted by the check (float32)
seed = 1337  # for the check's random prompts
# -----------------------------------------------------------------------------

# our activation -> transformers' activation_function
HF_ACTIVATION = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new'}
GPT2_EOT = 50256  # <|endoftext|> in GPT-2's BPE


def hf_config(config):
    """The transformers GPT2Config with the same architecture as our GPTConfig."""
    from transformers import GPT2Config
    eot = GPT2_EOT if config.vocab_size > GPT2_EOT else None  # a character vocabulary has no <|endoftext|>
    return GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                      n_layer=config.n_layer, n_head=config.n_head,
                      activation_function=HF_ACTIVATION[config.activation], layer_norm_epsilon=1e-5,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                      bos_token_id=eot, eos_token_id=eot)


def hf_state_dict(model):
    """Our parameters under transformers' names and layouts; zeros for the biases a bias=False model lacks."""
    sd = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    out = {}
    for k, v in sd.items():
        out[k] = v.t().contiguous() if k.endswith(CONV1D_WEIGHTS) else v
    for k in list(sd):
        if k.startswith('transformer.') and k.endswith('.weight') and 'wte' not in k and 'wpe' not in k:
            bias_name = k[:-len('weight')] + 'bias'
            if bias_name not in out:
                # a Linear's weight is (out, in): its bias has out entries; a LayerNorm's has as many as its weight
                out[bias_name] = torch.zeros(sd[k].shape[0])
    return out


def to_hf(model):
    """A transformers GPT2LMHeadModel computing the same logits as model (a GPT)."""
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # the saving/loading bars of tiny files are noise
    hf_model = GPT2LMHeadModel(hf_config(model.config))
    target = hf_model.state_dict()
    weights = hf_state_dict(model)
    missing = [k for k in target if k not in weights and not k.endswith(('.attn.bias', '.attn.masked_bias'))]
    unexpected = [k for k in weights if k not in target]
    if missing or unexpected:
        raise RuntimeError(f"parameter names do not line up with transformers' GPT-2: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    with torch.no_grad():
        for k, v in weights.items():
            if target[k].shape != v.shape:
                raise RuntimeError(f"{k}: shape {tuple(v.shape)} vs transformers' {tuple(target[k].shape)}")
            target[k].copy_(v)
    return hf_model.eval()


def export(model, directory):
    """Write config.json and model.safetensors for model (a GPT) into directory."""
    hf_model = to_hf(model)
    os.makedirs(directory, exist_ok=True)
    hf_model.save_pretrained(directory, safe_serialization=True)
    return hf_model


@torch.no_grad()
def max_logit_difference(model, other, prompts, hf=True):
    """Largest |logits(other) - logits(model)| over every position of every prompt, and the largest |logit|."""
    worst, scale = 0.0, 0.0
    model.eval()
    for idx in prompts:
        expected, _ = model(idx, idx)  # with targets, GPT.forward returns every position's logits
        got = other(idx).logits if hf else other(idx, idx)[0]
        worst = max(worst, (got.float() - expected.float()).abs().max().item())
        scale = max(scale, expected.abs().max().item())
    return worst, scale


def main():
    ckpt = checkpoint.load(out_dir, checkpoint.sample_name(out_dir))
    model = checkpoint.model_from_checkpoint(ckpt, dropout=0.0).float().eval()
    del ckpt
    directory = output or os.path.join(out_dir, 'hf')
    cfg = model.config
    t0 = time.time()
    export(model, directory)
    print(f"wrote {os.path.join(directory, 'config.json')} and model.safetensors in {time.time() - t0:.1f}s: "
          f"GPT-2 with n_layer={cfg.n_layer}, n_head={cfg.n_head}, n_embd={cfg.n_embd}, n_positions={cfg.block_size}, "
          f"vocab_size={cfg.vocab_size}, activation_function='{HF_ACTIVATION[cfg.activation]}'"
          + ("" if cfg.bias else " (zero biases: the model was trained with bias=False)"))
    if verify:
        from transformers import GPT2LMHeadModel
        prompts = random_prompts(cfg.vocab_size, cfg.block_size, seed)
        loaded = GPT2LMHeadModel.from_pretrained(directory).eval()
        diff_hf, scale = max_logit_difference(model, loaded, prompts, hf=True)
        print(f"transformers GPT2LMHeadModel vs checkpoint logits: max abs diff {diff_hf:.3g} "
              f"(largest |logit| {scale:.3g})")
        back = GPT.from_pretrained(directory).eval()
        diff_back, _ = max_logit_difference(model, back, prompts, hf=False)
        print(f"GPT.from_pretrained round trip vs checkpoint logits: max abs diff {diff_back:.3g}")
        if not max(diff_hf, diff_back) <= tolerance:
            raise SystemExit(f"error: the exported model's logits differ by {max(diff_hf, diff_back):.3g}, more than "
                             f"tolerance {tolerance:g}; please report this with your torch and transformers versions")


if __name__ == '__main__':
    configurator.configure(globals())
    try:
        import safetensors  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise UserError(f"export_hf.py needs transformers and safetensors ({e}); pip install transformers safetensors")
    main()
