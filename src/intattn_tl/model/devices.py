"""Models split over several devices (accelerate's `device_map`): where a module runs, where its weights live.

`load_model(..., device_map=...)` dispatches the HF model with accelerate: each decoder layer (and the
embedding, final norm, head) gets a hook that moves its inputs onto its *execution device*; in an
offloaded layer ("disk", or "cpu" beside a GPU) every module that owns parameters gets a hook that swaps
its meta placeholders for the real weights around each call. Two rules follow, and this file is where
the code keeps them:

- activations are computed where their layer runs (`execution_device`). Our partial forwards call a
  layer's attention / MLP below the layer's hook, so they move the inputs themselves (`to_device`, in
  `families.Llama.at`), and code that combines tensors of different layers brings one operand to the
  other's device; nothing assumes one `model.device` (that is where inputs go: the embedding's device);
- the edited matrices are the *stored* tensors (`stored`): the parameter itself when it is resident, the
  offload map's tensor when it is offloaded (a meta placeholder has no data; adding to it does nothing).
  An offloaded weight that is read from disk is copied into the offload map's RAM dict on first use, so
  an edit persists and a rollback restores it bit-exactly.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from intattn_tl.errors import ModelLoadError


def _hook(module: nn.Module):
    return getattr(module, "_hf_hook", None)


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its accelerate hook's execution device, else its first parameter's device."""
    hook = _hook(module)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def to_device(x: Any, device: torch.device) -> Any:
    """`x` (a tensor, or tuples / lists / dicts of them, None kept) on `device`; no copy when it is there."""
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def _offload_map(module: nn.Module, name: str):
    """(loader, key) of an offloaded tensor `name` of `module`: accelerate's OffloadedWeightsLoader and its key."""
    hook = _hook(module)
    if hook is None or not getattr(hook, "offload", False) or getattr(hook, "weights_map", None) is None:
        return None
    wm, prefix = hook.weights_map, ""
    while hasattr(wm, "prefix") and hasattr(wm, "dataset"):  # PrefixedDataset, possibly nested
        prefix, wm = wm.prefix + prefix, wm.dataset
    return wm, prefix + name


def stored(module: nn.Module, name: str = "weight") -> Tensor:
    """The tensor that holds parameter `name` of `module`: editing it in place edits the model."""
    found = _offload_map(module, name)
    if found is None:
        return getattr(module, name).data
    loader, key = found
    if key not in loader.state_dict:  # read from disk on every call: keep one RAM copy that edits can change
        loader.state_dict[key] = loader[key].clone()
    return loader.state_dict[key]


def named_stored(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(name, stored tensor) of every parameter, offloaded ones included (for fingerprints and checks)."""
    seen = set()  # tied parameters once, in named_parameters()' order: unsplit models keep their fingerprints
    for mname, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            found = _offload_map(module, pname)
            if found is None:
                yield (f"{mname}.{pname}" if mname else pname), getattr(module, pname).data
            else:
                loader, key = found
                yield (f"{mname}.{pname}" if mname else pname), loader[key]


def dispatch(model: nn.Module, device_map: str | dict, max_memory: dict | None, offload_folder: str) -> nn.Module:
    """Dispatch an in-memory HF model with accelerate; a string map is accelerate's strategy of that name
    within `max_memory`, as `from_pretrained(device_map=...)` does it ("sequential" = "auto" on one GPU)."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, str):
        no_split = getattr(model, "_no_split_modules", None)
        if device_map != "sequential":
            max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                             low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
        if set(device_map) == {""}:
            raise ModelLoadError(f"max_memory={max_memory} holds not even the embedding: the whole model would go to "
                                 f"{device_map['']!r}; raise it")
    model.hf_device_map = dict(device_map)
    return dispatch_model(model, device_map=dict(device_map), offload_dir=offload_folder, force_hooks=True)


def describe(hf_model: nn.Module) -> str:
    """One line: how many modules sit on each device of the model's map ("single device" without one)."""
    dm = getattr(hf_model, "hf_device_map", None)
    if not dm:
        return f"single device ({execution_device(hf_model)})"
    counts: dict[str, int] = {}
    for dev in dm.values():
        counts[str(dev)] = counts.get(str(dev), 0) + 1
    return "device_map: " + ", ".join(f"{dev} x{n}" for dev, n in counts.items())
