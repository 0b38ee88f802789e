"""The front door: `edit(model, facts, method=…)` and `trace(model, facts)`, on records or your own facts.

`edit` is the one entry point every editing method goes through. A method (`methods/`) is a hyperparameter
dataclass plus a function `run(model, records, hparams, tx, state)` that writes its updates through
`tx.update(kind, layer, delta)`. The transaction keeps the original tensors, so a failure anywhere restores
the model bit-for-bit and a finished edit can be rolled back exactly.
Your own facts (tuples, dicts, `EditRequest`s) become records here; a missing ground truth or answer is the
model's own greedy answer, which is why this needs the model and lives above `data/`.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from intattn_tl.config.hparams import load_hparams
from intattn_tl.core.checks import CheckError, coerce_fields
from intattn_tl.data.conflicts import Policy, resolve
from intattn_tl.data.records import EditRecord, KnownFact, validate
from intattn_tl.data.requests import MISSING, checked_records, checked_trace_facts
from intattn_tl.edit.result import EditResult
from intattn_tl.edit.sanity import DEFAULT_LIMITS, SanityLimits, check_sanity, probe
from intattn_tl.edit.transaction import EditError, EditState, WeightTransaction
from intattn_tl.evaluation.metrics import greedy_continuation
from intattn_tl.locate.tracing import TraceResult, embedding_std, trace_fact
from intattn_tl.methods import get_method
from intattn_tl.model.spec import LoadedModel

MAX_PROMPT_TOKENS = 512  # KnowEdit prompts are < 100 tokens; a 5 000-token prompt needs > 12 GB in evaluation


def check_hparams(method: str, hparams, model: LoadedModel) -> None:
    """Types (from the dataclass's field annotations), then the method's own model-dependent checks."""

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


ANSWER_TOKENS = 8  # a model's own answer: its greedy continuation, cut at the first line or sentence end


def own_answer(model: LoadedModel, prompt: str) -> str:
    """The model's greedy answer to `prompt`: its continuation up to a newline or a sentence's end."""
    text = greedy_continuation(model, prompt, ANSWER_TOKENS).split("\n")[0].strip()
    return re.split(r"[.,;!?](?:\s|$)", text, maxsplit=1)[0].strip() or text or "?"


def fill_ground_truth(model: LoadedModel, records: list[EditRecord]) -> list[EditRecord]:
    """Each record whose ground truth is missing ("?") gets the model's own answer to its prompt."""
    return [replace(r, ground_truth=(own_answer(model, r.prompt),)) if r.ground_truth == (MISSING,) else r
            for r in records]


def edit_records(model: LoadedModel, items, prefix: str = "fact") -> list[EditRecord]:
    """`checked_records`, then each missing ground truth = the model's own answer to the prompt."""
    return fill_ground_truth(model, checked_records(items, prefix))


def trace_facts(model: LoadedModel, items) -> list[KnownFact]:
    """Facts to trace (see `checked_trace_facts`), ids fact-0, fact-1, ...; without an answer, the model's own
    greedy answer is traced."""
    return [KnownFact(f"fact-{i}", prompt, subject, answer or own_answer(model, prompt), "")
            for i, (prompt, subject, answer) in enumerate(checked_trace_facts(items))]


def trace(model: LoadedModel, facts, kinds=("attn_window", "mlp_window"), **kwargs) -> list[TraceResult]:
    """Causal tracing of each fact, own facts as `edit` takes them ((prompt, subject[, answer]) tuples or dicts).
    By default the 10-layer attention and MLP windows that α and the critical layers come from
    (`locate.balance.summarize(results)`); `kinds=locate.tracing.KINDS` adds single layers and the residual.
    Other `kwargs` go to `locate.tracing.trace_fact` (window, n_samples, ...)."""
    std = kwargs.pop("embed_std", None) or embedding_std(model)
    return [trace_fact(model, f.prompt, f.subject, f.attribute, embed_std=std, kinds=kinds, **kwargs)
            for f in trace_facts(model, facts)]
