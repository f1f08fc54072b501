"""The optimizers train.py and bench.py build (nanoGPT's AdamW, or Muon with AdamW); saved states made fit for them."""
import torch

def build(name, model, weight_decay, learning_rate, betas, device_type):
    """'adamw', or 'muon': Muon (orthogonalized momentum) for the blocks' 2-D matrices, AdamW for the rest."""
    if name != 'muon':
        return model.configure_optimizers(weight_decay, learning_rate, betas, device_type)
    matrices = [p for p in model.transformer.h.parameters() if p.requires_grad and p.dim() == 2]
    in_muon = {id(p) for p in matrices}
    adamw = model.configure_optimizers(weight_decay, learning_rate, betas, device_type,
                                       params=[p for p in model.parameters() if id(p) not in in_muon])
    print(f"Muon for the blocks' {len(matrices)} matrices, {sum(p.numel() for p in matrices):,} parameters")
    if device_type == 'cpu' and not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        torch.optim._muon._zeropower_via_newtonschulz = newton_schulz_float32
    # 'match_rms_adamw' scales Muon's updates to AdamW's size, so the same learning rate serves both
    return MuonWithAdamW(torch.optim.Muon(matrices, lr=learning_rate, weight_decay=weight_decay,
                                          adjust_lr_fn='match_rms_adamw'), adamw)

def newton_schulz_float32(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's Newton-Schulz orthogonalization in float32, for CPUs slow at bfloat16 matrix products."""
    a, b, c = ns_coefficients
    tall = grad.size(0) > grad.size(1)
    x = grad.float().T if tall else grad.float()
    x = x / x.norm().clamp(min=eps)  # a spectral norm of at most 1
    for _ in range(ns_steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x

class MuonWithAdamW:
    """Muon and AdamW over two sets of parameters as one optimizer (to the loop, the GradScaler, the checkpoints)."""
    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self):  # read anew: load_state_dict gives each optimizer new group dicts
        return self.muon.param_groups + self.adamw.param_groups

    def step(self):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self):
        return {'muon': self.muon.state_dict(), 'adamw': self.adamw.state_dict()}

    def load_state_dict(self, state):
        self.muon.load_state_dict(state['muon'])
        self.adamw.load_state_dict(state['adamw'])

def as_built(saved, own):
    """saved (a state_dict) with the implementation flags (fused, ...) of own, the optimizer's built here: nanoGPT
    saves fused=False on CPUs, and unfused AdamW refuses the GradScaler's arguments. None if saved is the other's."""
    if set(saved) != set(own):
        return None
    if 'param_groups' not in own:  # Muon with AdamW: each in its entry
        return {k: as_built(saved[k], own[k]) for k in own}
    groups = [dict(s, **{k: g[k] for k in ('fused', 'foreach', 'capturable', 'differentiable') if k in g})
              for s, g in zip(saved['param_groups'], own['param_groups'])]
    return {**saved, 'param_groups': groups}
