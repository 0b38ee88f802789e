"""Exact, all-or-nothing weight updates: every edit goes through one `WeightTransaction`, which keeps the
originals so that a failure restores the model bit-for-bit and a finished edit can be rolled back exactly."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from intattn_tl.errors import IntattnError
from intattn_tl.model.spec import LoadedModel

Kind = Literal["w_out", "w_o"]


KINDS: tuple[Kind, ...] = ("w_out", "w_o")


class EditError(IntattnError, RuntimeError):
    """An edit failed or was refused; the model's weights are unchanged."""


def _weight(model: LoadedModel, kind: Kind, layer: int) -> Tensor:
    if kind not in KINDS:
        raise EditError(f"unknown weight kind {kind!r}; use one of {KINDS}")
    if not 0 <= layer < model.spec.n_layers:
        raise EditError(f"layer {layer} out of range for {model.name} ({model.spec.n_layers} layers)")
    return getattr(model.spec, kind)[layer]


def fingerprint(t: Tensor) -> str:
    """Exact identity of a tensor's values (bytes, dtype, shape): tells "this edit is on top" apart."""
    t = t.detach().cpu().contiguous()
    h = hashlib.blake2b(f"{t.dtype}{tuple(t.shape)}".encode(), digest_size=16)
    h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def low_precision(t: Tensor) -> bool:
    """bfloat16 / float16 weights: an update added to them is rounded to 8–11 significant bits."""
    return t.dtype.is_floating_point and torch.finfo(t.dtype).bits < 32


def added(w: Tensor, delta: Tensor) -> Tensor:
    """w + delta as an edit leaves it: in w's dtype, rounded once (low-precision sums are formed in float32)."""
    if low_precision(w):
        return (w.float() + delta.float().to(w.device)).to(w.dtype)
    return w + delta.to(w.dtype).to(w.device)


