"""Model families: what differs between architectures lives here, one file per family (as HF transformers'
per-architecture modelling files), so tracing, targets, keys and the editing methods contain no family checks.

An adapter (`llama.Llama` and its subclasses) is bound to one loaded model (`model.spec.family`) and says
where W_out / W_O sit ([d_out, d_in] views), which post-norms sit between a module and the residual stream
and what that does to an edit (`residual_change`, `output_change`, `output_target`), how one decoder block
runs from its HF parts (`attn_out`, `mlp_out`, `block`), its attention layer types, rotary embeddings and
unembedding. `family_for` picks the adapter by the HF config's `model_type`; anything else is refused.
"""

from __future__ import annotations

from torch import nn

from intattn_tl.errors import ModelLoadError
from intattn_tl.model.families.gemma3 import Gemma3
from intattn_tl.model.families.llama import HOOKS, Llama
from intattn_tl.model.families.mistral import Mistral
from intattn_tl.model.families.qwen2 import Qwen2

FAMILIES: dict[str, type[Llama]] = {cls.model_type: cls for cls in (Llama, Qwen2, Mistral, Gemma3)}


def supported() -> str:
    return ", ".join(f"{cls.name} ({'/'.join(cls.architectures)}, model_type {key!r})" for key, cls in FAMILIES.items())


def family_class(config) -> type[Llama]:
    """The adapter class for an HF config, or a ModelLoadError naming the architecture and the supported ones."""
    model_type = getattr(config, "model_type", None)
    arch = ", ".join(getattr(config, "architectures", None) or []) or type(config).__name__
    if model_type not in FAMILIES:
        raise ModelLoadError(
            f"intattn-tl has no adapter for architecture {arch} (model_type {model_type!r}): it does not know where "
            f"this family's W_out / W_O and post-norms sit, how a residual change maps onto them, or how one of its "
            f"blocks runs, so it can neither trace nor edit it. Supported families: {supported()}. "
            "A new family is one file in src/intattn_tl/families/ (see llama.py)."
        )
    return FAMILIES[model_type]


def family_for(hf_model: nn.Module) -> Llama:
    """The adapter bound to `hf_model` (refuses a model whose parts are not where its family keeps them)."""
    return family_class(hf_model.config)(hf_model)


__all__ = ["FAMILIES", "HOOKS", "Gemma3", "Llama", "Mistral", "Qwen2", "family_class", "family_for", "supported"]
