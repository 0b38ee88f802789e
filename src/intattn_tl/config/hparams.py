"""Hyperparameters per (method, model): YAML defaults in `config/defaults/<method>/<model>.yaml` plus overrides.

The per-model tracing result (`config/traced/<model>.json`, written by `intattn trace --install-defaults`)
supplies α and the critical layer sets where neither a YAML file nor an override sets them (the fields a
method's hparams class lists in `TRACED`). They are resolved here, once, so a method never reads files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from intattn_tl.core.checks import CheckError, coerce_fields
from intattn_tl.errors import IntattnError
from intattn_tl.methods import get_method

HPARAMS_DIR = Path(__file__).parent / "defaults"  # <method>/<model>.yaml
RESULTS_DIR = Path(__file__).parent / "traced"  # <model>.json, written by `intattn trace --install-defaults`


class HparamsError(IntattnError, ValueError):
    pass


# Hugging Face ids of the paper's 7B models (or local checkpoint folders named like their last part) whose
# YAML files ship under a short name; e.g. `--model /data/Qwen2.5-7B` reads defaults/<method>/qwen2.5-7b.yaml.
MODEL_ALIASES = {
    "qwen/qwen2.5-7b": "qwen2.5-7b", "qwen/qwen2.5-7b-instruct": "qwen2.5-7b",
    "mistralai/mistral-7b-v0.1": "mistral-7b", "mistralai/mistral-7b-instruct-v0.2": "mistral-7b",
}


def hparams_name(model_name: str) -> str:
    """The name a model's shipped YAML files carry: its own, or the short name of an HF id / folder above."""
    key = model_name.lower().rstrip("/")
    by_folder = {hf_id.split("/")[1]: short for hf_id, short in MODEL_ALIASES.items()}
    return MODEL_ALIASES.get(key) or by_folder.get(key.rsplit("/", 1)[-1]) or model_name


def tracing_result(model_name: str) -> dict | None:
    """α and layer sets measured by causal tracing for `model_name`, if committed."""
    path = RESULTS_DIR / f"{model_name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _read_yaml(file: Path) -> dict:
    if file.is_dir():
        raise HparamsError(f"hyperparameter file {file} is a folder; give a YAML file")
    try:
        values = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise HparamsError(f"cannot read hyperparameter file {file}: {' '.join(str(err).split())}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise HparamsError(f"hyperparameter file {file} must hold a mapping of field: value, not a {type(values).__name__}")
    return values


def load_hparams(method: str, model_name: str, overrides: dict | None = None, path: str | Path | None = None):
    """The method's dataclass from YAML + overrides, every value checked against the field types first."""

    cls = get_method(method).hparams_cls
    file = Path(path) if path else HPARAMS_DIR / method / f"{hparams_name(model_name)}.yaml"
    values: dict = {}
    if file.exists():
        values = _read_yaml(file)
        declared = values.pop("model_name", None)
        if declared is not None and declared not in (model_name, hparams_name(model_name)):
            raise HparamsError(f"{file} holds hyperparameters for {declared!r}, not {model_name!r}")
    elif path:
        raise HparamsError(f"hyperparameter file {file} not found")
    values.update(overrides or {})
    traced = tracing_result(model_name) or {}
    for name, key in getattr(cls, "TRACED", {}).items():  # the measured α / layers, where nothing else set them
        if values.get(name) is None and traced.get(key) is not None:
            values[name] = traced[key]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise HparamsError(f"unknown {method} hyperparameter(s) {sorted(unknown)}; known: {sorted(names)}")
    try:
        return cls(**coerce_fields(cls, values, f" (from {file.name} / overrides)" if file.exists() else ""))
    except CheckError as err:
        raise HparamsError(f"{method}: {err}") from None
