"""Weights & Biases logging: offline unless the user configured W&B, so nothing leaves the machine by default.

```python
run = start_run("eval", config={"model": ..., "dataset": ...})
log_results(run, summary, rows)      # aggregate metrics -> run summary, per-record rows -> a wandb.Table
run_dir = finish(run)                # offline: `wandb sync <run_dir>` uploads it later
```
"""

from __future__ import annotations

import math
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from intattn_tl.errors import EnvironmentProblem

PROJECT = "intattn-tl"
ONLINE = ("online", "run", "shared")  # WANDB_MODE values that talk to the server


def has_credentials() -> bool:
    """WANDB_API_KEY is set, or ~/.netrc (or $NETRC) holds a login for the W&B host (`wandb login` writes it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_configured() -> bool:
    """True if the user set WANDB_MODE or has credentials."""
    return bool(os.environ.get("WANDB_MODE")) or has_credentials()


def wandb_mode() -> str:
    """The user's WANDB_MODE if set, except that an online mode without credentials runs offline (`wandb_notice`
    says so before the work); "online" if they logged in; else "offline"."""
    mode = os.environ.get("WANDB_MODE")
    if mode in ONLINE and not has_credentials():
        return "offline"
    return mode or ("online" if has_credentials() else "offline")


def wandb_notice() -> str | None:
    """What the user must hear before the work when their W&B settings cannot be followed, else None."""
    if os.environ.get("WANDB_MODE") in ONLINE and not has_credentials():
        return (f"WANDB_MODE={os.environ['WANDB_MODE']} but no W&B credentials (WANDB_API_KEY or `wandb login`): "
                "logging offline instead; upload later with `wandb sync <run dir>`")
    return None


def start_run(job_type: str, config: dict, name: str | None = None, project: str | None = None,
              dir: str | Path | None = None, mode: str | None = None):
    """A wandb run with `config`; its files go to `dir`/wandb (default: $WANDB_DIR, else the working directory)."""
    import wandb

    dir = Path(dir or os.environ.get("WANDB_DIR") or Path.cwd())
    dir.mkdir(parents=True, exist_ok=True)
    try:
        return wandb.init(project=project or os.environ.get("WANDB_PROJECT", PROJECT), job_type=job_type, name=name,
                          config=config, dir=str(dir), mode=mode or wandb_mode(), reinit="create_new")
    except (wandb.errors.AuthenticationError, wandb.errors.CommError, wandb.errors.UsageError) as err:
        raise EnvironmentProblem(f"W&B could not start a run ({type(err).__name__}: {' '.join(str(err).split())[:200]}): "
                                 "run `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline") from None


def _loggable(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def log_results(run, summary: dict, rows: list[dict], table: str = "per_record") -> None:
    """`summary` (metric -> number) into the run summary and one history step; `rows` as a wandb.Table."""
    import wandb

    metrics = {k: _loggable(v) for k, v in summary.items()}
    run.log({k: v for k, v in metrics.items() if v is not None})
    for k, v in metrics.items():
        run.summary[k] = v
    columns = list(dict.fromkeys(k for r in rows for k in r))
    run.log({table: wandb.Table(columns=columns, data=[[_loggable(r.get(c)) for c in columns] for r in rows])})


def finish(run) -> Path:
    """Close the run; returns its local directory (holding files/ and the .wandb log)."""
    run_dir = Path(run.dir).parent  # run.dir is <run_dir>/files
    run.finish()
    return run_dir


def log_artifact(name: str, files: list[Path], config: dict, type: str = "results", dir: str | Path | None = None) -> Path:
    """`files` as one W&B artifact `name` (a new version each time), logged from a run of its own."""
    import wandb

    run = start_run("collect", config=config, name=f"collect-{name}", dir=dir)
    artifact = wandb.Artifact(name, type=type)
    for f in files:
        artifact.add_file(str(f))
    run.log_artifact(artifact)
    return finish(run)
