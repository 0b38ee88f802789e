"""The steps of `intattn demo` (the command, `cli/demo.py`, prints and times them): trace one fact, say where α
and the layers come from, fill the editors' disk caches, edit / evaluate / roll back one method with the
rollback verified, and the metrics figure."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

import intattn_tl.api as api
from intattn_tl.config.hparams import RESULTS_DIR, tracing_result
from intattn_tl.edit.chain import edit_prefixes, target_hparams
from intattn_tl.edit.covariance import second_moments
from intattn_tl.edit.result import EditResult
from intattn_tl.edit.targets import target_deltas
from intattn_tl.edit.transaction import EditState
from intattn_tl.evaluation.metrics import NAMES, EvalConfig, evaluate, greedy_continuation
from intattn_tl.locate.plots import plot_fact
from intattn_tl.locate.tracing import TraceResult, trace_fact
from intattn_tl.model.load import bfloat16_is_fast, load_model
from intattn_tl.model.spec import LoadedModel, weights_fingerprint

METHODS = (("memit", "MEMIT"), ("intattn", "IntAttn-Edit"))
COLUMNS = ["edit_succ", "portability", "locality", "fluency"]
KINDS = ("attn_window", "mlp_window")  # the kinds the committed alpha comes from
TARGET_CHUNK = 4  # records per target-optimisation call: the progress bar's step (each record's delta is optimised
# and early-stopped on its own, so the chunking does not change the targets beyond float noise)


def trace_windows(model_name: str, fact: tuple[str, str, str], device: str, dtype: str, samples: int,
                  quiet: bool) -> tuple[dict[str, TraceResult], str]:
    """Trace `fact` with the fast path on a copy of the model in `dtype` ("auto": bfloat16 where it is fast),
    one result per window kind. Returns the results and the dtype used."""
    prompt, subject, answer = fact
    if dtype == "auto":
        dtype = "bfloat16" if bfloat16_is_fast(device) else "float32"
    model = load_model(model_name, device=device, dtype=getattr(torch, dtype))
    results = {kind: trace_fact(model, prompt, subject, answer, n_samples=samples, kinds=(kind,))
               for kind in tqdm(KINDS, desc="tracing", unit="kind", disable=quiet)}
    return results, dtype


def save_traces(results: dict[str, TraceResult], out: Path) -> list[Path]:
    """One heatmap PNG and one .npz per kind; returns the PNGs."""
    pngs = []
    for kind, r in results.items():
        fig = plot_fact(r, kind)
        fig.savefig(out / f"trace_{kind}.png", dpi=120)
        plt.close(fig)
        r.save(out / f"trace_{kind}.npz")
        pngs.append(out / f"trace_{kind}.png")
    return pngs


def strongest(results: dict[str, TraceResult]) -> dict[str, tuple[int, str, float]]:
    """kind -> (layer, token, normalized LD) of the strongest restoration; empty if the corruption did not lower
    the logit difference (no effect to show)."""
    r = next(iter(results.values()))
    if r.ld_clean - r.ld_corrupt <= 1e-6:
        return {}
    peaks = {}
    for kind, res in results.items():
        layer, t = np.unravel_index(np.nanargmax(res.ld_effect[0]), res.ld_effect[0].shape)
        peaks[kind] = (int(layer), res.tokens[t], round(float(res.ld_effect[0, layer, t]), 3))
    return peaks


def alpha_source(model: LoadedModel, hps: dict) -> dict:
    """α and the layer sets the editors use, the committed tracing result they come from (None if there is
    none), and which of them the YAML / --set / defaults changed."""
    traced = tracing_result(model.name)
    used = {"alpha": hps["intattn"].resolved_alpha(model), "mlp_layers": hps["memit"].resolved_layers(model),
            "attn_layers": hps["intattn"].resolved_attn_layers(model)}
    differs = sorted(k for k, v in used.items() if traced is None or traced.get(k) != v)
    return {"source": str(RESULTS_DIR / (model.name + ".json")) if traced else None, "committed": traced,
            "used": used, "differs": differs}


def warm_caches(model: LoadedModel, records, hps: dict, quiet: bool) -> None:
    """Compute what both editors read from the disk caches before they edit, once, with progress bars:
    the second moments of every edited site in one corpus pass, and the target deltas at the top edited layer."""
    memit_hp, ia_hp = hps["memit"], hps["intattn"]
    mlp, attn, ia_mlp = memit_hp.resolved_layers(model), ia_hp.resolved_attn_layers(model), ia_hp.resolved_layers(model)
    passes: dict[tuple, list] = {}  # one corpus pass per statistics setting (the YAMLs share one)
    for hp, sites in ((memit_hp, [("w_out", l) for l in mlp]),
                      (ia_hp, [("w_o", l) for l in attn] + [("w_out", l) for l in ia_mlp])):
        passes.setdefault((hp.mom2_n_samples, hp.mom2_dataset, hp.mom2_text), []).extend(sites)
    for (n_tokens, corpus, text), sites in passes.items():
        second_moments(model, list(dict.fromkeys(sites)), n_tokens, corpus, progress=not quiet, text=text)
    # MEMIT's targets sit at its top layer, IntAttn-Edit's at the top of both chains. With the same target
    # settings (the YAMLs share them) they are the same cache entries: optimised once, used by both.
    targets = {}
    for hp, layer in ((memit_hp, mlp[-1]), (ia_hp, max(attn + ia_mlp))):
        thp = target_hparams(hp)
        targets.setdefault((json.dumps(dataclasses.asdict(thp)), layer, hp.use_prefixes, str(hp.context_lengths)),
                           (hp, thp, layer))
    for hp, thp, layer in targets.values():
        prefixes = edit_prefixes(model, hp, EditState())
        bar = tqdm(total=len(records), desc=f"target deltas (layer {layer})", unit="fact", disable=quiet)
        for s in range(0, len(records), TARGET_CHUNK):
            target_deltas(model, records[s:s + TARGET_CHUNK], layer, thp, prefixes=prefixes)
            bar.update(len(records[s:s + TARGET_CHUNK]))
        bar.close()


@dataclass
class EditRun:
    """One editor's pass of the demo: its result (rolled back), per-record rows, the greedy continuation of the
    shown prompt while edited, and whether the rollback restored every weight bit for bit."""
    result: EditResult
    rows: list[dict]
    text: str
    edit_seconds: float
    restored: bool

    @property
    def edited(self) -> list[str]:
        return sorted(f"{k}[{l}]" for k, l in self.result.tx.originals)


def edit_evaluate_restore(model: LoadedModel, records, method: str, hp, cfg: EvalConfig, ref, prompt: str,
                          greedy_len: int, fingerprint: str, progress: bool) -> EditRun:
    """Edit `records`, evaluate them and continue `prompt` greedily, roll back, and verify the rollback against
    `fingerprint` (sha256 of every weight before the edit)."""
    t0 = time.time()
    result = api.edit(model, records, method, hp, progress=progress, conflicts="allow")
    t_edit = time.time() - t0
    try:
        rows = evaluate(model, records, cfg, locality_ref=ref)
        text = greedy_continuation(model, prompt, greedy_len)
    finally:
        result.rollback()
    return EditRun(result, rows, text, t_edit, weights_fingerprint(model) == fingerprint)


def plot_metrics(rows: list[dict], title: str):
    """Bars per method: the three percentages on the left, Fluency (its own scale) on the right."""
    fig, (ax, axf) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [3, 1]})
    pct = COLUMNS[:3]
    width = 0.8 / len(rows)
    for i, (r, colour) in enumerate(zip(rows, ("tab:gray", "tab:blue", "tab:red"))):
        x = np.arange(len(pct)) + (i - (len(rows) - 1) / 2) * width
        bars = ax.bar(x, [r[k] for k in pct], width, label=r["method"], color=colour)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
        bar = axf.bar([i], [r["fluency"]], 0.8, color=colour)
        axf.bar_label(bar, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(pct)), [NAMES[k] for k in pct])
    ax.set_ylabel("%")
    ax.set_ylim(0, 110)
    ax.legend(fontsize=8, loc="upper left")
    axf.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=30, fontsize=7)
    axf.set_title(NAMES["fluency"], fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
