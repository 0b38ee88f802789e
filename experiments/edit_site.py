"""Where does an edit live? Causal tracing of the *new* fact on the edited model.

One batch of T records (the Table 2 cell's settings: the model's YAML, its traced α and layers) is edited by
each method and saved (`OUT/<method>/edit.pt`, reused only if its records and settings are this run's). On the
edited model the first N records are traced with answer = target_new, exactly as Figure 2 traces a known fact:
noise on the subject, restore the 10-layer attention / MLP windows at every layer, at the last subject token and
the last token (`key_tokens`). The unedited model is traced on the same prompts with its own greedy answer (the
fact as it knew it), as the baseline.

Per variant the report gives the facts kept (corruption lowers LD by ≥ 1 logit), how many of them the model
answers with the traced token, the attention share of the restored effect at the last subject token
(α's formula, at the package's attention / MLP layers, and over all layers) with a bootstrap interval over
facts, the same at the last token, and where the curves peak. Paired differences (method − MEMIT, method −
unedited) resample the facts kept in both. If IntAttn-Edit moves the recall toward attention, as the paper's
motivation implies, its attention share of the new fact is above MEMIT's.

Every trace is one file under OUT/<variant>/traces (a rerun resumes); the report goes to OUT/edit_site.json
and OUT/edit_site.png (the curves beside the unedited model's).

    python experiments/edit_site.py --model smollm2-135m --T 100 --trace 30 --out runs/edit-site/smollm2-135m
    python experiments/edit_site.py --out runs/edit-site/smollm2-135m --report-only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from intattn_tl.api import edit, own_answer
from intattn_tl.config.hparams import load_hparams
from intattn_tl.core.settings import edit_settings
from intattn_tl.data.records import load_edits
from intattn_tl.edit.result import apply_saved, saved_meta
from intattn_tl.edit.transaction import EditError
from intattn_tl.locate.balance import CLASSES, class_values
from intattn_tl.locate.tracing import MIN_LD_GAP, TraceResult, embedding_std, trace_fact
from intattn_tl.model.load import load_model

KINDS = ("attn_window", "mlp_window")
BOOT = 2000


def saved_edit(model, method: str, records, path: Path) -> Path:
    """The batch edit's file: computed once; a saved one is reused only if it was made for these records
    with these settings."""
    hp = load_hparams(method, model.name)
    settings = json.loads(json.dumps(edit_settings(method, hp, model), default=str))
    if path.exists():
        meta = saved_meta(model, path)
        if meta["settings"] != settings or meta["record_ids"] != [r.id for r in records]:
            raise EditError(f"{path} was made with other settings or records; use another --out")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    result = edit(model, records, method=method, hparams=hp, conflicts="allow", sanity=None)
    try:
        result.save(path)
    finally:
        result.rollback()
    return path


def trace_variant(model, records, folder: Path, answer, std: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for r in records:
        path = folder / f"{r.id.replace('/', '_')}.npz"
        if not path.exists():
            trace_fact(model, r.prompt, r.subject, answer(r), embed_std=std, kinds=KINDS, key_tokens=True).save(path)


def curves(res: TraceResult) -> dict[str, np.ndarray]:
    """Normalized LD per [kind, layer] at the last subject token and at the last token."""
    values = class_values(res, "ld")
    return {"last subject": values[CLASSES.index("last subject")][..., 0], "last": values[CLASSES.index("last")][..., 0]}


def share(grids: np.ndarray, attn_layers, mlp_layers) -> float:
    """α's formula on the mean curves of `grids` [fact, kind, layer]: Σ attn / (Σ attn + Σ mlp), sums clipped at 0."""
    mean = np.nanmean(grids, 0)
    a, m = max(0.0, float(np.nansum(mean[0, attn_layers]))), max(0.0, float(np.nansum(mean[1, mlp_layers])))
    return a / (a + m) if a + m > 0 else float("nan")


def interval(stat, *grids: np.ndarray, seed: int = 0) -> list[float]:
    """Percentile bootstrap (95 %) of stat(*grids) over facts, the same facts drawn for each grid (paired)."""
    rng = np.random.default_rng(seed)
    n = len(grids[0])
    draws = [stat(*(g[idx] for g in grids)) for idx in (rng.integers(0, n, n) for _ in range(BOOT))]
    return [float(np.nanpercentile(draws, 2.5)), float(np.nanpercentile(draws, 97.5))]


def load_variant(folder: Path) -> dict[str, TraceResult]:
    return {p.stem: TraceResult.load(p) for p in sorted((folder / "traces").glob("*.npz"))}


