"""Input checks shared by the CLI and the Python API, run before any model is loaded.

Two kinds: argparse types for command-line values (`integer(lo=1)`, `real(0, 1)`, `out_file`, ...), which
argparse turns into one `error:` line and exit code 2; and `coerce_fields(cls, values)`, which checks
hyperparameter values against the dataclass's own field types (int, float, bool, str, list[int], optional)
so a new field is checked without being listed anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import tempfile
import types
import typing
import unicodedata
from pathlib import Path

import torch

from intattn_tl.errors import IntattnError


class CheckError(IntattnError, ValueError):
    """A value that cannot be used; the message names it."""


# ----------------------------------------------------------------------------- values (API and CLI)


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckError(f"{name} must be an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise CheckError(f"{name} must be {_range(lo, hi)}, got {value}")
    return value


def check_real(name: str, value, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
               finite: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise CheckError(f"{name} must be a finite number, got {value}")
    if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
        raise CheckError(f"{name} must be {_range(lo, hi, lo_open)}, got {value}")
    return value


def check_limit(limit: int | None, name: str = "limit") -> int | None:
    """The one meaning of a record limit, API and CLI alike: None or 0 = all records, N > 0 = the first N."""
    if limit is None:
        return None
    return check_int(name, limit, lo=0) or None


def _range(lo, hi, lo_open=False) -> str:
    if lo is not None and hi is not None:
        return f"in [{lo}, {hi}]"
    return f"{'>' if lo_open else '>='} {lo}" if lo is not None else f"<= {hi}"


# ----------------------------------------------------------------------------- hyperparameter dataclasses


def _expect(tp) -> tuple[bool, object]:
    """(None allowed, the non-None type) of a field annotation like `list[int] | None`."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return len(args) < len(typing.get_args(tp)), args[0] if len(args) == 1 else tp
    return False, tp


