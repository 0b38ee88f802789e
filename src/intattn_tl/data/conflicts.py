"""Edit requests of one batch that contradict each other, or repeat each other.

Two requests with the same prompt and subject (after normalisation: NFC, whitespace, case) ask for the same
thing. With the same target (whitespace aside) they are one request: merged, keeping the first, with a note.
With different targets no edit can satisfy both (MEMIT's least squares lands between them, a sequential method
keeps the last): the batch is refused with the records named, before any work.

The KnowEdit / CounterFact benchmark files hold such pairs themselves (WikiData_counterfact: 18, ZsRE: 10, among
their test records), and their tables are defined on the files as given: `policy="allow"` edits them unchanged.
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from typing import Literal

from intattn_tl.data.records import EditRecord
from intattn_tl.errors import IntattnError

Policy = Literal["refuse", "allow"]
POLICIES: tuple[Policy, ...] = ("refuse", "allow")


class ConflictError(IntattnError, ValueError):
    """A batch asks for two different answers to one prompt about one subject; nothing was edited."""


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split()).casefold()


def request_key(record: EditRecord) -> tuple[str, str]:
    """What a request asks about: its prompt and subject, compared without case, spacing or Unicode form."""
    return _norm(record.prompt), _norm(record.subject)


def _target(record: EditRecord) -> str:
    return " ".join(unicodedata.normalize("NFC", record.target_new).split())


def resolve(records: list[EditRecord], policy: Policy = "refuse") -> tuple[list[EditRecord], list[str]]:
    """(the records to edit, notes for the user). "refuse": conflicting requests raise ConflictError naming
    every one, exact repeats are merged into their first record; "allow": the records as given, no notes."""
    if policy not in POLICIES:
        raise ConflictError(f"conflicts must be one of {POLICIES}, got {policy!r}")
    if policy == "allow":
        return list(records), []
    groups: dict[tuple[str, str], list[EditRecord]] = defaultdict(list)
    for r in records:
        groups[request_key(r)].append(r)
    clashes = [g for g in groups.values() if len({_target(r) for r in g}) > 1]
    if clashes:
        described = "; ".join(" vs ".join(f"{r.id} -> {r.target_new!r}" for r in g) for g in clashes[:5])
        more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
        raise ConflictError(f"{len(clashes)} conflicting request(s): the same prompt and subject with different "
                            f"targets: {described}{more}. No edit can satisfy both; drop one of each, or edit the "
                            "records as given with conflicts='allow' (--allow-conflicts). Nothing was edited.")
    repeats = {id(g[0]): g[1:] for g in groups.values() if len(g) > 1}
    notes = [f"records {', '.join(r.id for r in later)} repeat record {first.id}'s request "
             f"({first.prompt!r} -> {first.target_new!r}): merged into {first.id}"
             for g in groups.values() if len(g) > 1 for first, later in [(g[0], g[1:])]]
    dropped = {id(r) for later in repeats.values() for r in later}
    return [r for r in records if id(r) not in dropped], notes
