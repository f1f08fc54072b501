"""The GPT-2 language model in one file: pre-LayerNorm blocks of causal self-attention and MLP, an output layer tied
to the token embedding, and generation with a KV cache. Parameter names are OpenAI's GPT-2's (through transformers)
and nanoGPT's, so weights move freely between them."""
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.utils.checkpoint
from torch.nn import functional as F

# transformers' names for GPT-2's activation, mapped to ours
HF_ACTIVATIONS = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_fast': 'gelu_tanh'}
# transformers keeps GPT-2's original Conv1D layers, whose weights are the transpose of nn.Linear's
CONV1D_WEIGHTS = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')

class LayerNorm(nn.Module):
    """LayerNorm whose bias can be switched off (nn.LayerNorm cannot do that in all PyTorch versions)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)

class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache=None, layer=0):
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.append(layer, k, v)  # (B, nh, past + T, hs)
        # queries at positions past..past+T-1 see every key up to their own position: causal when nothing is
        # cached, an offset mask for several new positions, and no mask at all for a single one
        mask = None
        if past > 0 and T > 1:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        # is_causal a plain bool: compiled for any length (sample.py), past is symbolic, which SDPA would not take
        is_causal = True if past == 0 else False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=is_causal)  # flash attention where the device has it
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))

class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate='tanh' if config.activation == 'gelu_tanh' else 'none')
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), kv_cache, layer)
        return x + self.mlp(self.ln_2(x))

@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, like GPT-2; False is a bit better and faster
    # 'gelu' is the exact GELU nanoGPT trains with; OpenAI's GPT-2 weights were trained with
    # the tanh approximation, so from_pretrained sets 'gelu_tanh' to reproduce their logits.
    activation: str = 'gelu'

class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the output projection is the token embedding, as in GPT-2
        self.transformer.wte.weight = self.lm_head.weight
        # True: keep only each block's input for the backward pass and run the block again there,
        # trading a third more compute for most of the activations' memory (see train.py)
        self.activation_checkpointing = False

        self.apply(self._init_weights)
        # GPT-2 scales the init of projections that write into the residual stream by
        # 1/sqrt(2 * n_layer), so the stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_num_params(self, non_embedding=True):
        """Parameter count; non_embedding leaves out the position embedding (the token one stays: it is the output)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def forward(self, idx, targets=None, kv_cache=None, reduction='mean'):
        """Logits (and the mean cross-entropy when targets are given). Without targets only
        the last position's logits are computed, which is all that sampling needs."""
        B, T = idx.size()
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {start + T}: block_size is only "
                             f"{self.config.block_size}; crop the input to its last {self.config.block_size} tokens")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # token embeddings (B, T, n_embd)
        pos_emb = self.transformer.wpe(pos)  # position embeddings (T, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        for layer, block in enumerate(self.transformer.h):
            if self.activation_checkpointing and torch.is_grad_enabled():
                # the recomputation draws the same dropout masks: checkpoint restores the random state
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, kv_cache, layer)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)  # (B, T, vocab_size)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                                   reduction=reduction)  # 'none': each target's, for bits per byte
            return logits, loss
        return self.lm_head(x[:, -1:, :]), None  # the slice keeps the time dimension

    def crop_block_size(self, block_size):
        """Shrink the context window, e.g. to finetune GPT-2 (1024) at a smaller block size."""
        assert 0 < block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, name, override_args=None):
        """GPT-2 weights via transformers: a hub name (gpt2, gpt2-medium, -large, -xl) or a transformers folder."""
        override_args = override_args or {}
        assert all(k == 'dropout' for k in override_args), "only dropout can be overridden"
        from transformers import GPT2LMHeadModel
        print(f"loading weights from pretrained gpt: {name}")
        hf_model = GPT2LMHeadModel.from_pretrained(name)
        hf_config = hf_model.config
        if hf_config.activation_function not in HF_ACTIVATIONS:
            raise ValueError(f"{name} uses activation '{hf_config.activation_function}', which this GPT lacks")
        config = GPTConfig(block_size=hf_config.n_positions, vocab_size=hf_config.vocab_size,
                           n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
                           bias=True, activation=HF_ACTIVATIONS[hf_config.activation_function],
                           dropout=override_args.get('dropout', 0.0))
        model = GPT(config)
        sd = model.state_dict()
        sd_hf = {k: v for k, v in hf_model.state_dict().items() if not k.endswith(('.attn.bias', '.attn.masked_bias'))}
        if set(sd_hf) != set(sd):
            raise ValueError(f"{name}: parameter names differ from GPT-2's: "
                             f"{sorted(set(sd_hf) ^ set(sd))[:5]}")
        with torch.no_grad():
            for k, v in sd_hf.items():
                v = v.t() if k.endswith(CONV1D_WEIGHTS) else v
                assert v.shape == sd[k].shape, f"{k}: {tuple(v.shape)} vs {tuple(sd[k].shape)}"
                sd[k].copy_(v)
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, params=None):
        """AdamW with weight decay on matrices and embeddings only (not on biases and norm gains); params: a
        subset of the model's parameters (default: all of them)."""
        params = [p for p in (self.parameters() if params is None else params) if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        print(f"num decayed parameter tensors: {len(decay)}, with {sum(p.numel() for p in decay):,} parameters")
        print(f"num non-decayed parameter tensors: {len(no_decay)}, "
              f"with {sum(p.numel() for p in no_decay):,} parameters")
        groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
        # the fused kernel does the whole update in a few launches; it exists for CUDA and CPU
        use_fused = 'fused' in inspect.signature(torch.optim.AdamW).parameters and device_type in ('cuda', 'cpu')
        print(f"using fused AdamW: {use_fused}")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({'fused': True} if use_fused else {}))

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops):
        """Model FLOPs utilization (PaLM, appendix B): achieved FLOP/s over peak_flops; None where that is unknown."""
        if peak_flops is None:
            return None
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * self.get_num_params() + 12 * L * H * Q * T
        return flops_per_token * T * fwdbwd_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, *, top_p=1.0, use_cache=True, generators=None):
        """Continue each sequence in idx (B, T) by max_new_tokens sampled tokens; returns (B, T + new)."""
        return torch.cat([idx, *self.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p=top_p,
                                                     use_cache=use_cache, generators=generators)], dim=1)

    @torch.no_grad()
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, *, top_p=1.0, use_cache=True,
                        generators=None):
        """Yield the next token of every sequence, (B, 1), one step at a time (for streaming). generators, one
        torch.Generator per row, make a row sampled in a batch equal to the same row sampled alone."""
        kv_cache = KVCache(self.config.n_layer, self.config.block_size) if use_cache else None
        for _ in range(max_new_tokens):
            if kv_cache is not None and idx.size(1) <= self.config.block_size:
                logits, _ = self(idx[:, kv_cache.length:], kv_cache=kv_cache)  # only the positions not cached yet
            else:
                # the context is the last block_size tokens: once the sequence is longer, every position shifts
                # at each step, cached keys no longer apply, and the whole cropped window runs again
                logits, _ = self(idx[:, -self.config.block_size:])
            next_token = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generators)
            idx = torch.cat((idx, next_token), dim=1)
            yield next_token

