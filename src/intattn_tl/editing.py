"""`edit(model, records, method=…)`: the one entry point every editing method goes through.

A method is a hyperparameter dataclass plus a function `run(model, records, hparams, tx, state)` that
writes its updates through `tx.update(kind, layer, delta)`. The transaction keeps the original tensors, so
a failure anywhere restores the model bit-for-bit and a finished edit can be rolled back exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from .conflicts import Policy, resolve
from .data import EditRecord, validate
from .facts import edit_records
from .errors import IntattnError
from .models import LoadedModel
from .sanity import DEFAULT_LIMITS, SanityLimits, probe, probe_change, problems

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
        from .settings import code_version, edit_settings
        from .store import _atomic

        path = Path(path)
        before, after = self.fingerprints()
        meta = {"method": self.method, "model": self.model.name, "n_records": len(self.records),
                "record_ids": [r.id for r in self.records],
                "hparams": dataclasses.asdict(self.hparams) if dataclasses.is_dataclass(self.hparams) else None,
                "settings": edit_settings(self.method, self.hparams, self.model), "code": code_version(),
                "before": before, "after": after}
        blob = {"meta": json.loads(json.dumps(meta, default=str)), "deltas": {k: v.cpu() for k, v in self.deltas.items()}}
        return _atomic(path, lambda tmp: torch.save(blob, tmp))


def _saved_deltas(model: LoadedModel, path: str | Path) -> tuple[dict, dict[tuple[Kind, int], Tensor]]:
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
        kind, _, layer = key.partition(".")
        w = _weight(model, kind, int(layer) if layer.isdigit() else -1)
        if not isinstance(delta, Tensor) or delta.shape != w.shape or not torch.isfinite(delta).all():
            raise EditError(f"{path}: delta {key} does not fit {model.name} (shape/values); nothing was applied")
        deltas[(kind, int(layer))] = delta
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
        now = {f"{k}.{l}": fingerprint(_weight(model, k, l)) for k, l in deltas}
        if all(now[k] == meta["after"].get(k) for k in now):
            raise EditError(f"{path} is already applied to this model; applying it again would double it")
        other = [k for k in now if now[k] != meta["before"].get(k)]
        if other:
            raise EditError(f"{path}: weights {', '.join(other)} differ from the ones the edit was made on "
                            "(another edit applied?); pass check=False to apply it anyway")
    tx = WeightTransaction(model)
    try:
        for (kind, layer), delta in deltas.items():
            tx.update(kind, layer, delta)
    except BaseException:
        tx.restore()
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


MAX_PROMPT_TOKENS = 512  # KnowEdit prompts are < 100 tokens; a 5 000-token prompt needs > 12 GB in evaluation


def check_hparams(method: str, hparams, model: LoadedModel) -> None:
    """Types (from the dataclass's field annotations), then the method's own model-dependent checks."""
    from .checks import CheckError, coerce_fields

    m = get_method(method)
    if not isinstance(hparams, m.hparams_cls):
        raise EditError(f"hparams for {method!r} must be {m.hparams_cls.__name__}, got {type(hparams).__name__}")
    try:
        coerce_fields(type(hparams), dataclasses.asdict(hparams))
    except CheckError as err:
        raise EditError(f"{method}: {err}") from None
    if hasattr(hparams, "validate"):
        hparams.validate(model)


def check_lengths(model: LoadedModel, records: list[EditRecord], max_tokens: int | None = MAX_PROMPT_TOKENS) -> None:
    """Refuse, before any forward pass, a record whose prompt, target or probe is longer than `max_tokens`."""
    if max_tokens is None:
        return
    for r in records:
        texts = [r.prompt + " " + r.target_new, *r.rephrase,
                 *(f"{p.prompt} {max(p.answers, key=len, default='')}" for group in (r.portability, r.locality)
                   for probes in group.values() for p in probes)]
        for text in texts:
            if len(text) + 2 > max_tokens and len(model.tokenizer(text)["input_ids"]) > max_tokens:
                raise EditError(f"record {r.id}: a prompt of {len(model.tokenizer(text)['input_ids'])} tokens exceeds "
                                f"max_prompt_tokens={max_tokens} ({text[:60]!r}...); raise the limit to allow it")


def edit(model: LoadedModel, records: list, method: str = "intattn", hparams=None,
         state: EditState | None = None, progress: bool = False,
         max_prompt_tokens: int | None = MAX_PROMPT_TOKENS, conflicts: Policy = "refuse",
         sanity: SanityLimits | None = DEFAULT_LIMITS, force: bool = False) -> EditResult:
    """Apply `records` to `model` in place with `method`; on any error the weights are restored.

    `records`: EditRecords, or your own facts as (prompt, subject, target_new[, ground_truth]) tuples, dicts
    with EasyEdit's field names or `facts.EditRequest`s (ids filled in; a missing ground truth is the model's
    own answer), e.g. `edit(model, [("The Eiffel Tower is in", "Eiffel Tower", "Rome")], "intattn")`.

    `progress` shows a bar over the records of a one-edit-at-a-time method (ROME, R-ROME, FT);
    records with a text longer than `max_prompt_tokens` tokens are refused before anything runs.
    `conflicts="refuse"`: two records with one prompt and subject but different targets are refused, exact
    repeats merged into the first (noted on stderr and in `stats["merged"]`); "allow": the records as given
    (the benchmark tables, whose files hold such pairs).
    After the update the edit's chain statistics and a probe of neutral prompts are checked against `sanity`
    (sanity.SanityLimits; None: not checked); an edit beyond them is rolled back exactly and refused, or kept
    with `force=True` and a warning. `stats["sanity"]` holds the probe's numbers."""
    m = get_method(method)
    if not records:
        raise EditError("no records to edit")
    if not all(isinstance(r, EditRecord) for r in records):  # your own facts: tuples, dicts, EditRequests
        records = edit_records(model, records)
    for r in records:
        validate(r)
    records, merged = resolve(records, conflicts)
    for note in merged:
        print(f"[intattn] {note}", file=sys.stderr)
    if hparams is None:
        from .hparams import load_hparams

        hparams = load_hparams(method, model.name)
    check_hparams(method, hparams, model)
    check_lengths(model, records, max_prompt_tokens)
    state = state if state is not None else EditState()
    tx = WeightTransaction(model, exact=state.data.setdefault("exact_weights", {}))
    stats: dict = {}
    before = probe(model) if sanity is not None else None
    try:
        if m.batch:
            stats = m.run(model, records, hparams, tx, state) or {}
        else:
            from tqdm.auto import tqdm

            per_edit = []
            for r in tqdm(records, desc=f"{method} edits", unit="edit", leave=False, disable=not progress):
                per_edit.append({"id": r.id, **(m.run(model, [r], hparams, tx, state) or {})})
            # the last edit's stats at the top (as before), every edit's in order under "per_edit"
            stats = {**{k: v for k, v in per_edit[-1].items() if k != "id"}, "per_edit": per_edit}
        if sanity is not None:
            stats["sanity"] = check_sanity(model, tx, method, stats, before, sanity, force,
                                           n_edits=1 if m.batch else len(records))
    except BaseException as err:
        tx.restore()
        if isinstance(err, EditError):
            raise
        if isinstance(err, torch.linalg.LinAlgError):
            raise EditError(f"{method}: linear solve failed ({err}); the model is unchanged") from err
        raise
    if merged:
        stats["merged"] = merged
    return EditResult(model=model, method=method, hparams=hparams, records=list(records), tx=tx, stats=stats)


