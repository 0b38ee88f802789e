"""The method registry, a leaf module: each method module registers its `run` and hparams class here;
`intattn_tl.methods` imports every method module, so `from intattn_tl.methods import get_method` sees them all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from intattn_tl.edit.transaction import EditError


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


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise EditError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]
