"""`edit(model, records, method=…)`: the one entry point every editing method goes through.

A method is a hyperparameter dataclass plus a function `run(model, records, hparams, tx, state)` that
writes its updates through `tx.update(kind, layer, delta)`. The transaction keeps the original tensors, so
a failure anywhere restores the model bit-for-bit and a finished edit can be rolled back exactly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from .data import EditRecord, validate
from .models import LoadedModel

Kind = Literal["w_out", "w_o"]
KINDS: tuple[Kind, ...] = ("w_out", "w_o")


class EditError(RuntimeError):
    """An edit failed or was refused; the model's weights are unchanged."""


def _weight(model: LoadedModel, kind: Kind, layer: int) -> Tensor:
    if kind not in KINDS:
        raise EditError(f"unknown weight kind {kind!r}; use one of {KINDS}")
    if not 0 <= layer < model.spec.n_layers:
        raise EditError(f"layer {layer} out of range for {model.name} ({model.spec.n_layers} layers)")
    return getattr(model.spec, kind)[layer]


class WeightTransaction:
    """In-place updates of W_out / W_O that remember the originals until committed or rolled back."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self.originals: dict[tuple[Kind, int], Tensor] = {}
        self.deltas: dict[tuple[Kind, int], Tensor] = {}

    def update(self, kind: Kind, layer: int, delta: Float[Tensor, "d_out d_in"]) -> None:
        w = _weight(self.model, kind, layer)
        if delta.shape != w.shape:
            raise EditError(f"{kind}[{layer}] delta has shape {tuple(delta.shape)}, weight {tuple(w.shape)}")
        if not torch.isfinite(delta).all():
            raise EditError(f"{kind}[{layer}] update is not finite (NaN/inf); nothing was applied")
        key = (kind, layer)
        if key not in self.originals:
            self.originals[key] = w.detach().clone()
        delta = delta.to(w.dtype).to(w.device)
        with torch.no_grad():
            w.add_(delta)
        self.deltas[key] = self.deltas.get(key, torch.zeros_like(w)) + delta

    def rollback(self) -> None:
        with torch.no_grad():
            for (kind, layer), original in self.originals.items():
                _weight(self.model, kind, layer).copy_(original)


@dataclass
class EditResult:
    """What an edit did: the per-tensor deltas, and how to undo or replay it."""

    model: LoadedModel
    method: str
    hparams: object
    records: list[EditRecord]
    tx: WeightTransaction = field(repr=False)
    stats: dict = field(default_factory=dict)

    @property
    def deltas(self) -> dict[str, Tensor]:
        return {f"{kind}.{layer}": d for (kind, layer), d in self.tx.deltas.items()}

    def rollback(self) -> None:
        """Restore every edited weight bit-for-bit."""
        self.tx.rollback()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {"method": self.method, "model": self.model.name, "n_records": len(self.records),
                "record_ids": [r.id for r in self.records],
                "hparams": dataclasses.asdict(self.hparams) if dataclasses.is_dataclass(self.hparams) else None}
        torch.save({"meta": meta, "deltas": {k: v.cpu() for k, v in self.deltas.items()}}, path)
        return path


def apply_saved(model: LoadedModel, path: str | Path) -> WeightTransaction:
    """Load an edit file written by `EditResult.save` onto a fresh model (same architecture)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob["meta"]["model"] != model.name:
        raise EditError(f"{path} was made for model {blob['meta']['model']!r}, not {model.name!r}")
    tx = WeightTransaction(model)
    try:
        for key, delta in blob["deltas"].items():
            kind, layer = key.split(".")
            tx.update(kind, int(layer), delta)
    except Exception:
        tx.rollback()
        raise
    return tx


# ----------------------------------------------------------------------------- method registry


@dataclass(frozen=True)
class Method:
    name: str
    hparams_cls: type
    run: Callable  # run(model, records, hparams, tx, state) -> dict (stats)
    batch: bool  # True: all records in one call; False: one record after another (ROME, R-ROME, FT)


METHODS: dict[str, Method] = {}


def register(name: str, hparams_cls: type, batch: bool = True):
    def deco(fn):
        METHODS[name] = Method(name, hparams_cls, fn, batch)
        return fn
    return deco


def _ensure_methods_loaded() -> None:
    from . import methods  # noqa: F401  (importing registers every method)


def get_method(name: str) -> Method:
    _ensure_methods_loaded()
    if name not in METHODS:
        raise EditError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


@dataclass
class EditState:
    """What sequential editing carries from one batch to the next (e.g. AlphaEdit's preserved keys)."""

    data: dict = field(default_factory=dict)


def edit(model: LoadedModel, records: list[EditRecord], method: str = "intattn", hparams=None,
         state: EditState | None = None, progress: bool = False) -> EditResult:
    """Apply `records` to `model` in place with `method`; on any error the weights are restored.

    `progress` shows a bar over the records of a one-edit-at-a-time method (ROME, R-ROME, FT)."""
    m = get_method(method)
    if not records:
        raise EditError("no records to edit")
    for r in records:
        validate(r)
    if hparams is None:
        from .hparams import load_hparams

        hparams = load_hparams(method, model.name)
    if not isinstance(hparams, m.hparams_cls):
        raise EditError(f"hparams for {method!r} must be {m.hparams_cls.__name__}, got {type(hparams).__name__}")
    if hasattr(hparams, "validate"):
        hparams.validate(model)
    state = state if state is not None else EditState()
    tx = WeightTransaction(model)
    stats: dict = {}
    try:
        if m.batch:
            stats = m.run(model, records, hparams, tx, state) or {}
        else:
            from tqdm.auto import tqdm

            for r in tqdm(records, desc=f"{method} edits", unit="edit", leave=False, disable=not progress):
                stats = m.run(model, [r], hparams, tx, state) or stats
    except BaseException as err:
        tx.rollback()
        if isinstance(err, EditError):
            raise
        if isinstance(err, torch.linalg.LinAlgError):
            raise EditError(f"{method}: linear solve failed ({err}); the model is unchanged") from err
        raise
    return EditResult(model=model, method=method, hparams=hparams, records=list(records), tx=tx, stats=stats)


def describe(result: EditResult) -> str:
    norms = {k: float(v.norm()) for k, v in result.deltas.items()}
    return json.dumps({"method": result.method, "n": len(result.records), "delta_norms": norms}, indent=1)
