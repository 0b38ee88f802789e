"""What an edit did (`EditResult`), saved to a file and applied again (`apply_saved`), all or nothing."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from intattn_tl.core.settings import code_version, edit_settings
from intattn_tl.core.store import _atomic
from intattn_tl.data.records import EditRecord
from intattn_tl.edit.transaction import (
    EditError,
    WeightTransaction,
    _weight,
    added,
    apply_deltas,
    fingerprint,
    weight_key,
)
from intattn_tl.model.spec import LoadedModel


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

    def fingerprints(self) -> tuple[dict[str, str], dict[str, str]]:
        """Each edited weight's fingerprint before and after the edit, by "kind.layer"."""
        before = {f"{k}.{l}": fingerprint(o) for (k, l), o in self.tx.originals.items()}
        after = {f"{k}.{l}": fingerprint(added(o, self.tx.deltas[(k, l)])) for (k, l), o in self.tx.originals.items()}
        return before, after

    def save(self, path: str | Path) -> Path:
        """Deltas plus the exact settings, the code version, and each weight's fingerprint before and after
        (so `apply_saved` can refuse to apply the edit twice or onto other weights)."""

        path = Path(path)
        before, after = self.fingerprints()
        meta = {"method": self.method, "model": self.model.name, "n_records": len(self.records),
                "record_ids": [r.id for r in self.records],
                "hparams": dataclasses.asdict(self.hparams) if dataclasses.is_dataclass(self.hparams) else None,
                "settings": edit_settings(self.method, self.hparams, self.model), "code": code_version(),
                "before": before, "after": after}
        blob = {"meta": json.loads(json.dumps(meta, default=str)), "deltas": {k: v.cpu() for k, v in self.deltas.items()}}
        return _atomic(path, lambda tmp: torch.save(blob, tmp))


def _saved_deltas(model: LoadedModel, path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(meta, deltas) of an edit file, every key and shape checked before anything is applied."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta, raw = blob["meta"], blob["deltas"]
    except Exception as err:
        raise EditError(f"{path} is not an edit file written by EditResult.save ({type(err).__name__})") from None
    if meta.get("model") != model.name:
        raise EditError(f"{path} was made for model {meta.get('model')!r}, not {model.name!r}")
    deltas = {}
    for key, delta in raw.items():
        w = _weight(model, *weight_key(key))
        if not isinstance(delta, Tensor) or delta.shape != w.shape or not torch.isfinite(delta).all():
            raise EditError(f"{path}: delta {key} does not fit {model.name} (shape/values); nothing was applied")
        deltas[key] = delta
    return meta, deltas


def saved_meta(model: LoadedModel, path: str | Path) -> dict:
    """What an edit file records (method, settings, records, fingerprints, code), checked against `model`."""
    return _saved_deltas(model, path)[0]


def apply_saved(model: LoadedModel, path: str | Path, check: bool = True) -> WeightTransaction:
    """Apply an edit file written by `EditResult.save`: all of it or nothing (also on Ctrl-C).

    With `check` (files from this version on), the weights must be the ones the edit was made on: an edit
    that is already applied, or weights changed otherwise, are refused with the tensors named."""
    meta, deltas = _saved_deltas(model, path)
    if check and "before" in meta:
        now = {k: fingerprint(_weight(model, *weight_key(k))) for k in deltas}
        if all(now[k] == meta["after"].get(k) for k in now):
            raise EditError(f"{path} is already applied to this model; applying it again would double it")
        other = [k for k in now if now[k] != meta["before"].get(k)]
        if other:
            raise EditError(f"{path}: weights {', '.join(other)} differ from the ones the edit was made on "
                            "(another edit applied?); pass check=False to apply it anyway")
    return apply_deltas(model, deltas)
