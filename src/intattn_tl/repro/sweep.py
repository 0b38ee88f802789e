"""The α sweep (the paper's Figure 4): IntAttn-Edit at a fixed T for a grid of α, one point at a time.

α = 0 puts the whole update into the MLPs (MEMIT), α = 1 into attention. `sweep_point` is what both the
local runner (`make sweep-alpha`) and the W&B agent (`experiments/sweep_agent.py`) call per α.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
from tqdm.auto import tqdm

from intattn_tl.api import check_hparams
from intattn_tl.config.hparams import load_hparams, tracing_result
from intattn_tl.core.checks import CheckError, check_int, check_real, writable_dir
from intattn_tl.core.settings import code_version, edit_settings
from intattn_tl.core.store import _atomic, read_rows, write_text
from intattn_tl.data.records import load_edits
from intattn_tl.edit.transaction import EditError
from intattn_tl.evaluation.intervals import mean_interval, paired_difference
from intattn_tl.evaluation.metrics import EvalConfig, locality_reference, summarize
from intattn_tl.model.load import load_model
from intattn_tl.model.spec import LoadedModel
from intattn_tl.repro import tracking
from intattn_tl.repro.results import edit_and_evaluate, read_verified, refuse_other_settings, scoring, write_result

DEFAULT_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
PROJECT = "intattn-tl-alpha"  # the W&B project of the α points (experiments/sweep_alpha.yaml's too)
FIG4_METRICS = (("edit_succ", "Edit Succ."), ("portability", "Portability"), ("locality", "Locality"), ("fluency", "Fluency"))
CONTRAST_METRICS = ("edit_succ", "generalization", "portability", "locality", "fluency")


def sweep_point(model: LoadedModel, records, alpha: float, eval_cfg: EvalConfig, ref=None,
                overrides: dict | None = None) -> dict:
    """Edit `records` with IntAttn-Edit at this α, evaluate, roll back; returns the summary metrics."""
    return point_and_rows(model, records, alpha, eval_cfg, ref, overrides)[0]


def point_and_rows(model: LoadedModel, records, alpha: float, eval_cfg: EvalConfig, ref=None,
                   overrides: dict | None = None) -> tuple[dict, list[dict]]:
    """`sweep_point`'s summary and the per-record rows it was made from."""
    hp = load_hparams("intattn", model.name, {**(overrides or {}), "alpha": float(alpha)})
    rows, t_edit, t_eval = edit_and_evaluate(model, "intattn", records, hp, eval_cfg, ref)
    return {"alpha": float(alpha), "T": len(records), **summarize(rows), "seconds": t_edit + t_eval}, rows


def run_sweep(model_name: str, dataset: str, T: int, grid=DEFAULT_GRID, out: Path = Path("runs"),
              eval_cfg: EvalConfig | None = None, wandb: bool = False, device: str = "cpu",
              placement: dict | None = None) -> Path:
    """All grid points (resuming finished ones) -> `<out>/sweep-<model>-<dataset>-T<T>/points.csv` + figure4.png."""
    eval_cfg = eval_cfg or EvalConfig()
    grid = _check_grid(grid, T)
    folder = writable_dir(Path(out) / f"sweep-{model_name}-{dataset}-T{T}" / "points").parent
    done = {p: read_point(p) for p in sorted((folder / "points").glob("alpha-*.json"))}
    todo = [a for a in grid if point_path(folder, a) not in done]
    # The model is loaded even when every point exists: the points' settings are checked against this run's
    # (dtype, YAML, tracing defaults), so a figure is never shown for settings it was not made with.
    model = load_model(model_name, **{"device": device, **(placement or {})})  # placement: device(_map), max_memory
    hps = {a: load_hparams("intattn", model.name, {"alpha": a}) for a in grid}
    for hp in hps.values():  # every point checked before the first one runs
        check_hparams("intattn", hp, model)
    _check_resume(done, _point_settings(model, hps[grid[0]], dataset, eval_cfg))
    if todo:
        records = load_edits(dataset, limit=T)
        ref = locality_reference(model, records, eval_cfg)
        for alpha in tqdm(todo, desc="alpha sweep", unit="point"):
            point, rows = point_and_rows(model, records, alpha, eval_cfg, ref)
            point |= {"model": model_name, "dataset": dataset}
            point["settings"] = {**_point_settings(model, hps[alpha], dataset, eval_cfg), "code": code_version()}
            write_result(point_path(folder, alpha), point, rows, {"alpha": round(alpha, 3)})
            if wandb:
                log_point(point, rows, eval_cfg, folder.name)
    write_points(folder, title=f"{model_name}, {dataset}, T={T}")
    return folder


