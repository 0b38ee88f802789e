"""Llama (SmolLM2): the reference decoder every other family adapter starts from.

    h = h + attn_out(h),   attn_out(h) = o_proj(attention(input_layernorm(h)))
    h = h + mlp_out(h),    mlp_out(h)  = down_proj(act(gate_proj(x)) * up_proj(x)),  x = post_attention_layernorm(h)

No norm sits between o_proj / down_proj and the residual stream, so a desired residual change *is* the
module-output change, and `blocks.l.attn.hook_z @ W_O.T == hook_attn_out`, `mlp.hook_post @ W_out.T ==
hook_mlp_out`. Every layer attends causally over all earlier positions (unless the config's `layer_types`
says otherwise); rotary embeddings are the same for every layer.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor, nn

from intattn_tl.errors import ModelLoadError
from intattn_tl.model.devices import execution_device, stored, to_device
from intattn_tl.model.spec import cache_kwarg

# The hook aliases the project uses (keys, tracing, FT); `check_hooks` verifies them on the booted bridge.
HOOKS = ("hook_embed", "blocks.{l}.hook_resid_pre", "blocks.{l}.hook_resid_mid", "blocks.{l}.hook_resid_post",
         "blocks.{l}.hook_attn_out", "blocks.{l}.hook_mlp_out", "blocks.{l}.attn.hook_z", "blocks.{l}.mlp.hook_post")


def raw(module: nn.Module) -> nn.Module:
    """The HF module under a TransformerBridge wrapper (the bridge replaces HF modules in place)."""
    return getattr(module, "original_component", None) or module


def part(root: nn.Module, path: str) -> nn.Module | None:
    """The module at dotted `path` under `root`, unwrapping bridge wrappers at every step; None if absent."""
    obj = raw(root)
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
        obj = raw(obj)
    return obj


class Llama:
    name = "llama"
    model_type = "llama"
    architectures: tuple[str, ...] = ("LlamaForCausalLM",)
    # where things sit: the decoder under the CausalLM, and inside each decoder layer
    DECODER = "model"
    DECODER_PARTS = ("embed_tokens", "layers", "norm", "rotary_emb")
    W_OUT, W_O = "mlp.down_proj", "self_attn.o_proj"
    ATTN, MLP = "self_attn", "mlp"
    PRE_ATTN_NORM, PRE_MLP_NORM = "input_layernorm", "post_attention_layernorm"
    POST_NORMS: dict[str, str] = {}  # weight kind -> the norm between that module and the residual stream
    runs_blocks = True  # runs decoder blocks from their HF parts: the fast tracing and target paths
    parallel = False  # attention and MLP read the same residual (families.generic)
    hooks = HOOKS
    max_tokens = None  # rotary positions: no hard context length for the statistics' documents

    def __init__(self, hf_model: nn.Module):
        self.hf_model = hf_model
        self.config = hf_model.config
        missing = self.missing_parts(hf_model)
        if missing:
            raise ModelLoadError(
                f"{type(hf_model).__name__} (model_type {self.model_type!r}) lacks what the {self.name} adapter "
                f"expects: {', '.join(missing)}; its modules are not where this family keeps them"
            )
        self.decoder = part(hf_model, self.DECODER)
        self.layers: list[nn.Module] = [raw(b) for b in self.decoder.layers]
        self.n_layers = len(self.layers)
        self.embed = raw(self.decoder.embed_tokens)
        self.final_norm = raw(self.decoder.norm)
        self.rotary = raw(self.decoder.rotary_emb)
        self.lm_head = raw(hf_model.lm_head)

    @classmethod
    def missing_parts(cls, hf_model: nn.Module) -> list[str]:
        """Module paths this family needs that `hf_model` lacks (checked on layer 0; projections must be Linear)."""
        decoder = part(hf_model, cls.DECODER)
        if decoder is None:
            return [cls.DECODER]
        missing = [f"{cls.DECODER}.{p}" for p in cls.DECODER_PARTS if part(decoder, p) is None]
        if part(hf_model, "lm_head") is None:
            missing.append("lm_head")
        if f"{cls.DECODER}.layers" in missing or len(decoder.layers) == 0:
            return missing
        paths = [cls.W_OUT, cls.W_O, cls.ATTN, cls.MLP, cls.PRE_ATTN_NORM, cls.PRE_MLP_NORM, *cls.POST_NORMS.values()]
        block = decoder.layers[0]
        missing += [f"{cls.DECODER}.layers.N.{p}" for p in paths if part(block, p) is None]
        missing += [f"{cls.DECODER}.layers.N.{p} as nn.Linear" for p in (cls.W_OUT, cls.W_O)
                    if part(block, p) is not None and not isinstance(part(block, p), nn.Linear)]
        return missing

    def check_hooks(self, bridge) -> None:
        """Refuse a bridge that lacks a hook alias the project uses (it would fail mid-run otherwise)."""
        names = set(bridge.hook_dict)
        missing = [h.format(l=0) for h in HOOKS if h.format(l=0) not in names]
        if missing:
            raise ModelLoadError(f"the TransformerBridge for this {self.name} model lacks hooks {missing}")

    # ------------------------------------------------------------------------- the edited matrices

    def module(self, kind: str, layer: int) -> nn.Linear:
        """The projection edited as `kind` ("w_out": MLP output, "w_o": attention output) at `layer`."""
        return part(self.layers[layer], {"w_out": self.W_OUT, "w_o": self.W_O}[kind])

    def weight(self, kind: str, layer: int) -> Float[Tensor, "d_out d_in"]:
        """A live view in [d_out, d_in] layout (nn.Linear's own): `add_` on it edits the model (the stored
        tensor of an offloaded layer, not its meta placeholder: devices.stored)."""
        return stored(self.module(kind, layer))

    def bias(self, kind: str, layer: int) -> Tensor | None:
        """The projection's bias (added whatever the weight; None for Llama-style models)."""
        return self.module(kind, layer).bias

    def post_norm(self, kind: str, layer: int) -> nn.Module | None:
        """The norm between module `kind` and the residual stream (None: the output goes straight in)."""
        path = self.POST_NORMS.get(kind)
        return part(self.layers[layer], path) if path else None

    def residual_change(self, kind: str, layer: int, key: Float[Tensor, "... d_in"],
                        dW: Float[Tensor, "d_out d_in"]) -> Float[Tensor, "... d_out"]:
        """How the residual stream moves at `key` when weight `kind` at `layer` becomes W + dW."""
        return key @ dW.T

    def output_change(self, kind: str, layer: int, K: Float[Tensor, "n d_in"],
                      R: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
        """The change of W k (k = rows of K) that moves the module's residual contribution by R."""
        return R

    def output_target(self, kind: str, layer: int, v: Float[Tensor, "... d"],
                      R: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """The module output v* whose residual contribution is the current one (of output v) plus R."""
        return v + R.to(v)

    def output_emitter(self, kind: str, layer: int) -> Callable[[Tensor, Tensor], Tensor] | None:
        """(v, dv) -> the residual change when module `kind`'s output v becomes v + dv (differentiable), for
        families with a norm in between; None: the output enters the residual as it is, so a residual
        target *is* the output target and targets are optimised in the residual (targets.py)."""
        return None

    # ------------------------------------------------------------------------- running the stack

    def layer_types(self) -> list[str]:
        """"full_attention" or "sliding_attention" per layer."""
        return list(getattr(self.config, "layer_types", None) or ["full_attention"] * self.n_layers)

    @property
    def sliding_window(self) -> int | None:
        return getattr(self.config, "sliding_window", None)

    def masks(self, allowed: torch.BoolTensor, distance: Tensor, dtype: torch.dtype) -> dict[str, Tensor]:
        """Additive attention masks per layer type, from the causally allowed (query, key) pairs and q - k."""
        out = {}
        for kind in set(self.layer_types()):
            ok = allowed & (distance < self.sliding_window) if kind == "sliding_attention" else allowed
            out[kind] = torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill(~ok, torch.finfo(dtype).min)
        return out

    def rope(self, x: Tensor, pos: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Rotary (cos, sin) per layer type for positions `pos` ([b, t])."""
        cos_sin = self.rotary(x, pos)
        return {kind: cos_sin for kind in set(self.layer_types())}

    def at(self, layer: int, *xs):
        """`xs` on the device `layer` runs on. We call a layer's parts one by one, below the hook that moves
        a split model's activations into the layer; outputs stay there (devices.py)."""
        moved = to_device(xs, execution_device(self.layers[layer]))
        return moved[0] if len(xs) == 1 else moved

    def attn_out(self, layer: int, h: Float[Tensor, "b t d"], rope, mask: Tensor, cache,
                 pos: Tensor | None = None) -> Float[Tensor, "b t d"]:
        """What the attention sublayer adds to the residual (= `hook_attn_out`), called with our mask and cache."""
        blk = self.layers[layer]
        attn = part(blk, self.ATTN)
        h, rope, mask, pos = self.at(layer, h, rope, mask, pos)
        kw = {} if pos is None else {"position_ids": pos}
        a = attn(hidden_states=part(blk, self.PRE_ATTN_NORM)(h), position_embeddings=rope, attention_mask=mask,
                 **kw, **{cache_kwarg(attn): cache})[0]
        norm = self.post_norm("w_o", layer)
        return norm(a) if norm is not None else a

    def mlp_out(self, layer: int, mid: Float[Tensor, "b t d"]) -> Float[Tensor, "b t d"]:
        """What the MLP sublayer adds to the residual (= `hook_mlp_out`) given the post-attention residual."""
        blk = self.layers[layer]
        m = part(blk, self.MLP)(part(blk, self.PRE_MLP_NORM)(self.at(layer, mid)))
        norm = self.post_norm("w_out", layer)
        return norm(m) if norm is not None else m

    def block(self, layer: int, h: Float[Tensor, "b t d"], rope, mask: Tensor, cache, pos: Tensor | None = None,
              on_attn: Callable[[Tensor], Tensor] | None = None, on_mlp: Callable[[Tensor], Tensor] | None = None):
        """One decoder layer: (output, attn out, mlp out); `on_attn` / `on_mlp` may replace a sublayer's output."""
        h = self.at(layer, h)  # everything below runs on the layer's device
        a = self.attn_out(layer, h, rope, mask, cache, pos)
        a = on_attn(a) if on_attn else a
        mid = h + a
        m = self.mlp_out(layer, mid)
        m = on_mlp(m) if on_mlp else m
        return mid + m, a, m

    def unembed(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... vocab"]:
        """Logits from final-normed hidden states."""
        return self.lm_head(h)

    def describe(self) -> str:
        """One line of what differs: post-norms, attention biases, tied head, sliding layers."""
        tied = getattr(self.config, "tie_word_embeddings", False)
        q = part(self.layers[0], f"{self.ATTN}.q_proj")
        kinds = self.layer_types()
        window = f" window={self.sliding_window}" if "sliding_attention" in kinds else ""
        return (f"family={self.name} post_norms={sorted(self.POST_NORMS) or 'none'} "
                f"qkv_bias={getattr(q, 'bias', None) is not None} tied_head={tied} "
                f"sliding_layers={kinds.count('sliding_attention')}/{len(kinds)}{window}")
