"""The errors a user can fix: bad input (`IntattnError`) and the machine around us (`EnvironmentProblem`).

The command line prints either as one line on stderr and exits with code 2, never as an internal error.
Every error class of the toolkit that means "this input cannot be used" derives from `IntattnError`, so a
new one is caught without being listed anywhere. An `OSError` that is about the environment (a full disk,
a read-only or forbidden folder) becomes an `EnvironmentProblem` naming the path and the fix.
"""

from __future__ import annotations

import errno
from pathlib import Path


class IntattnError(Exception):
    """Input that cannot be used; the message names it and says what to do."""


class EnvironmentProblem(IntattnError):
    """The machine stops the work (disk full, folder read-only or forbidden, W&B not logged in); nothing is
    wrong with the input. The message names the path or setting and the fix."""


FULL = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS,)
FORBIDDEN = (errno.EACCES, errno.EPERM)
ENVIRONMENT_ERRNOS = FULL + READ_ONLY + FORBIDDEN

# Where else to write, by the folder a path lies in (`where` names the folders of a run: cache, out).
ELSEWHERE = {"cache": "point INTATTN_CACHE at another folder", "out": "pass another --out", "save": "pass another --save"}


def _elsewhere(path: Path | None, where: dict[str, Path] | None) -> str:
    for name, folder in (where or {}).items():
        if path is not None and _inside(path, Path(folder)):
            return ELSEWHERE.get(name, "use another folder")
    return "use another folder"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.absolute().relative_to(folder.absolute())
        return True
    except ValueError:
        return False


def environment_problem(err: BaseException, where: dict[str, Path] | None = None) -> EnvironmentProblem | None:
    """`err` as an EnvironmentProblem naming its path and the fix, or None when it is not about the environment."""
    if not isinstance(err, OSError) or err.errno not in ENVIRONMENT_ERRNOS:
        return None
    path = Path(err.filename) if err.filename else None
    folders = ", ".join(f"{name} {folder}" for name, folder in (where or {}).items())
    at = f" at {path}" if path else f" under one of the folders this command writes ({folders})" if folders else ""
    if err.errno == errno.ENOSPC:
        what, fix = f"no space left on the device{at}", "free space there"
    elif err.errno == errno.EDQUOT:
        what, fix = f"disk quota exceeded{at}", "free space there"
    elif err.errno in READ_ONLY:
        what, fix = f"read-only file system{at}", "make it writable"
    else:
        what, fix = f"permission denied{at}", "make it writable for this user"
    return EnvironmentProblem(f"{what}: {fix}, or {_elsewhere(path, where)}; finished results are kept, so the "
                              "same command resumes once fixed")


class ModelLoadError(IntattnError, RuntimeError):
    """A model could not be found, fetched or loaded; the message says what to do."""


class ReproduceError(IntattnError, ValueError):
    """A reproduction that would mix incompatible cells into one folder."""
