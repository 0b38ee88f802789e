"""What a loaded model is: the bridge, the tokenizer, and per-layer views of the two edited matrices."""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field

import torch
from torch import nn

from intattn_tl.errors import ModelLoadError
from intattn_tl.model.devices import execution_device, named_stored


@dataclass
class ModelSpec:
    """Shapes plus per-layer views of the two edited matrices, in [d_out, d_in] layout, and the family adapter.

    `w_out[l]` is the MLP output projection ([d_model, d_mlp], e.g. `down_proj.weight`) and `w_o[l]` the
    attention output projection ([d_model, n_heads*d_head], e.g. `o_proj.weight`). They are views of the
    live parameters: `w.add_(delta)` edits the model. `family` (intattn_tl.families) knows everything else
    that differs between architectures: post-norms, how a block runs, attention layer types.
    """

    name: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    w_out: list[torch.Tensor] = field(repr=False)
    w_o: list[torch.Tensor] = field(repr=False)
    family: object = field(repr=False)  # intattn_tl.families.Llama or a subclass, bound to this model


@dataclass
class LoadedModel:
    name: str
    bridge: object  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: object
    spec: ModelSpec
    hf_model: nn.Module

    offload_dir: object = field(default=None, repr=False)  # a TemporaryDirectory kept alive with the model

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's execution device (a split model's layers run elsewhere too)."""

        return execution_device(self.spec.family.embed)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """`torch.bfloat16` or its name `"bfloat16"`; anything but a floating dtype is refused."""
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelLoadError(f"dtype must be one of {', '.join(DTYPES)} (or a floating torch.dtype), got {dtype!r}")
    return dtype


# config fields that name or date a checkpoint, or switch outputs on, without changing what it computes
CONFIG_NOISE = ("_name_or_path", "transformers_version", "_commit_hash", "output_attentions",
                "output_hidden_states", "return_dict", "use_cache")


def weights_fingerprint(model: LoadedModel) -> str:
    """sha256 over the config and every parameter's bytes: keys caches to the exact model they were computed
    from (the same weights under another rope base, norm eps or attention window compute other keys)."""

    h = hashlib.sha256(model.name.encode())
    config = {k: v for k, v in model.hf_model.config.to_dict().items() if k not in CONFIG_NOISE}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for pname, p in named_stored(model.hf_model):  # offloaded weights too (their parameters are meta placeholders)
        h.update(pname.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_kwarg(fn) -> str:
    """The keyword an HF attention forward / mask builder takes its KV cache under.

    transformers >= 5.2x renamed `past_key_values` to `cache`; earlier 5.x releases only know the old name
    and silently swallow the new one in **kwargs (the cache is then ignored), so ask the signature.
    """

    params = inspect.signature(getattr(fn, "forward", fn)).parameters
    return "cache" if "cache" in params else "past_key_values"
