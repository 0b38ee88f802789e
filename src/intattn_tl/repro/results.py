"""What a reproduction cell (`tables`) and an α-sweep point (`sweep`) have in common.

Both edit a batch of records, evaluate it and roll the edit back; both are written as a verified JSON summary
with its per-record CSV beside it; both carry the settings that made them, and a resumed run refuses to mix
results made with other settings into the same folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from intattn_tl.api import edit
from intattn_tl.core.settings import differences
from intattn_tl.core.store import IntegrityError, read_result, write_json, write_rows
from intattn_tl.evaluation.metrics import EvalConfig, evaluate
from intattn_tl.model.spec import LoadedModel

# EvalConfig fields that change the numbers (batch sizes and progress bars do not)
SCORING = ("fluency", "fluency_max_len", "fluency_top_k", "exact_match", "seed", "fluency_sampling")


def scoring(eval_cfg: EvalConfig) -> dict:
    return {k: getattr(eval_cfg, k) for k in SCORING}


def edit_and_evaluate(model: LoadedModel, method: str, records, hp, eval_cfg: EvalConfig, ref,
                      progress: bool = False) -> tuple[list[dict], float, float]:
    """Edit `records` in one call, evaluate them, roll the edit back. Returns (per-record rows, edit seconds,
    evaluation seconds). The benchmark is taken as given (conflicting records allowed) and no post-edit sanity
    check runs: a table reports what a method does, collapse included."""
    t0 = time.time()
    result = edit(model, records, method=method, hparams=hp, progress=progress, conflicts="allow", sanity=None)
    t_edit = time.time() - t0
    try:
        rows = evaluate(model, records, eval_cfg, locality_ref=ref)
    finally:
        result.rollback()
    return rows, t_edit, time.time() - t0 - t_edit


def read_verified(path: Path, key: dict, matches: Callable[[dict], bool], error: type[Exception], what: str) -> dict:
    """A finished result, verified (sha256 and its key); a damaged one raises `error`, never counts as done."""
    try:
        return read_result(path, key, matches)
    except IntegrityError as err:
        raise error(f"{what} {err}; delete it to recompute the {what}") from None


def write_result(path: Path, summary: dict, rows: list[dict], key: dict) -> None:
    """The per-record CSV first, then the summary JSON: a summary on disk never lacks its rows."""
    write_rows(path.with_suffix(".csv"), rows)
    write_json(path, summary, key)


def refuse_other_settings(path: Path, old: dict | None, new: dict | None, error: type[Exception]) -> None:
    """`path` was made with `old` settings; raise `error` if they differ from this run's `new` (the code version
    may differ). Results made before settings were recorded (old None) pass."""
    if old is None or new is None:
        return
    diff = differences({k: v for k, v in old.items() if k != "code"}, json.loads(json.dumps(new, default=str)))
    if diff:
        raise error(f"{path} was made with other settings than this run's: {'; '.join(diff)}. "
                    "Use another --out, or the same settings.")
