"""Weights & Biases logging: offline unless the user configured W&B, so nothing leaves the machine by default.

Every command that makes results (eval, trace, edit, demo, reproduce) logs them by default: one run per
invocation (per cell / α point for reproductions), started when the results exist, so a failed command
leaves no half-logged run and wandb's few seconds of start-up are paid once. `--no-wandb` or
WANDB_MODE=disabled turns it off. The runs go to $WANDB_DIR/wandb, else ./wandb.

```python
add_arguments(parser)                # --no-wandb (and --wandb, the former opt-in, now a no-op)
if wanted(args):
    log_run("trace", command_config(args, kinds=kinds), summary={"alpha": 0.07}, tables={"curves": rows},
            images={"heatmap": png_path})
run = start_run("eval", config={"model": ..., "dataset": ...})   # or by hand:
log_results(run, summary, rows)      # aggregate metrics -> run summary, per-record rows -> a wandb.Table
run_dir = finish(run)                # offline: `wandb sync <run_dir>` uploads it later
```
"""

from __future__ import annotations

import argparse
import json
import math
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from intattn_tl.core.checks import CheckError, writable_dir
from intattn_tl.core.settings import code_version
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


# ----------------------------------------------------------------------------- one run per command


def add_arguments(p) -> None:
    """`--no-wandb`; `--wandb`, the opt-in from before logging was the default, is still accepted and does nothing."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-wandb", dest="wandb", action="store_false",
                   help="do not log to Weights & Biases (by default the results are logged, offline to ./wandb or "
                        "$WANDB_DIR unless you configured W&B; WANDB_MODE=disabled also turns it off)")
    g.add_argument("--wandb", dest="wandb", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(wandb=True)


def wanted(args) -> bool:
    """Log this command's results: not turned off by --no-wandb or WANDB_MODE=disabled."""
    return bool(getattr(args, "wandb", False)) and os.environ.get("WANDB_MODE") != "disabled"


def wandb_dir() -> Path:
    """The folder whose wandb/ subfolder receives the runs: $WANDB_DIR, else the working directory."""
    return Path(os.environ.get("WANDB_DIR") or Path.cwd())


def check_dir() -> Path:
    """Before any work: the runs' folder can be created and written (else the work would be done and its
    logging fail at the end)."""
    folder = wandb_dir() / "wandb"
    try:
        writable_dir(folder, create=False)
    except CheckError as err:
        raise EnvironmentProblem(f"W&B folder {folder} cannot be written ({err}): set WANDB_DIR to a writable "
                                 "folder, or pass --no-wandb") from None
    return folder


def command_config(args, **resolved) -> dict:
    """A command's run config: its arguments (paths as text), overridden by what they resolved to (`resolved`:
    hyperparameters with α and layers written out, the evaluation settings, ...), and the code version."""
    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("wandb", "debug")}
    return json.loads(json.dumps({**given, **resolved, "code": code_version()}, default=str))


def log_run(job_type: str, config: dict, summary: dict | None = None, tables: dict[str, list[dict]] | None = None,
            images: dict[str, str | Path] | None = None, lines: dict[str, tuple[str, str, str, str]] | None = None,
            name: str | None = None, group: str | None = None, project: str | None = None) -> Path:
    """One whole run: `config`; `summary` (name -> number, or a list such as critical layers) into the run
    summary, its numbers also as one history step; each of `tables` (name -> rows) as a wandb.Table; each of
    `images` (name -> PNG file) as a wandb.Image; each of `lines` (name -> (table, x, y, stroke)) as a line
    plot of that table, one line per value of `stroke`. Returns the run's local folder."""
    import wandb

    run = start_run(job_type, config, name=name, project=project, group=group)
    try:
        summary = {k: _loggable(v) for k, v in (summary or {}).items()}
        numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            run.log(numbers)
        for k, v in summary.items():
            run.summary[k] = v
        built = {key: _table(rows) for key, rows in (tables or {}).items()}
        media = {key: wandb.Image(str(path)) for key, path in (images or {}).items()}
        plots = {key: wandb.plot.line(built[table], x, y, stroke=stroke, title=key)
                 for key, (table, x, y, stroke) in (lines or {}).items()}
        if built or media or plots:
            run.log({**built, **media, **plots})
    except BaseException:
        run.finish(exit_code=1)
        raise
    return finish(run)


