"""A one-edit-at-a-time sequence that survives a stop (ROME, R-ROME and FT over hundreds of records).

After every `SAVE_EVERY` edits, and at each checkpoint T before it is evaluated, one verified file takes what
the sequence has built so far: the exact values of the weights it changed, its `EditState` (prefixes, key
statistics, ROME's unedited weight, low-precision weights' float32 values), the torch RNG state, and what its
cells report (each edit's stats, the edit seconds). A later run of the same sequence goes on from the last save
instead of from the first edit; the resumed sequence is the uninterrupted one bit for bit (tests/test_reproduce.py).

The file is keyed to what decides the edits: the cell settings (method, resolved hyperparameters, dataset,
scoring), the weights of the unedited model, the dtype and the code version. A file made for anything else, or
damaged, is noted and not used: the sequence starts from its first edit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from intattn_tl.core.store import IntegrityError, read_torch, write_torch
from intattn_tl.edit.result import EditResult
from intattn_tl.edit.transaction import EditState, WeightTransaction, _weight

SAVE_EVERY = 10  # edits between saves: on Qwen2.5-0.5B ROME ≈ 20 min of CPU, one save ≈ 0.5 s


@dataclass
class Progress:
    """Where a sequence stands after its first `done` records."""

    record_ids: list[str]
    weights: dict[str, Tensor]  # "kind.layer" -> the weight's exact value now
    exact: dict[str, Tensor]  # low-precision weights: the float32 value each carries (WeightTransaction.exact)
    state: dict  # EditState.data
    per_edit: list[dict]
    edit_seconds: float
    rng: Tensor
    resumed_at: list[int] = field(default_factory=list)  # where earlier runs of this sequence stopped

    @property
    def done(self) -> int:
        return len(self.record_ids)


def _name(key: tuple[str, int]) -> str:
    return f"{key[0]}.{key[1]}"


def _key_of(name: str) -> tuple[str, int]:
    kind, _, layer = name.partition(".")
    return kind, int(layer)


def _to(obj, device):
    """`obj` (a JSON-like structure of tensors) with every tensor moved to `device`."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def snapshot(model, results: list[EditResult], state: EditState, record_ids: list[str], per_edit: list[dict],
             edit_seconds: float, resumed_at: list[int]) -> Progress:
    """The sequence as it stands: every weight one of `results` changed, at its current value."""
    keys = sorted({k for r in results for k in r.tx.originals})
    exact = state.data.get("exact_weights", {})
    return Progress(
        record_ids=list(record_ids),
        weights={_name(k): _weight(model, *k).detach().cpu().clone() for k in keys},
        exact={_name(k): exact[k][0].detach().cpu().clone() for k in keys if k in exact},
        state=_to({k: v for k, v in state.data.items() if k != "exact_weights"}, "cpu"),
        per_edit=list(per_edit), edit_seconds=float(edit_seconds), rng=torch.get_rng_state(),
        resumed_at=list(resumed_at))


def restore(model, progress: Progress, state: EditState) -> WeightTransaction:
    """Put the saved weights in place (one transaction: rolling it back restores the unedited model), the
    EditState and the RNG as they were."""
    state.data.update(_to(progress.state, model.device))
    tx = WeightTransaction(model, exact=state.data.setdefault("exact_weights", {}))
    try:
        for name, value in progress.weights.items():
            exact = progress.exact.get(name)
            tx.assign(*_key_of(name), value, None if exact is None else exact)
    except BaseException:
        tx.restore()
        raise
    torch.set_rng_state(progress.rng)
    return tx


class SequenceStore:
    """The saved progress of one sequence: `<folder>/<method>.pt`, verified on read."""

    def __init__(self, path: Path, key: dict):
        self.path, self.key = Path(path), key

    def load(self, record_ids: list[str]) -> Progress | None:
        """The saved progress, if it verifies, was made for this key and its records are the first of
        `record_ids`; otherwise None (and a note when a file was there)."""
        if not self.path.exists():
            return None
        try:
            data = read_torch(self.path, self.key)
            progress = Progress(**data)
        except IntegrityError as err:
            return self._skip(f"{err}")
        except TypeError:
            return self._skip("holds no sequence progress")
        if progress.record_ids != record_ids[:progress.done]:
            return self._skip(f"was made for other records ({progress.done} edits)")
        return progress

    def _skip(self, why: str) -> None:
        print(f"[intattn] sequence progress {self.path} {why}; starting the sequence from its first edit",
              file=sys.stderr)
        return None

    def save(self, progress: Progress) -> None:
        write_torch(self.path, dict(vars(progress)), self.key)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
