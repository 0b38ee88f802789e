"""Model families: what differs between architectures lives here, one file per family (as HF transformers'
per-architecture modelling files), so tracing, targets, keys and the editing methods contain no family checks.

An adapter (`llama.Llama` and its subclasses) is bound to one loaded model (`model.spec.family`) and says
where W_out / W_O sit ([d_out, d_in] views), which post-norms sit between a module and the residual stream
and what that does to an edit (`residual_change`, `output_change`, `output_target`), how one decoder block
runs from its HF parts (`attn_out`, `mlp_out`, `block`), its attention layer types, rotary embeddings and
unembedding. `family_for` picks the adapter by the HF config's `model_type`; any other decoder-only model
gets `generic.Generic`, which finds W_out / W_O through the bridge's hooks and runs nothing itself
(`runs_blocks = False`: tracing and targets then use hooked bridge forwards). Encoder-decoders are refused.
"""

from __future__ import annotations

from torch import nn

from intattn_tl.errors import ModelLoadError
from intattn_tl.model.families.gemma3 import Gemma3
from intattn_tl.model.families.generic import Generic
from intattn_tl.model.families.llama import HOOKS, Llama
from intattn_tl.model.families.mistral import Mistral
from intattn_tl.model.families.qwen2 import Qwen2

FAMILIES: dict[str, type[Llama]] = {cls.model_type: cls for cls in (Llama, Qwen2, Mistral, Gemma3)}


def supported() -> str:
    return ", ".join(f"{cls.name} ({'/'.join(cls.architectures)}, model_type {key!r})" for key, cls in FAMILIES.items())


def family_class(config, generic: bool = False) -> type[Llama] | type[Generic]:
    """The adapter class for an HF config: a fast adapter where one exists (unless `generic`), else Generic;
    an encoder-decoder is refused with a ModelLoadError naming the architecture."""
    model_type = getattr(config, "model_type", None)
    arch = ", ".join(getattr(config, "architectures", None) or []) or type(config).__name__
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(
            f"{arch} (model_type {model_type!r}) is an encoder-decoder: intattn-tl traces and edits decoder-only "
            f"language models (fast adapters: {supported()}; any other decoder the TransformerLens bridge boots "
            "goes through the generic, hook-based adapter)."
        )
    if generic or model_type not in FAMILIES:
        return Generic
    return FAMILIES[model_type]


def family_for(hf_model: nn.Module, bridge=None, generic: bool = False) -> Llama | Generic:
    """The adapter bound to `hf_model` (refuses a model whose parts are not where its family keeps them).
    The generic adapter reads the booted `bridge`'s component mapping, so it needs one."""
    cls = family_class(hf_model.config, generic)
    if cls is Generic:
        if bridge is None:
            raise ModelLoadError("the generic adapter needs the booted TransformerBridge")
        return Generic(hf_model, bridge)
    return cls(hf_model)


__all__ = ["FAMILIES", "HOOKS", "Gemma3", "Generic", "Llama", "Mistral", "Qwen2", "family_class", "family_for",
           "supported"]