def report(out: Path, variants: list[str], attn_layers: list[int], mlp_layers: list[int]) -> dict:
    traced = {v: load_variant(out / v) for v in variants}
    kept = {v: {k: r for k, r in t.items() if r.ld_clean - r.ld_corrupt >= MIN_LD_GAP} for v, t in traced.items()}
    all_layers = None
    summary: dict = {"attn_layers": attn_layers, "mlp_layers": mlp_layers, "variants": {}}
    for v in variants:
        if not kept[v]:
            continue
        grids = {pos: np.stack([curves(r)[pos] for r in kept[v].values()]) for pos in ("last subject", "last")}
        all_layers = list(range(grids["last subject"].shape[-1]))
        row = {"traced": len(traced[v]), "kept": len(kept[v]),
               "answers_traced_token": sum(r.known for r in kept[v].values())}
        for pos, g in grids.items():
            at = {"package layers": (attn_layers, mlp_layers), "all layers": (all_layers, all_layers)}
            for name, (al, ml) in at.items():
                stat = lambda x, al=al, ml=ml: share(x, al, ml)  # noqa: E731
                row[f"attn share, {pos}, {name}"] = [share(g, al, ml), *interval(stat, g)]
            mean = np.nanmean(g, 0)
            row[f"curves, {pos}"] = {"attn_window": mean[0].round(4).tolist(), "mlp_window": mean[1].round(4).tolist()}
            row[f"peak layer, {pos}"] = {"attn_window": int(np.nanargmax(mean[0])), "mlp_window": int(np.nanargmax(mean[1]))}
        summary["variants"][v] = row
    for base in ("unedited", "memit"):
        for v in variants:
            both = sorted(set(kept.get(v, {})) & set(kept.get(base, {})))
            if v == base or len(both) < 5:
                continue
            g_v = np.stack([curves(kept[v][k])["last subject"] for k in both])
            g_b = np.stack([curves(kept[base][k])["last subject"] for k in both])
            diff = lambda x, y: share(x, attn_layers, mlp_layers) - share(y, attn_layers, mlp_layers)  # noqa: E731
            summary["variants"][v][f"attn share − {base}'s, last subject, package layers"] = [
                diff(g_v, g_b), *interval(diff, g_v, g_b), len(both)]
    (out / "edit_site.json").write_text(json.dumps(summary, indent=1))
    plot(out / "edit_site.png", summary)
    return summary


def plot(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["variants"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, kind in zip(axes, ("attn_window", "mlp_window")):
        for v, row in rows.items():
            ax.plot(row["curves, last subject"][kind], label=f"{v} ({row['kept']} facts)")
        ax.set_title(f"{kind}, last subject token")
        ax.set_xlabel("layer (window centre)")
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("normalized LD restored")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dataset", default="wiki_counterfact")
    ap.add_argument("--T", type=int, default=100, help="records edited in one batch")
    ap.add_argument("--trace", type=int, default=30, help="trace the first N of them")
    ap.add_argument("--methods", default="memit,intattn")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    methods = args.methods.split(",")
    variants = ["unedited", *methods]
    if not args.report_only:
        if args.trace > args.T:
            raise SystemExit(f"--trace {args.trace} > --T {args.T}: only edited records are traced")
        records = load_edits(args.dataset, limit=args.T)
        model = load_model(args.model)
        std = embedding_std(model)
        traced = records[: args.trace]
        with torch.no_grad():
            own = {r.id: own_answer(model, r.prompt) for r in traced}
        trace_variant(model, traced, args.out / "unedited" / "traces", lambda r: own[r.id], std)
        for method in methods:
            path = saved_edit(model, method, records, args.out / method / "edit.pt")
            tx = apply_saved(model, path)
            try:
                trace_variant(model, traced, args.out / method / "traces", lambda r: r.target_new, std)
            finally:
                tx.rollback()
            print(f"{method}: traced {len(traced)} new facts", flush=True)
        hp = load_hparams("intattn", model.name)
        layers = {"attn_layers": hp.resolved_attn_layers(model), "mlp_layers": hp.resolved_layers(model),
                  "alpha": hp.resolved_alpha(model), "model": args.model, "T": args.T, "dataset": args.dataset}
        (args.out / "layers.json").write_text(json.dumps(layers))
    layers = json.loads((args.out / "layers.json").read_text())
    summary = report(args.out, variants, layers["attn_layers"], layers["mlp_layers"])
    for v, row in summary["variants"].items():
        print(f"{v}: kept {row['kept']} of {row['traced']}, answering the traced token {row['answers_traced_token']}")
        for k, val in row.items():
            if k.startswith("attn share"):
                print(f"  {k}: {val[0]:.3f} [{val[1]:.3f}, {val[2]:.3f}]" + (f" over {val[3]} facts" if len(val) > 3 else ""))
        print(f"  peak layers, last subject: {row['peak layer, last subject']}")


if __name__ == "__main__":
    main()