class InsaneEditError(EditError):
    """An edit far outside anything normal edits do; it was rolled back exactly."""


def weight_change(tx: WeightTransaction, n_edits: int = 1) -> dict[str, float]:
    """|dW| / |W| of every weight `tx` edited, W as it found it, divided by the number of edits it holds."""
    return {f"{k}.{l}": round(float(tx.deltas[(k, l)].float().norm() / original.float().norm().clamp(min=1e-12))
                              / n_edits, 4) for (k, l), original in tx.originals.items()}


def check_sanity(model: LoadedModel, tx: WeightTransaction, method: str, stats: dict, before: Tensor,
                 limits: SanityLimits, force: bool, n_edits: int = 1) -> dict:
    """The neutral-prompt probe's change; InsaneEditError (the caller restores the weights) for an edit beyond
    `limits`, unless `force`, which keeps it with a warning on stderr."""
    change = {**probe_change(before, probe(model)), "weight_change": weight_change(tx, n_edits)}
    found = problems(stats, change, limits)
    if found and not force:
        raise InsaneEditError(f"{method}: this edit looks broken, so it was rolled back exactly (the weights are "
                              f"unchanged): {'; '.join(found)}. Check its inputs (key statistics, targets); "
                              "force=True (--force) keeps it anyway.")
    if found:
        print(f"[intattn] warning: {method}: edit kept by force although {'; '.join(found)}", file=sys.stderr)
    return {**change, "problems": found}


def describe(result: EditResult) -> str:
    norms = {k: float(v.norm()) for k, v in result.deltas.items()}
    return json.dumps({"method": result.method, "n": len(result.records), "delta_norms": norms}, indent=1)
