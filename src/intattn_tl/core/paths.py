"""Where the toolkit keeps things on disk: the model/statistics cache and the benchmark data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$INTATTN_CACHE`, else `$XDG_CACHE_HOME/intattn_tl`, else `~/.cache/intattn_tl`."""
    if env := os.environ.get("INTATTN_CACHE"):
        root = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "intattn_tl"
    root.mkdir(parents=True, exist_ok=True)
    return root


def project_root() -> Path:
    """The checkout this package lives in (src/intattn_tl/core/paths.py -> repo root)."""
    return Path(__file__).resolve().parents[3]


def data_dir() -> Path | None:
    """`$INTATTN_DATA` (a folder laid out as the benchmark MANIFEST.md says), else None: the copies that ship
    inside the package (data.data_path)."""
    env = os.environ.get("INTATTN_DATA")
    return Path(env) if env else None


def packaged_data_dir() -> Path:
    """The gzip-compressed benchmark copies inside the installed package (see data/benchmarks/LICENSES.md)."""
    return Path(__file__).resolve().parents[1] / "data" / "benchmarks"
