"""The α sweep (the paper's Figure 4): IntAttn-Edit at a fixed T for a grid of α, one point at a time.

α = 0 puts the whole update into the MLPs (MEMIT), α = 1 into attention. `sweep_point` is what both the
local runner (`make sweep-alpha`) and the W&B agent (`experiments/sweep_agent.py`) call per α.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from .data import load_edits
from .editing import edit
from .evaluate import EvalConfig, evaluate, locality_reference, summarize
from .hparams import load_hparams
from .models import LoadedModel, load_model

DEFAULT_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
FIG4_METRICS = (("edit_succ", "Edit Succ."), ("portability", "Portability"), ("locality", "Locality"), ("fluency", "Fluency"))


def sweep_point(model: LoadedModel, records, alpha: float, eval_cfg: EvalConfig, ref=None,
                overrides: dict | None = None) -> dict:
    """Edit `records` with IntAttn-Edit at this α, evaluate, roll back; returns the summary metrics."""
    hp = load_hparams("intattn", model.name, {**(overrides or {}), "alpha": float(alpha)})
    t0 = time.time()
    result = edit(model, records, method="intattn", hparams=hp)
    try:
        rows = evaluate(model, records, eval_cfg, locality_ref=ref)
    finally:
        result.rollback()
    return {"alpha": float(alpha), "T": len(records), **summarize(rows), "seconds": time.time() - t0}


def run_sweep(model_name: str, dataset: str, T: int, grid=DEFAULT_GRID, out: Path = Path("runs"),
              eval_cfg: EvalConfig | None = None, wandb: bool = False, device: str = "cpu") -> Path:
    """All grid points (resuming finished ones) -> `<out>/sweep-<model>-<dataset>-T<T>/points.csv` + figure4.png."""
    eval_cfg = eval_cfg or EvalConfig()
    folder = Path(out) / f"sweep-{model_name}-{dataset}-T{T}"
    (folder / "points").mkdir(parents=True, exist_ok=True)
    todo = [a for a in grid if not (folder / "points" / f"alpha-{a:.3f}.json").exists()]
    if todo:
        model = load_model(model_name, device=device)
        records = load_edits(dataset, limit=T)
        ref = locality_reference(model, records, eval_cfg)
        for alpha in tqdm(todo, desc="alpha sweep", unit="point"):
            point = sweep_point(model, records, alpha, eval_cfg, ref) | {"model": model_name, "dataset": dataset}
            path = folder / "points" / f"alpha-{alpha:.3f}.json"
            path.with_suffix(".tmp").write_text(json.dumps(point))
            path.with_suffix(".tmp").replace(path)
            if wandb:
                from .tracking import finish, log_results, start_run

                wb = start_run("sweep-alpha", config={"alpha": alpha, "T": T, "model": model_name, "dataset": dataset},
                               name=f"{model_name}-alpha{alpha:.2f}", project="intattn-tl-alpha", dir=folder)
                log_results(wb, {k: v for k, v in point.items() if isinstance(v, (int, float))}, [point])
                finish(wb)
    points = sorted((json.loads(p.read_text()) for p in (folder / "points").glob("*.json")), key=lambda p: p["alpha"])
    with (folder / "points.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for p in points for k in p)))
        w.writeheader()
        w.writerows(points)
    plot_figure4(points, folder / "figure4.png", title=f"{model_name}, {dataset}, T={T}")
    return folder


def plot_figure4(points: list[dict], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    alphas = [p["alpha"] for p in points]
    for ax, (key, label) in zip(axes, FIG4_METRICS):
        ax.plot(alphas, [p.get(key, float("nan")) for p in points], marker="o")
        ax.set_xlabel("α (0 = MLP only, 1 = attention only)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Figure 4 — metrics vs α ({title})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