class KVCache:
    """The keys and values of the positions already seen, per layer, so that each generation step feeds the model
    only its new positions. Storage for max_length positions is allocated at the first append and written in place."""

    def __init__(self, n_layer, max_length):
        self.keys = [None] * n_layer
        self.values = [None] * n_layer
        self.max_length = max_length
        self.length = 0  # positions stored in every layer

    def append(self, layer, k, v):
        """Store this step's k, v (B, n_head, T, head_size); return all keys and values so far."""
        if self.keys[layer] is None:
            B, H, _, D = k.shape
            self.keys[layer] = k.new_empty(B, H, self.max_length, D)
            self.values[layer] = v.new_empty(B, H, self.max_length, D)
        end = self.length + k.size(2)
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        if layer == len(self.keys) - 1:  # every layer reads length as its offset: it moves on after the last one
            self.length = end
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

def sample_next_token(logits, temperature=1.0, top_k=None, top_p=1.0, generators=None):
    """One token id per row of logits (B, vocab_size), (B, 1), drawn from softmax(logits / temperature) restricted
    to the top_k largest logits (and every token tied with the k-th), then to the smallest set of most likely tokens
    whose probabilities add up to top_p."""
    # the largest logit is made 0 before the division, so that no temperature overflows the logits into NaN: a tiny
    # one is greedy, ties kept (below float32's smallest normal number, which would round to 0, it is that number)
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / max(temperature, torch.finfo(torch.float32).tiny)
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float('-inf'))
    probs = F.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # a token stays while the tokens more likely than it hold less than top_p (the first always does)
        sorted_probs[sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)  # multinomial renormalises
    if generators is None:
        return torch.multinomial(probs, num_samples=1)
    return torch.stack([torch.multinomial(p, num_samples=1, generator=g) for p, g in zip(probs, generators)])
