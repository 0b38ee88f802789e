"""Checks of the machine a command runs on, made before any work: folders writable, room for what will be
written, every file named in `--set` readable, W&B usable. A problem is an `EnvironmentProblem` naming the
path or setting and the fix, so a long run never fails at its end for a reason known at its start.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from intattn_tl.core.checks import CheckError, writable_dir
from intattn_tl.core.paths import cache_dir
from intattn_tl.errors import EnvironmentProblem

MIB = 1 << 20
# What a run writes into --out besides the model cache: cells, CSVs, figures, arrays (the largest, a trace of
# 100 facts, is a few MB). Generous on purpose: the check is for a nearly full disk, not a tight one.
MIN_FREE_OUT = 64 * MIB
# What the statistics / targets / prefix caches add to the cache folder in one run (a covariance of the 1.5B's
# d_mlp = 8960 in float32 is 320 MB per layer).
MIN_FREE_CACHE = 512 * MIB
# Hyperparameter fields that name a file: a `--set` value for one of these is checked to be readable.
PATH_SUFFIXES = ("_dataset", "_path", "_file", "_dir")


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    base = next(p for p in (path, *path.absolute().parents) if p.exists())
    return shutil.disk_usage(base).free


def require_space(path: Path, need: int, setting: str) -> None:
    """Refuse before work when the file system of `path` has less than `need` bytes free."""
    free = free_bytes(path)
    if free < need:
        raise EnvironmentProblem(f"{setting} {path} has {free / MIB:.0f} MiB free, this run needs about "
                                 f"{need / MIB:.0f} MiB there: free space, or {_elsewhere(setting)}")


def _elsewhere(setting: str) -> str:
    return "point INTATTN_CACHE at another folder" if setting == "cache folder" else f"pass another {setting}"


def writable(path: Path, setting: str) -> Path:
    """`path` as a folder this process can create files in (created if missing), or an EnvironmentProblem."""
    try:
        return writable_dir(path)
    except CheckError as err:
        raise EnvironmentProblem(f"{setting} {path} cannot be written ({err}): make it writable, or "
                                 f"{_elsewhere(setting)}") from None


def check_cache(need: int = MIN_FREE_CACHE) -> Path:
    """The cache folder ($INTATTN_CACHE, ...) writable and with `need` bytes free."""
    try:
        folder = cache_dir()
    except OSError as err:
        raise EnvironmentProblem(f"cache folder {err.filename or os.environ.get('INTATTN_CACHE')} cannot be created "
                                 f"({err.strerror}): point INTATTN_CACHE at a writable folder") from None
    writable(folder, "cache folder")
    require_space(folder, need, "cache folder")
    return folder


def check_out(path: Path, setting: str = "--out", need: int = MIN_FREE_OUT) -> None:
    """An output folder (or a file's folder) writable, without creating it, and with room."""
    try:
        writable_dir(path, create=False)
    except CheckError as err:
        raise EnvironmentProblem(f"{setting} {path} cannot be written ({err}): make it writable, or pass another "
                                 f"{setting}") from None
    require_space(path, need, setting)


def readable_file(name: str, value: str) -> None:
    """A setting that names a file: it exists, is a file, and this process can read it."""
    path = Path(value).expanduser()
    problem = ("not found" if not path.exists() else "is a folder, not a file" if path.is_dir() else None)
    if problem is None:
        try:
            with path.open("rb") as f:
                f.read(1)
        except OSError as err:
            problem = f"cannot be read ({err.strerror})"
    if problem:
        raise EnvironmentProblem(f"--set {name}={value}: {path} {problem}; give a readable file")


def check_setting_paths(items: list[str]) -> None:
    """Every `--set [METHOD.]KEY=VALUE` whose KEY names a file (PATH_SUFFIXES) with a string VALUE: readable.
    Malformed items are left to the command, which names them."""
    for item in items:
        key, sep, text = item.partition("=")
        name = key.strip().rpartition(".")[2]
        if not sep or not name.endswith(PATH_SUFFIXES):
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        if isinstance(value, str):
            readable_file(key.strip(), value)