def log_point(point: dict, rows: list[dict], eval_cfg: EvalConfig, group: str, extra: dict | None = None) -> Path:
    """One W&B run per α point: config = its resolved settings with α (hyperparameters, model, dtype, T,
    dataset, evaluation, code version) and `extra`, summary = its metrics, table `per_record` = its rows."""
    config = {"alpha": point["alpha"], "T": point["T"], **point["settings"], "eval_config": asdict(eval_cfg),
              **(extra or {})}
    config["hparams"] = {**config["hparams"], "alpha": point["alpha"]}
    numbers = {k: v for k, v in point.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return tracking.log_run("sweep-alpha", json.loads(json.dumps(config, default=str)), numbers, {"per_record": rows},
                            name=f"{point['model']}-alpha{point['alpha']:.2f}", group=group, project=PROJECT)


def write_points(folder: Path, title: str) -> list[dict]:
    """points.csv + figure4.png from every point file in `folder`/points, whoever wrote it; returns the points.
    Points with per-record rows get 95 % bootstrap intervals (`<metric>_low` / `_high`), drawn as error bars,
    and contrasts.csv sets each of them against α = 0 (MEMIT's edit), paired over the records; the model's
    traced α, if committed, is marked."""
    points, rows_at = [], {}
    for path in sorted((folder / "points").glob("alpha-*.json")):
        point = {k: v for k, v in read_point(path).items() if k != "settings"}
        if path.with_suffix(".csv").exists():
            rows = rows_at[point["alpha"]] = read_rows(path.with_suffix(".csv"))
            for key, _ in FIG4_METRICS:
                ci = mean_interval(rows, key)
                point |= {f"{key}_low": ci.low, f"{key}_high": ci.high}
        points.append(point)
    points.sort(key=lambda p: p["alpha"])
    _write_contrasts(folder / "contrasts.csv", rows_at)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for p in points for k in p)))
    w.writeheader()
    w.writerows(points)
    write_text(folder / "points.csv", buf.getvalue())
    traced = tracing_result(points[0]["model"]) if points and points[0].get("model") else None
    plot_figure4(points, folder / "figure4.png", title=title, traced_alpha=traced and traced.get("alpha"))
    return points


def _write_contrasts(path: Path, rows_at: dict[float, list[dict]]) -> None:
    """Each α's metrics minus α = 0's over the records both scored, with 95 % bootstrap intervals."""
    if 0.0 not in rows_at:
        return
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["alpha", "minus_alpha", "metric", "mean", "low", "high", "n", "level"])
    for alpha in sorted(a for a in rows_at if a != 0.0):
        for key in CONTRAST_METRICS:
            d = paired_difference(rows_at[0.0], rows_at[alpha], key)
            w.writerow([alpha, 0.0, key, d.mean, d.low, d.high, d.n, d.level])
    write_text(path, buf.getvalue())


def _check_grid(grid, T: int) -> tuple[float, ...]:
    try:
        check_int("T", T, lo=1)
        if not len(grid):
            raise CheckError("the alpha grid is empty")
        return tuple(check_real("each alpha of the grid", a, 0.0, 1.0) for a in grid)
    except CheckError as err:
        raise EditError(str(err)) from None


def _point_settings(model: LoadedModel, hp, dataset: str, eval_cfg: EvalConfig) -> dict:
    """A point's settings minus α (which is what varies): resolved hyperparameters, dataset, scoring."""

    s = edit_settings("intattn", hp, model)
    s["hparams"] = {k: v for k, v in s["hparams"].items() if k != "alpha"}
    return json.loads(json.dumps({**s, "dataset": dataset, "eval": scoring(eval_cfg)},
                                 default=str))


def point_path(folder: Path, alpha: float) -> Path:
    return folder / "points" / f"alpha-{alpha:.3f}.json"


def read_point(path: Path) -> dict:
    alpha = path.stem.removeprefix("alpha-")
    return read_verified(path, {"alpha": round(float(alpha), 3)}, lambda p: f"{p.get('alpha', -1):.3f}" == alpha,
                         EditError, "sweep point")


def _check_resume(done: dict, settings: dict) -> None:
    for path, point in done.items():
        refuse_other_settings(path, point.get("settings") or None, settings, EditError)


def plot_figure4(points: list[dict], path: Path, title: str = "", traced_alpha: float | None = None) -> Path:
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    alphas = [p["alpha"] for p in points]
    nan = float("nan")
    for ax, (key, label) in zip(axes, FIG4_METRICS):
        y = [p.get(key, nan) for p in points]
        err = [[max(0.0, v - p.get(f"{key}_low", v)) for v, p in zip(y, points)],  # a NaN bound: max gives 0, no bar
               [max(0.0, p.get(f"{key}_high", v) - v) for v, p in zip(y, points)]]
        ax.errorbar(alphas, y, yerr=err, marker="o", capsize=3)
        if traced_alpha is not None:
            ax.axvline(traced_alpha, color="grey", linestyle="--", linewidth=1, label=f"traced α {traced_alpha:.3f}")
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel("α (0 = MLP only, 1 = attention only)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Figure 4 — metrics vs α ({title})")
    fig.tight_layout()
    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