def coerce_value(name: str, value, tp):
    """`value` checked against annotation `tp`. Numbers of hyperparameters are never negative here
    (counts, rates, weights, thresholds, layer indices, seeds); finer ranges are each class's `validate`."""
    optional, tp = _expect(tp)
    if value is None:
        if optional:
            return None
        raise CheckError(f"{name} must not be null")
    if tp is bool:
        if not isinstance(value, bool):
            raise CheckError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        return check_int(name, value, lo=0)
    if tp is float:
        return check_real(name, value, lo=0)
    if tp is str:
        if not isinstance(value, str):
            raise CheckError(f"{name} must be a string, got {value!r}")
        return value
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise CheckError(f"{name} must be a list like [{value!r}], got {value!r}")
        return [coerce_value(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    return value  # an annotation this checker does not know: left to the class


def coerce_fields(cls, values: dict, source: str = "") -> dict:
    """`values` checked (and ints/floats normalised) against dataclass `cls`'s field annotations."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - fields
    if unknown:
        raise CheckError(f"unknown {cls.__name__} field(s) {sorted(unknown)}{source}; known: {sorted(fields)}")
    try:
        return {k: coerce_value(k, v, hints[k]) for k, v in values.items()}
    except CheckError as err:
        raise CheckError(f"{err}{source}") from None


# ----------------------------------------------------------------------------- argparse types


def _arg(fn):
    """Turn a CheckError into argparse's own error (one line, exit code 2)."""
    def wrapped(text):
        try:
            return fn(text)
        except (CheckError, ValueError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    wrapped.__name__ = getattr(fn, "__name__", "value")
    return wrapped


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise CheckError(f"not a number: {text!r}") from None


def integer(lo: int | None = None, hi: int | None = None):
    return _arg(lambda text: check_int("value", _number(text), lo, hi))


def real(lo: float | None = None, hi: float | None = None, lo_open: bool = False, finite: bool = True):
    return _arg(lambda text: check_real("value", _number(text), lo, hi, lo_open, finite))


def int_list(lo: int | None = None):
    return _arg(lambda text: tuple(check_int("each value", _number(x), lo) for x in _items(text)))


def real_list(lo: float | None = None, hi: float | None = None):
    return _arg(lambda text: tuple(check_real("each value", _number(x), lo, hi) for x in _items(text)))


def name_list(choices):
    def parse(text):
        names = tuple(_items(text))
        bad = [n for n in names if n not in choices]
        if bad:
            raise CheckError(f"unknown {', '.join(map(repr, bad))}; choose from {', '.join(choices)}")
        return names
    return _arg(parse)


def _items(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise CheckError(f"expected a comma-separated list, got {text!r}")
    return items


@_arg
def device(text: str) -> str:
    try:
        dev = torch.device(text)
    except RuntimeError as err:
        raise CheckError(f"not a torch device: {text!r} ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckError(f"{text!r} requested but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CheckError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise CheckError(f"unsupported device type {dev.type!r}; use cpu or cuda")
    return text


def _placement_device(value, what: str):
    """One value of a device map / max_memory key: a GPU index, "cpu", "disk" or a usable "cuda:N"."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise CheckError(f"{what}: {value!r} is not a device (a GPU index, 'cpu', 'disk' or 'cuda:N')")
    if value in ("cpu", "disk"):
        return value
    device(f"cuda:{value}" if isinstance(value, int) else value)  # exists here, or a clear error
    return value


@_arg
def device_map(text: str) -> str | dict:
    """`--device-map`: accelerate's "auto" (or "balanced", "balanced_low_0", "sequential"), or a JSON object
    {HF module name: device}, e.g. '{"model.embed_tokens": 0, "model.layers.0": 0, ..., "lm_head": 1}'."""

    if text in ("auto", "balanced", "balanced_low_0", "sequential"):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        raise CheckError(f"not 'auto' nor a JSON object {{module: device}}: {text!r}") from None
    if not isinstance(value, dict) or not value:
        raise CheckError(f"device map must be 'auto' or a non-empty JSON object {{module: device}}, got {text!r}")
    return {str(k): _placement_device(v, f"device map entry {k!r}") for k, v in value.items()}


_SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B|B)?$", re.IGNORECASE)


@_arg
def max_memory(text: str) -> dict:
    """`--max-memory`: per-device budgets, "0=70GiB,1=70GiB,cpu=200GiB" or the same as a JSON object."""

    try:
        pairs = json.loads(text) if text.lstrip().startswith("{") else dict(x.split("=", 1) for x in _items(text))
    except ValueError:
        raise CheckError(f"expected DEVICE=SIZE,... (e.g. 0=70GiB,cpu=100GiB) or a JSON object, got {text!r}") from None
    if not isinstance(pairs, dict):
        raise CheckError(f"max memory must map devices to sizes, got {text!r}")
    out = {}
    for key, size in pairs.items():
        dev = _placement_device(key.strip() if isinstance(key, str) else key, "max memory")
        if not (isinstance(size, int) and size > 0) and not (isinstance(size, str) and _SIZE.match(size.strip())):
            raise CheckError(f"max memory for {key!r}: {size!r} is not a size (bytes, or e.g. 70GiB / 500MB)")
        size = size.strip() if isinstance(size, str) else size
        out[dev] = int(size) if isinstance(size, str) and size.isdigit() else size  # accelerate: bytes as an int
    return out


def writable_dir(path: str | Path, create: bool = True) -> Path:
    """`path` as a folder we can write into: created if missing (`create`), else only checked creatable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckError(f"{path} exists and is not a folder")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckError(f"cannot create folder {path}: {err.strerror}") from None
    base = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not base.is_dir():
        raise CheckError(f"cannot create folder {path}: {base} is not a folder")
    if not _can_create_in(base):
        raise CheckError(f"folder {base} is not writable")
    return path


def _can_create_in(folder: Path) -> bool:
    """Really try: permission bits say nothing to root, or on read-only and virtual file systems."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def writable_file(path: str | Path, create: bool = True) -> Path:
    """`path` as a file we can write (its folder created if missing, or only checked); never a folder."""
    path = Path(path)
    if path.is_dir() or str(path).endswith(os.sep):
        raise CheckError(f"{path} is a folder; give a file name")
    writable_dir(path.parent, create)
    if path.exists():
        try:
            open(path, "ab").close()  # appends nothing; fails where the file cannot be written
        except OSError as err:
            raise CheckError(f"{path} is not writable: {err.strerror}") from None
    return path


# on the command line: checked at parsing, created by the command when it writes (a refused run leaves nothing)
out_dir = _arg(lambda text: writable_dir(text, create=False))
out_file = _arg(lambda text: writable_file(text, create=False))


def free_text(value: str) -> str:
    """A free-text argument (a prompt, a subject, an answer) in Unicode NFC, as every record is."""
    return unicodedata.normalize("NFC", value)


@_arg
def in_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise CheckError(f"{path} is not a file" if path.exists() else f"{path} not found")
    return path
