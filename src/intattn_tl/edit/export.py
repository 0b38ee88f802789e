"""The edited model out of the toolkit: a Hugging Face checkpoint that plain `transformers` loads.

`export_model(model, folder, card)` writes the model as it is now (edits applied) with `save_pretrained`
(safetensors, the config, the dtype it was loaded in) and its tokenizer, plus a model card (README.md) and
`intattn_edits.json` recording what was edited: the method, its settings, the edit requests, the weight
fingerprints before and after, and the code version. The folder appears whole or not at all: everything is
written into a temporary folder beside it, then renamed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers import AutoModelForCausalLM

from intattn_tl.core.settings import code_version
from intattn_tl.edit.result import EditResult
from intattn_tl.edit.transaction import EditError
from intattn_tl.model.spec import LoadedModel

CARD_FILE = "intattn_edits.json"


class ExportError(EditError):
    """The folder cannot be written, or the model cannot be exported as it is loaded."""


def edit_card(result: EditResult) -> dict:
    """What an export records about one edit (the same facts `EditResult.save` keeps, plus the requests)."""
    before, after = result.fingerprints()
    return {
        "method": result.method,
        "hparams": json.loads(json.dumps(dataclasses.asdict(result.hparams), default=str))
        if dataclasses.is_dataclass(result.hparams) else None,
        "requests": [{"id": r.id, "prompt": r.prompt, "subject": r.subject, "target_new": r.target_new,
                      "ground_truth": list(r.ground_truth)} for r in result.records],
        "weights_before": before, "weights_after": after,
    }


def card_from_saved(meta: dict) -> dict:
    """The card entry of an edit file's `meta` (EditResult.save): its records are known by id only."""
    return {"method": meta.get("method"), "hparams": meta.get("hparams"), "settings": meta.get("settings"),
            "code": meta.get("code"), "requests": [{"id": i} for i in meta.get("record_ids", [])],
            "weights_before": meta.get("before", {}), "weights_after": meta.get("after", {})}


def _card_text(model: LoadedModel, edits: list[dict], code: dict) -> str:
    lines = [f"# {model.name}, edited with intattn-tl", "",
             f"Base model: `{model.name}`. Exported by intattn-tl {code.get('package')} "
             f"(commit {code.get('git') or 'unknown'}). Load it with "
             "`transformers.AutoModelForCausalLM.from_pretrained(<this folder>)`; no intattn-tl needed.", ""]
    for i, e in enumerate(edits, 1):
        lines += [f"## Edit {i}: {e['method']}, {len(e['requests'])} request(s)", "",
                  "| prompt | subject | new target | was |", "|---|---|---|---|"]
        lines += [f"| {r.get('prompt', r['id'])} | {r.get('subject', '')} | {r.get('target_new', '')} | "
                  f"{', '.join(r.get('ground_truth', []))} |" for r in e["requests"]]
        lines += ["", f"Edited weights: {', '.join(sorted(e['weights_after']))}. Settings and fingerprints: "
                  f"`{CARD_FILE}`.", ""]
    if not edits:
        lines += ["No edit is recorded: the weights are the base model's.", ""]
    return "\n".join(lines)


def _hf_name(name: str) -> str:
    """A parameter's name in the plain HF model: the bridge wraps each module it maps, so its parameters also
    appear under `<module>._original_component.<...>` and under the bridge's own aliases."""
    return name.replace("._original_component", "").replace("_original_component.", "")


def plain_copy(model: LoadedModel):
    """A plain transformers model with the current (edited) weights of `model`: the bridge rewires the HF
    model's modules in place, so that one cannot be saved under its own names any more."""
    hf = model.hf_model
    fresh = AutoModelForCausalLM.from_config(hf.config, dtype=hf.dtype)
    want = fresh.state_dict()
    found = {}
    for name, tensor in [*hf.named_parameters(remove_duplicate=False), *hf.named_buffers(remove_duplicate=False)]:
        key = _hf_name(name)
        if key in want and key not in found:
            found[key] = tensor.detach()
    missing = [k for k in want if k not in found and not (k == "lm_head.weight" and hf.config.tie_word_embeddings)]
    if missing:
        raise ExportError(f"cannot find {len(missing)} weight(s) of {model.name} to export, e.g. {missing[:3]}")
    fresh.load_state_dict(found, strict=False)
    fresh.tie_weights()
    return fresh


def export_model(model: LoadedModel, folder: str | Path, edits: list[dict] | None = None,
                 overwrite: bool = False) -> Path:
    """Write `model` (with whatever edits it holds now) to `folder` as a Hugging Face checkpoint with a model
    card; `edits` are `edit_card(...)` entries (or the `meta` of saved edit files) for the card."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise ExportError(f"{folder} exists; choose a new folder (or overwrite=True / --overwrite)")
    if getattr(model.hf_model, "hf_device_map", None):
        raise ExportError("a model split over devices (--device-map) cannot be exported as loaded; load it whole")
    edits = list(edits or [])
    code = code_version()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    except OSError as err:
        raise ExportError(f"cannot write the export to {folder}: {err.strerror or err}") from None
    try:
        plain_copy(model).save_pretrained(tmp, safe_serialization=True)
        model.tokenizer.save_pretrained(tmp)
        (tmp / CARD_FILE).write_text(json.dumps({"base_model": model.name, "code": code, "edits": edits},
                                                indent=1, default=str))
        (tmp / "README.md").write_text(_card_text(model, edits, code))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as err:
        raise ExportError(f"cannot write the export to {folder}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
