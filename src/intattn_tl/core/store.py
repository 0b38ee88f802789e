"""Atomic writes and verified reads: the one way every cache and result file goes to and from disk.

A file carries the sha256 of its content and the key it was made for (what it depends on), written in the
same atomic rename as the content. A reader states the key it expects; a file whose content does not hash
to its recorded digest, or whose key differs (say two cache files swapped), raises `IntegrityError`
naming the file. Caches rebuild on that error; results refuse to be used.

JSON files stay plain JSON objects (readable by any tool) with one extra field, `_integrity`. Torch files
hold {"key", "sha256", "data"}; the digest covers every tensor's dtype, shape and bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
import sys
from pathlib import Path

import torch
from torch import Tensor

from intattn_tl.errors import IntattnError

FIELD = "_integrity"


class IntegrityError(IntattnError, ValueError):
    """A stored file is unreadable, altered, or made for another key."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def _canon(key) -> str:
    return json.dumps(key, sort_keys=True, default=str)


def _digest_into(h, obj) -> None:
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(_canon(k).encode())
            _digest_into(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for x in obj:
            _digest_into(h, x)
        h.update(b"]")
    else:
        h.update(_canon(obj).encode())


def digest(obj) -> str:
    """sha256 over a JSON-like structure that may hold tensors (exact bytes, dtype and shape)."""
    h = hashlib.sha256()
    _digest_into(h, obj)
    return h.hexdigest()


def _atomic(path: Path, write) -> Path:
    """`write(tmp_path)` then rename onto `path`: a reader sees the old file or the whole new one. The temporary
    name is unique per writer (pid + random, as pids repeat across machines sharing a folder), so two
    processes writing the same file never write into one temporary file; the last rename wins whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """A plain text file (table, CSV, JSON without integrity record), atomically."""
    return _atomic(path, lambda tmp: tmp.write_text(text))


def write_once(path: str | Path, text: str) -> bool:
    """Create `path` holding `text` unless it exists; of writers racing to create it exactly one wins (a hard
    link of a finished temporary file is atomic and fails on an existing name). True if this call created it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: create-if-missing, no longer race-free
        if path.exists():
            return False
        os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: dict, key=None) -> Path:
    """`obj` plus its `_integrity` record (sha256 of the content, the key), atomically."""
    body = {k: v for k, v in obj.items() if k != FIELD}
    body = json.loads(json.dumps(body, default=str))  # what a reader will see (tuples -> lists, ...)
    record = {**body, FIELD: {"sha256": digest(body), "key": json.loads(_canon(key))}}
    return _atomic(path, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))


def read_json(path: str | Path, key=None, check_key: bool = True) -> dict:
    """The object written by `write_json`, without `_integrity`; `IntegrityError` unless it verifies."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(path, f"unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(record, dict) or not isinstance(record.get(FIELD), dict):
        raise IntegrityError(path, "no integrity record (empty, truncated, hand-made or written by old code)")
    check = record.pop(FIELD)
    if digest(record) != check.get("sha256"):
        raise IntegrityError(path, "content does not match its sha256 (altered or corrupt)")
    if check_key and _canon(check.get("key")) != _canon(key):
        raise IntegrityError(path, f"made for {_canon(check.get('key'))[:300]}, expected {_canon(key)[:300]}")
    return record


def write_torch(path: str | Path, data, key=None) -> Path:
    blob = {"key": _canon(key), "sha256": digest(data), "data": data}
    return _atomic(path, lambda tmp: torch.save(blob, tmp))


def read_torch(path: str | Path, key=None):
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means: not a file we wrote
        raise IntegrityError(path, f"unreadable ({type(err).__name__})") from None
    if not isinstance(blob, dict) or set(blob) != {"key", "sha256", "data"}:
        raise IntegrityError(path, "no integrity record (written by old code or by hand)")
    if digest(blob["data"]) != blob["sha256"]:
        raise IntegrityError(path, "content does not match its sha256 (altered or corrupt)")
    if blob["key"] != _canon(key):
        raise IntegrityError(path, f"made for {blob['key'][:300]}, expected {_canon(key)[:300]}")
    return blob["data"]


def cached(path: Path, key, what: str, reader=read_torch):
    """A verified cache entry, or None (with a note naming the file) when it is missing or fails the check."""
    if not Path(path).exists():
        return None
    try:
        return reader(path, key)
    except IntegrityError as err:
        print(f"[intattn] {what} cache {err}; rebuilding it", file=sys.stderr)
        return None


def read_result(path: str | Path, key, matches) -> dict:
    """A result file (reproduction cell, sweep point), verified. One written before results carried an
    integrity record (the committed ones) is read unverified if `matches(obj)` says it is the right result.
    Raises `IntegrityError`: a damaged result is never counted as done."""
    path = Path(path)
    try:
        return read_json(path, key)
    except IntegrityError as err:
        if "no integrity record" not in err.reason:
            raise
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(path, f"unreadable ({type(err).__name__})") from None
    try:
        ok = isinstance(obj, dict) and matches(obj)
    except (TypeError, ValueError):  # a field of the wrong type
        ok = False
    if not ok:
        raise IntegrityError(path, f"does not hold the result for {_canon(key)}")
    return obj


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Per-record rows as a CSV (columns: every key any row has, in order of appearance), written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    w.writeheader()
    w.writerows(rows)
    return write_text(path, buf.getvalue())


def read_rows(path: Path) -> list[dict]:
    """Per-record rows back from `write_rows`'s CSV (numbers as floats, empty fields as None)."""
    def value(text: str):
        try:
            return float(text) if text else None
        except ValueError:
            return text
    with Path(path).open(newline="") as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]