def where(run_dir: Path) -> str:
    """The line a command prints after logging: where the run is and how to upload it."""
    if wandb_mode() == "offline":
        return f"W&B run logged offline: {run_dir} (upload: wandb sync {run_dir}; --no-wandb turns logging off)"
    return f"W&B run: {run_dir}"


def edit_log(results: list, prefix: str = "") -> tuple[dict, dict[str, list[dict]]]:
    """(summary, tables) of one or more EditResults (sequential batches of one edit): `edit_steps`, what each
    chain step (MEMIT-style methods) or each edit (ROME, R-ROME, FT) did, the realised-vs-intended (cos, ratio)
    pairs as `<name>_cos` / `<name>_ratio`; `edit_weights`, |ΔW| and |W| before the edit per edited weight;
    the summary: the last batch's scalar stats (α, target norm, ...) and its sanity probe. `prefix` names
    the keys of each (demo: one run, two methods)."""
    steps, weights = [], []
    for b, result in enumerate(results):
        stats = result.stats
        for s in stats.get("steps", []) if isinstance(stats.get("steps"), list) else []:
            steps.append({"batch": b, "edit": "batch", **_flat(s)})
        for e in stats.get("per_edit", []):
            inner = [s for s in e.get("steps", []) if isinstance(s, dict)] if isinstance(e.get("steps"), list) else []
            steps += [{"batch": b, "edit": e.get("id"), **_flat(s)} for s in inner] or [
                {"batch": b, "edit": e.get("id"), **_flat({k: v for k, v in e.items() if k != "id"})}]
        for (kind, layer), original in result.tx.originals.items():
            delta, norm = float(result.tx.deltas[(kind, layer)].float().norm()), float(original.float().norm())
            weights.append({"batch": b, "kind": kind, "layer": layer, "delta_norm": delta, "weight_norm": norm,
                            "relative": delta / max(norm, 1e-12)})
    last = results[-1].stats
    summary = {k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    summary |= {k: v for k, v in (last.get("sanity") or {}).items() if isinstance(v, (int, float))}
    if isinstance(last.get("layers"), list):
        summary["layers"] = last["layers"]
    return ({f"{prefix}{k}": v for k, v in summary.items()},
            {f"{prefix}edit_steps": steps, f"{prefix}edit_weights": weights})


def _flat(stats: dict) -> dict:
    """Scalars as they are, (cos, ratio) pairs as two columns; nested lists and dicts left out."""
    out = {}
    for k, v in stats.items():
        if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            out[f"{k}_cos"], out[f"{k}_ratio"] = v
        elif isinstance(v, (int, float, str)) or v is None:
            out[k] = v
    return out


def _table(rows: list[dict]):
    import wandb

    columns = list(dict.fromkeys(k for r in rows for k in r))
    # mixed types allowed: a column that is a number in one row and text in another must not fail the
    # logging at the end of a long run
    return wandb.Table(columns=columns, data=[[_loggable(r.get(c)) for c in columns] for r in rows],
                       allow_mixed_types=True)


# ----------------------------------------------------------------------------- the pieces


def start_run(job_type: str, config: dict, name: str | None = None, project: str | None = None,
              dir: str | Path | None = None, mode: str | None = None, group: str | None = None):
    """A wandb run with `config`; its files go to `dir`/wandb (default: $WANDB_DIR, else the working directory).
    Offline runs start silently (the command says where the run went); wandb does not capture the console."""
    import wandb

    dir = Path(dir or wandb_dir())
    dir.mkdir(parents=True, exist_ok=True)
    mode = mode or wandb_mode()
    try:
        return wandb.init(project=project or os.environ.get("WANDB_PROJECT", PROJECT), job_type=job_type, name=name,
                          group=group, config=config, dir=str(dir), mode=mode, reinit="create_new",
                          settings=wandb.Settings(silent=mode == "offline", console="off"))
    except (wandb.errors.AuthenticationError, wandb.errors.CommError, wandb.errors.UsageError) as err:
        raise EnvironmentProblem(f"W&B could not start a run ({type(err).__name__}: {' '.join(str(err).split())[:200]}): "
                                 "run `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline") from None


def _loggable(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def log_results(run, summary: dict, rows: list[dict], table: str = "per_record") -> None:
    """`summary` (metric -> number) into the run summary and one history step; `rows` as a wandb.Table."""
    metrics = {k: _loggable(v) for k, v in summary.items()}
    run.log({k: v for k, v in metrics.items() if v is not None})
    for k, v in metrics.items():
        run.summary[k] = v
    run.log({table: _table(rows)})


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