class WeightTransaction:
    """In-place updates of W_out / W_O that remember the originals until committed or rolled back.

    `after` holds each weight's fingerprint as this transaction left it, so `rollback` can tell whether a
    later edit changed the same weight since (then rolling this one back first would undo part of that
    one, or leave part of this one: refused).

    Low-precision (bfloat16) weights: `exact` keeps, per edited weight, the float32 value it should hold
    and the fingerprint of the rounded copy written from it. Each update adds to that float32 value and
    rounds once, so a sequence of edits (500 ROME edits of one W_out) carries one rounding, not one per
    edit: adding each edit to bfloat16 weights drops every change below half an ulp (≈ 0.2–0.4 % of the
    weight) outright and rounds the rest, and over hundreds of edits both pile up. Shared across the
    transactions of one `EditState`; a weight changed elsewhere (fingerprint differs) starts afresh from
    its current value. Float32 weights are updated in place exactly as before (`w += delta`)."""

    def __init__(self, model: LoadedModel, exact: dict | None = None):
        self.model = model
        self.originals: dict[tuple[Kind, int], Tensor] = {}
        self.deltas: dict[tuple[Kind, int], Tensor] = {}  # float32 for low-precision weights
        self.after: dict[tuple[Kind, int], str] = {}
        self.exact: dict[tuple[Kind, int], tuple[Tensor, str]] = exact if exact is not None else {}

    def update(self, kind: Kind, layer: int, delta: Float[Tensor, "d_out d_in"]) -> None:
        w = _weight(self.model, kind, layer)
        if delta.shape != w.shape:
            raise EditError(f"{kind}[{layer}] delta has shape {tuple(delta.shape)}, weight {tuple(w.shape)}")
        if not torch.isfinite(delta).all():
            raise EditError(f"{kind}[{layer}] update is not finite (NaN/inf); nothing was applied")
        key = (kind, layer)
        if key not in self.originals:
            self.originals[key] = w.detach().clone()
        lowp = low_precision(w)
        with torch.no_grad():
            if lowp:
                delta = delta.float().to(w.device)
                value, written = self.exact.get(key, (None, None))
                if value is None or written != fingerprint(w):
                    value = w.detach().float()
                value = value + delta
                w.copy_(value.to(w.dtype))
            else:
                delta = delta.to(w.dtype).to(w.device)
                w.add_(delta)
        self.deltas[key] = self.deltas.get(key, torch.zeros_like(delta)) + delta
        self.after[key] = fingerprint(w)
        if lowp:
            self.exact[key] = (value, self.after[key])

    def assign(self, kind: Kind, layer: int, value: Float[Tensor, "d_out d_in"],
               exact: Float[Tensor, "d_out d_in"] | None = None) -> None:
        """Set a weight to `value` bit for bit (a resumed sequence's saved state; `w += value - w` would round).
        `exact`: the float32 value a low-precision weight carries (see the class docstring)."""
        w = _weight(self.model, kind, layer)
        if value.shape != w.shape or value.dtype != w.dtype:
            raise EditError(f"{kind}[{layer}]: a value of {value.dtype} {tuple(value.shape)} cannot replace the "
                            f"weight ({w.dtype} {tuple(w.shape)})")
        key = (kind, layer)
        if key not in self.originals:
            self.originals[key] = w.detach().clone()
        with torch.no_grad():
            w.copy_(value.to(w.device))
        self.deltas[key] = (w.detach().float() - self.originals[key].float()) if low_precision(w) else \
            w.detach() - self.originals[key]
        self.after[key] = fingerprint(w)
        if exact is not None:
            self.exact[key] = (exact.float().to(w.device), self.after[key])

    def restore(self) -> None:
        """Put every original back, unconditionally (the failure path of an edit in progress)."""
        with torch.no_grad():
            for (kind, layer), original in self.originals.items():
                _weight(self.model, kind, layer).copy_(original)

    def rollback(self) -> None:
        """Undo this edit exactly; refused (nothing changed) if a later edit still sits on one of its weights."""
        current = {key: fingerprint(_weight(self.model, *key)) for key in self.originals}
        if all(current[key] == fingerprint(o) for key, o in self.originals.items()):
            return  # already rolled back
        moved = [f"{k}.{l}" for (k, l) in self.originals if current[(k, l)] != self.after.get((k, l))]
        if moved:
            raise EditError(f"cannot roll back this edit: {', '.join(moved)} changed since it was made (a later edit "
                            "is still applied there); roll edits back newest first. Nothing was changed.")
        self.restore()


def weight_key(key: str) -> tuple[Kind, int]:
    """("w_out", 3) from the "w_out.3" an edit's `deltas` are keyed by; unknown names refused."""
    kind, _, layer = key.partition(".")
    if kind not in KINDS or not layer.isdigit():
        raise EditError(f"{key!r} is not a weight key; use \"<kind>.<layer>\" with kind one of {KINDS}")
    return kind, int(layer)  # type: ignore[return-value]


def apply_deltas(model: LoadedModel, deltas: Mapping[str, Tensor], keys: Iterable[str] | None = None
                 ) -> WeightTransaction:
    """Apply `deltas` (by "kind.layer"; only `keys` of them if given) in one new transaction, all or nothing:
    a bad key or delta restores every weight already touched. Undo with the returned transaction's `rollback`."""
    keys = list(deltas if keys is None else keys)
    missing = [k for k in keys if k not in deltas]
    if missing:
        raise EditError(f"no delta for {', '.join(missing)}; this edit has {', '.join(sorted(deltas))}")
    tx = WeightTransaction(model)
    try:
        for key in keys:
            tx.update(*weight_key(key), deltas[key])
    except BaseException:
        tx.restore()
        raise
    return tx


@dataclass
class EditState:
    """What sequential editing carries from one batch to the next (e.g. AlphaEdit's preserved keys)."""

    data: dict = field(default_factory=dict)
