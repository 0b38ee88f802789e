"""The heads' share of α's attention sum, with α's layers as the package has them (config/traced/<model>.json).

    python experiments/heads_alpha_share.py runs/heads-smollm2-135m                    # windows from the same run
    python experiments/heads_alpha_share.py runs/heads-qwen2.5-coder-0.5b --windows results/tracing/qwen2.5-coder-0.5b

The heads come from an `intattn trace --kinds head` folder (OUT/heads/<id>.npz). The attn_window curve at the last
subject token is averaged over the same facts (matched by prompt and subject), from the same folder's OUT/facts
store or from another trace's trace.npz + facts.json (e.g. the committed 100-fact bfloat16 traces). Facts whose
corruption lowers LD by < 1 logit are left out of both, as everywhere.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from intattn_tl.config.hparams import RESULTS_DIR
from intattn_tl.locate.heads import HeadTrace, summarize_heads
from intattn_tl.locate.tracing import MIN_LD_GAP, TraceResult, ld_facts


def window_effects(folder: Path) -> dict[tuple[str, str], np.ndarray]:
    """(prompt, subject) -> the attn_window normalized LD per layer at the last subject token."""
    out = {}
    if (folder / "facts" / "settings.json").exists():
        for path in sorted((folder / "facts").glob("*.npz")):
            r = TraceResult.load(path)
            out[(r.prompt, r.subject)] = r.ld_effect[r.kind("attn_window"), :, r.subject_span[1] - 1]
        return out
    z = np.load(folder / "trace.npz")
    kinds = list(z["kinds"])
    for i, f in enumerate(json.loads((folder / "facts.json").read_text())["facts"]):
        gap = f["ld_clean"] - f["ld_corrupt"]
        ld = z[f"fact{i}_logit_diff"][kinds.index("attn_window"), :, f["subject_span"][1] - 1]
        out[(f["prompt"], f["subject"])] = (ld - f["ld_corrupt"]) / gap if gap > 1e-6 else np.full_like(ld, np.nan)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run", type=Path, help="an `intattn trace --kinds head ...` output folder")
    p.add_argument("--windows", type=Path, help="where the attn_window traces are (default: the run folder)")
    args = p.parse_args()
    settings = json.loads((args.run / "heads" / "settings.json").read_text())
    model = settings["model"]
    traced = json.loads((RESULTS_DIR / f"{model}.json").read_text())
    heads = [HeadTrace.load(p) for p in sorted((args.run / "heads").glob("*.npz"))]
    windows = window_effects(args.windows or args.run)
    both = ld_facts([h for h in heads if (h.prompt, h.subject) in windows], MIN_LD_GAP)
    if not both:
        raise SystemExit("no fact has both a head trace and a window trace (with an LD drop >= 1)")
    curve = np.nanmean([windows[(h.prompt, h.subject)] for h in both], 0)
    summary = summarize_heads(both, min_ld_gap=MIN_LD_GAP, attn_window_curve=curve,
                              attn_layers=traced["attn_layers"], window=10)
    record = {"model": model, "package_alpha": traced["alpha"], "package_attn_layers": traced["attn_layers"],
              "package_curve_dtype": traced["dtype"], "n_heads_traced": len(heads), "n_matched_ld": len(both),
              "attn_window_curve_matched": [round(float(x), 4) for x in curve],
              "alpha_attention_sum": summary["alpha_attention_sum"],
              "concentration_per_fact": summary["concentration_per_fact"],
              "concentration_mean_grid": summary["concentration_mean_grid"], "top_heads": summary["top_heads"],
              "layer_share": summary["layer_share"]}
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
