"""The exact settings a result was made with, and what differs between two of them.

Every saved edit, reproduction cell and sweep point records `edit_settings(...)`: the method's hyperparameters
with the values the model resolved them to (α and layers from a tracing result are written out, not "None"),
and the code version. A run that would add results to a folder made with other settings is refused with
`differences(...)` naming each one.
"""

from __future__ import annotations

import dataclasses
import subprocess

from intattn_tl.core.paths import project_root
from intattn_tl.version import __version__

_CODE: dict | None = None


def code_version() -> dict:
    """The package version and, in a git checkout, the commit (and whether the tree had changes), read once
    per process: the code that runs is the code imported at the start, so a commit made while a long run
    writes its results must not be recorded as theirs (entry points call this before any work)."""
    global _CODE
    if _CODE is None:
        _CODE = _read_code_version()
    return dict(_CODE)


def _read_code_version() -> dict:
    out = {"package": __version__, "git": None}
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(project_root()), *a], capture_output=True,  # noqa: E731
                                        text=True, timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode == 0:
            dirty = run("status", "--porcelain", "--untracked-files=no", "--", "src").stdout.strip()
            out["git"] = head.stdout.strip()[:12] + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def resolved_hparams(hparams, model) -> dict:
    """The dataclass's fields, with every `resolved_<field>(model)` (and ROME/FT's `layer(model)`) filled in."""
    if not dataclasses.is_dataclass(hparams):
        return {}
    out = dataclasses.asdict(hparams)
    for name in dir(hparams):
        if name.startswith("resolved_") and callable(getattr(hparams, name)):
            out[name.removeprefix("resolved_")] = getattr(hparams, name)(model)
    if callable(getattr(hparams, "layer", None)):
        out["layers"] = [hparams.layer(model)]
    return out


def edit_settings(method: str, hparams, model) -> dict:
    """What decides an edit's numbers: method, model (and its dtype when not float32), resolved hyperparameters."""
    out = {"method": method, "model": model.name, "hparams": resolved_hparams(hparams, model)}
    dtype = str(model.spec.family.weight("w_out", 0).dtype).removeprefix("torch.")
    return out if dtype == "float32" else {**out, "dtype": dtype}  # float32 results keep the settings they had


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs (nested dicts walked)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
