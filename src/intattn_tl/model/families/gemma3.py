"""Gemma-3 (text): sandwich norms and mixed attention.

    h = h + post_attention_layernorm(attn(input_layernorm(h)))
    h = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))

`hook_attn_out` / `hook_mlp_out` are after the post-norms, so z @ W_O.T != hook_attn_out: a desired
residual change R has to be mapped through the RMSNorm to a change of W k (`prenorm_target`), and a
change dW moves the residual by norm(Wk + k dW^T) - norm(Wk). Layers alternate sliding-window and full
attention (`config.layer_types`), with rotary embeddings per layer type; the scaled embedding lives in
`embed_tokens` itself; logits may be soft-capped (`final_logit_softcapping`).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from intattn_tl.model.families.llama import Llama


class Gemma3(Llama):
    name = "gemma3"
    model_type = "gemma3_text"
    architectures = ("Gemma3ForCausalLM",)
    PRE_MLP_NORM = "pre_feedforward_layernorm"
    POST_NORMS = {"w_o": "post_attention_layernorm", "w_out": "post_feedforward_layernorm"}

    def residual_change(self, kind, layer, key, dW):
        W, norm = self.weight(kind, layer), self.post_norm(kind, layer)
        out = key @ W.T
        return norm(out + key @ dW.T) - norm(out)

    def output_change(self, kind, layer, K, R):
        """Least squares through the norm (`prenorm_target`); the next layers' residual recomputation in
        MEMIT absorbs what the norm could not emit. Channels whose gain is 0 keep their value."""
        W = self.weight(kind, layer)
        with torch.no_grad():
            v = K.to(W) @ W.T
            return self.output_target(kind, layer, v, R) - v

    def output_target(self, kind, layer, v, R):
        norm = self.post_norm(kind, layer)
        return prenorm_target(norm, v, norm(v) + R.to(v))

    def output_emitter(self, kind, layer):
        """norm(v + dv) - norm(v): targets are optimised as a change of the pre-norm output (ROME's own v*,
        inside the post-norm), so whatever they ask for the module can emit through the norm. A residual
        target optimised freely is not emittable: on Gemma-3-270M it is as large as the residual (|delta|
        ~ |h| ~ 6600 at layer 7) while the norm's output is ~500-1600 and can only be turned."""
        norm = self.post_norm(kind, layer)
        return lambda v, dv: norm(v + dv) - norm(v)

    def rope(self, x, pos):
        return {kind: self.rotary(x, pos, kind) for kind in set(self.layer_types())}

    def unembed(self, h):
        logits = self.lm_head(h)
        cap = getattr(self.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


def norm_gain(norm_module: nn.Module, like: Tensor) -> Float[Tensor, "d"]:
    """g of an RMSNorm y = g * x / rms(x) (Gemma's 1 + weight included), read off a constant probe."""
    probe = torch.full((like.shape[-1],), 1e3, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        return norm_module(probe)  # rms(probe) = 1e3 (eps is negligible), so this is g


def prenorm_target(norm_module: nn.Module, current_prenorm_out: Float[Tensor, "... d"],
                   desired_postnorm_out: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    """The norm input whose output is closest (least squares) to a desired RMSNorm output (Gemma-3's post-norms).

    RMSNorm emits y = g * u with u = x / rms(x), so rms(u) = 1: its outputs are a fixed-size shell, not a
    space. We solve  min |g * u - y*|^2  s.t. mean(u^2) = 1:  u = g y* / (g^2 + mu), with mu from the
    constraint (bisection; the constraint is decreasing in mu above -min g^2). When y* can be emitted
    exactly (e.g. y* = the current output) mu = 0 and the current input comes back. Dividing y* by g
    instead would blow up channels with small gains and, through the rms, shrink every other channel
    (on Gemma-3 that made MEMIT's residual grow layer after layer). Channels with zero gain keep their
    current value; the input keeps the current rms (the norm ignores scale).
    """
    x, want = current_prenorm_out.double(), desired_postnorm_out.double()
    g = norm_gain(norm_module, x)
    live = g.abs() > 1e-6
    if not live.any():
        raise ValueError("post-norm gain is zero everywhere; the target cannot be mapped through the norm")
    d = x.shape[-1]
    eps = getattr(norm_module, "eps", getattr(norm_module, "variance_epsilon", 1e-6))
    rms = x.pow(2).mean(-1, keepdim=True).add(eps).sqrt()
    fixed = torch.where(live, 0.0, x / rms)  # dead channels: as they are
    g2 = torch.where(live, g * g, 1.0)
    num = torch.where(live, g * want, 0.0)

    def size(mu):  # mean(u^2) for this mu; decreasing in mu
        return ((num / (g2 + mu)).pow(2).sum(-1, keepdim=True) + fixed.pow(2).sum(-1, keepdim=True)) / d

    floor = -g2[live].min()
    lo = torch.full_like(rms, float(floor) * (1 - 1e-12))
    hi = torch.ones_like(rms)
    for _ in range(200):
        if not (size(hi) > 1).any():
            break
        hi = torch.where(size(hi) > 1, hi * 2, hi)
    for _ in range(200):
        mid = (lo + hi) / 2
        big = size(mid) > 1
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    u = num / (g2 + (lo + hi) / 2) + fixed
    return (rms * u).to(current_prenorm_out.dtype)
