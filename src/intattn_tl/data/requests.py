"""Your own facts in: plain strings, a small `EditRequest`, or a file with EasyEdit's field names.

```python
records = edit_records(model, [("The Eiffel Tower is located in the city of", "Eiffel Tower", "Rome")])
result = edit(model, records, "intattn")
```

A request needs a prompt that mentions its subject, and a new target. Ids are filled in (`fact/0`, ...) and,
when no ground truth is given, the model's own greedy answer to the prompt stands for it (what the edit
replaces). Files (`read_requests`): JSON (a list of objects), JSONL (one object a line) or CSV, with
EasyEdit's names: `prompt`, `subject`, `target_new`, optional `ground_truth`, `rephrase_prompt`, and
`locality` / `portability` as KnowEdit nests them ({kind: [{prompt, ground_truth}]}); in CSV, also
`locality_prompt` / `locality_ground_truth` (CounterFact's flat form).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from intattn_tl.data.records import DataError, EditRecord, Probe, _probes, answers, validate

MISSING = "?"  # a ground truth to be filled in with the model's own answer


@dataclass(frozen=True)
class EditRequest:
    prompt: str
    subject: str
    target_new: str
    ground_truth: tuple[str, ...] = ()
    rephrase: tuple[str, ...] = ()
    locality: dict[str, tuple[Probe, ...]] = field(default_factory=dict)
    portability: dict[str, tuple[Probe, ...]] = field(default_factory=dict)
    id: str | None = None


def as_request(item, where: str) -> EditRequest:
    """A (prompt, subject, target[, ground truth]) tuple, a dict with EasyEdit's names, or an EditRequest."""
    if isinstance(item, EditRequest):
        return item
    if isinstance(item, (tuple, list)) and len(item) in (3, 4) and all(isinstance(x, str) for x in item):
        return EditRequest(*item[:3], ground_truth=(item[3],) if len(item) == 4 else ())
    if isinstance(item, dict):
        missing = [k for k in ("prompt", "subject", "target_new") if not isinstance(item.get(k), str)]
        if missing:
            raise DataError(f"{where}: missing or non-text field(s) {missing} (need prompt, subject, target_new)")
        rephrase = item.get("rephrase_prompt") or item.get("rephrase") or ()
        locality = _probes(item.get("locality") if isinstance(item.get("locality"), dict) else None)
        if item.get("locality_prompt"):
            locality = {**locality, "Neighborhood": (Probe(item["locality_prompt"],
                                                           answers(item.get("locality_ground_truth") or "")),)}
        gt = item.get("ground_truth")
        return EditRequest(item["prompt"], item["subject"], item["target_new"],
                           ground_truth=answers(gt) if gt else (),
                           rephrase=(rephrase,) if isinstance(rephrase, str) else tuple(rephrase),
                           locality=locality, portability=_probes(item.get("portability")),
                           id=str(item["id"]) if item.get("id") is not None else None)
    raise DataError(f"{where}: expected (prompt, subject, target_new), a dict with those fields or an EditRequest, "
                    f"got {type(item).__name__}")


def checked_records(items, prefix: str = "fact") -> list[EditRecord]:
    """EditRecords for `items` (see `as_request`), each checked (subject in prompt, target not empty), ids
    `prefix/i` unless given; a missing ground truth is left as "?" (`edit_records` fills it in)."""
    requests = [as_request(item, f"request {i}") for i, item in enumerate(items)]
    if not requests:
        raise DataError("no edit request given")
    records = [EditRecord(id=r.id or f"{prefix}/{i}", prompt=r.prompt, subject=r.subject, target_new=r.target_new,
                          ground_truth=r.ground_truth or (MISSING,), rephrase=r.rephrase, portability=r.portability,
                          locality=r.locality) for i, r in enumerate(requests)]
    for rec in records:
        validate(rec)
    if len({r.id for r in records}) != len(records):
        raise DataError("request ids are not unique")
    return records


def read_requests(path: str | Path, target_needed: bool = True) -> list[EditRequest]:
    """Edit requests from a .json, .jsonl or .csv file (module docstring), each checked for its fields."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"requests file {path} not found")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            items = json.loads(text)
            items = items if isinstance(items, list) else [items]
        elif suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif suffix == ".csv":
            items = [{k: v for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(text.splitlines())]
        else:
            raise DataError(f"requests file {path}: use .json, .jsonl or .csv")
    except json.JSONDecodeError as err:
        raise DataError(f"requests file {path} is not valid JSON: {err}") from None
    if not target_needed:  # facts to trace: an answer, if any, comes as attribute / answer / ground_truth
        items = [{"target_new": "", **item, "ground_truth": item.get("attribute") or item.get("answer")
                  or item.get("ground_truth")} for item in items]
    return [as_request(item, f"{path} entry {i}") for i, item in enumerate(items)]


def checked_trace_facts(items) -> list[tuple[str, str, str | None]]:
    """(prompt, subject, answer or None) per fact: (prompt, subject[, answer]) tuples or dicts with prompt,
    subject and optional attribute / answer / ground_truth; each checked, before any model is needed."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            item = (item.get("prompt"), item.get("subject"),
                    item.get("attribute") or item.get("answer") or item.get("ground_truth"))
        if not (isinstance(item, (tuple, list)) and len(item) in (2, 3) and all(isinstance(x, str) for x in item[:2])):
            raise DataError(f"fact {i}: expected (prompt, subject[, answer]), got {item!r}")
        prompt, subject, answer = item[0], item[1], item[2] if len(item) == 3 else None
        if not subject.strip() or subject not in prompt:
            raise DataError(f"fact {i}: subject {subject!r} does not occur in prompt {prompt!r}")
        out.append((prompt, subject, answer))
    if not out:
        raise DataError("no fact given")
    return out


def read_trace_facts(path: str | Path) -> list[dict]:
    """Facts to trace from a .json / .jsonl / .csv file: prompt, subject, optional attribute (or answer)."""
    return [{"prompt": r.prompt, "subject": r.subject, "attribute": r.ground_truth[0] if r.ground_truth else None}
            for r in read_requests(path, target_needed=False)]
