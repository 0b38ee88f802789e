"""`intattn demo`: the method in miniature on one model, a few minutes on a laptop-class CPU.

1. trace one known fact (corrupt the subject, restore attention / MLP windows) -> heatmap PNGs;
2. read alpha and the critical layers from the committed tracing result (`model_results/<model>.json`);
3. edit the first N WikiData_counterfact records with MEMIT, then (after a rollback) with IntAttn-Edit,
   evaluating pre-edit and after each edit; greedy continuation of one edited prompt before and after;
4. roll back and check that every parameter is bit-for-bit the pre-edit one (sha256 over all weights).
Everything goes into --out; the last lines list what was written where.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from intattn_tl.repro import tracking

METHODS = (("memit", "MEMIT"), ("intattn", "IntAttn-Edit"))
COLUMNS = ["edit_succ", "portability", "locality", "fluency"]
FACT = ("The Eiffel Tower is located in the city of", "Eiffel Tower", "Paris")
KINDS = ("attn_window", "mlp_window")  # the kinds the committed alpha comes from
TARGET_CHUNK = 4  # records per target-optimisation call: the progress bar's step (each record's delta is optimised
# and early-stopped on its own, so the chunking does not change the targets beyond float noise)


def add_arguments(p) -> None:
    from intattn_tl.core.checks import device, free_text, integer, out_dir
    from intattn_tl.model.registry import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"known model, HF id or local dir (default {DEFAULT_MODEL})")
    p.add_argument("--limit", type=integer(lo=1), default=20, help="edit the first N WikiData_counterfact records (default 20)")
    p.add_argument("--out", type=out_dir, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a hyperparameter of both editors (YAML value), e.g. --set mom2_n_samples=20000")
    p.add_argument("--fact", nargs=3, type=free_text, default=list(FACT), metavar=("PROMPT", "SUBJECT", "ANSWER"),
                   help="the fact to trace (default: the Eiffel Tower / Paris)")
    p.add_argument("--samples", type=integer(lo=1), default=10, help="noise samples when tracing the fact (default 10)")
    p.add_argument("--trace-dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="dtype of the tracing copy of the model; auto (default): bfloat16 where it is faster "
                        "(a GPU, a CPU with avx512_bf16 / AMX), float32 elsewhere")
    p.add_argument("--fluency-len", type=integer(lo=1), default=100, help="tokens per fluency sample, prompt included (default 100)")
    p.add_argument("--greedy-len", type=integer(lo=1), default=16, help="new tokens of the before/after continuation (default 16)")
    p.add_argument("--data-dir", help="benchmark folder (default $INTATTN_DATA, else the copies shipped with the package)")
    p.add_argument("--device", default="cpu", type=device)
    p.add_argument("--threads", type=integer(lo=1), help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    tracking.add_arguments(p)  # one run: both edits' settings and chain statistics, the metrics, the figures


def _check(args) -> None:
    from intattn_tl.data.records import DataError

    for name in ("limit", "samples", "fluency_len", "greedy_len"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise DataError(f"--threads must be >= 1, got {args.threads}")
    if args.out.exists() and not args.out.is_dir():
        raise DataError(f"--out {args.out} exists and is not a folder")


class _Log:
    """Numbered stage headers, stage timings (wall and CPU: on a shared machine the CPU seconds are what
    the stage costs), and every printed line kept for OUT/demo.log."""

    def __init__(self, n: int):
        self.n, self.i, self.lines, self.seconds, self.cpu = n, 0, [], {}, {}
        self._cpu0 = time.process_time()

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def stage(self, title: str) -> float:
        self.i += 1
        self(f"\n[{self.i}/{self.n}] {title}")
        self._cpu0 = time.process_time()
        return time.time()

    def took(self, name: str, t0: float) -> str:
        self.seconds[name] = round(time.time() - t0, 1)
        self.cpu[name] = round(time.process_time() - self._cpu0, 1)
        return f"{self.seconds[name]:.1f}s (CPU {self.cpu[name]:.1f}s)"


# ----------------------------------------------------------------------------- stages


def trace_one_fact(args, out: Path, log: _Log) -> dict:
    """Trace `args.fact` with the fast path on a copy of the model in `--trace-dtype`; one PNG per kind."""
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from intattn_tl.locate.plots import plot_fact
    from intattn_tl.locate.tracing import trace_fact
    from intattn_tl.model.load import bfloat16_is_fast, load_model

    prompt, subject, answer = args.fact
    if args.trace_dtype == "auto":
        args.trace_dtype = "bfloat16" if bfloat16_is_fast(args.device) else "float32"
    model = load_model(args.model, device=args.device, dtype=getattr(torch, args.trace_dtype))
    results = {}
    for kind in tqdm(KINDS, desc="tracing", unit="kind", disable=args.quiet):
        results[kind] = trace_fact(model, prompt, subject, answer, n_samples=args.samples, kinds=(kind,))
    pngs = []
    for kind, r in results.items():
        fig = plot_fact(r, kind)
        fig.savefig(out / f"trace_{kind}.png", dpi=120)
        plt.close(fig)
        r.save(out / f"trace_{kind}.npz")
        pngs.append(out / f"trace_{kind}.png")
    r = results[KINDS[0]]
    peaks = {}  # kind -> (layer, token, normalized LD) of the strongest restoration
    if r.ld_clean - r.ld_corrupt > 1e-6:  # else the corruption did not lower LD: no effect to show
        for kind, res in results.items():
            layer, t = np.unravel_index(np.nanargmax(res.ld_effect[0]), res.ld_effect[0].shape)
            peaks[kind] = (int(layer), res.tokens[t], round(float(res.ld_effect[0, layer, t]), 3))
    log(f"fact: {prompt!r} -> {answer!r} (subject {subject!r}); P(answer) clean {r.p_clean:.3f}, subject corrupted "
        f"{r.p_corrupt:.3f} ({args.samples} noise samples, {args.trace_dtype}, fast path)")
    log("strongest restoration (normalized LD): " + (", ".join(
        f"{k} at layer {layer}, token {tok!r}: {v}" for k, (layer, tok, v) in peaks.items()) or "none (no LD drop)"))
    return {"prompt": prompt, "subject": subject, "answer": answer, "p_clean": r.p_clean, "p_corrupt": r.p_corrupt,
            "strongest": peaks, "figures": [str(p) for p in pngs]}


def read_alpha(model, hps: dict, log: _Log) -> dict:
    """alpha and the layer sets the editors will use, and where they come from."""
    from intattn_tl.config.hparams import RESULTS_DIR, tracing_result

    traced = tracing_result(model.name)
    memit_hp, ia_hp = hps["memit"], hps["intattn"]
    used = {"alpha": ia_hp.resolved_alpha(model), "mlp_layers": memit_hp.resolved_layers(model),
            "attn_layers": ia_hp.resolved_attn_layers(model)}
    if traced:
        log(f"committed tracing result {RESULTS_DIR / (model.name + '.json')}:")
        log(f"  alpha = {traced['alpha']}  attention layers {traced['attn_layers']}  MLP layers {traced['mlp_layers']}")
        log(f"  from {traced['n_facts']} known facts ({traced['n_facts_ld']} in the LD averages), "
            f"{traced['curve']}, {traced['dtype']}; made by: {traced['command']}")
        log("  alpha = sum LD(attn layers) / (sum LD(MLP layers) + sum LD(attn layers)) at the last subject token")
    else:
        log(f"no committed tracing result for {model.name} ({RESULTS_DIR}/<model>.json): the editors use their defaults")
    differs = {k: v for k, v in used.items() if traced is None or traced.get(k) != v}
    log(f"editors use: alpha = {used['alpha']:.3f}, IntAttn-Edit W_O layers {used['attn_layers']}, "
        f"W_out layers {used['mlp_layers']} (MEMIT: the same W_out layers)"
        + (f"; set by YAML/--set/defaults: {sorted(differs)}" if traced and differs else ""))
    return {"source": str(RESULTS_DIR / (model.name + ".json")) if traced else None, "committed": traced, "used": used}


def warm_caches(model, records, hps: dict, quiet: bool) -> None:
    """Compute what both editors read from the disk caches before they edit, once, with progress bars:
    the second moments of every edited site in one corpus pass, and the target deltas at the top edited layer."""
    from tqdm.auto import tqdm

    from intattn_tl.edit.chain import edit_prefixes, target_hparams
    from intattn_tl.edit.covariance import second_moments
    from intattn_tl.edit.targets import target_deltas
    from intattn_tl.edit.transaction import EditState

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


def greedy(model, prompt: str, n_new: int) -> str:
    from intattn_tl.evaluation.metrics import greedy_continuation

    return greedy_continuation(model, prompt, n_new)


def plot_metrics(rows: list[dict], title: str):
    """Bars per method: the three percentages on the left, Fluency (its own scale) on the right."""
    import matplotlib.pyplot as plt
    import numpy as np

    from intattn_tl.evaluation.metrics import NAMES

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


# ----------------------------------------------------------------------------- the command


def run(args) -> int:
    import torch

    from intattn_tl.api import edit
    from intattn_tl.cli.edit import parse_overrides
    from intattn_tl.cli.eval import write_csv
    from intattn_tl.config.hparams import HparamsError, load_hparams
    from intattn_tl.data.records import load_edits
    from intattn_tl.edit.transaction import EditError
    from intattn_tl.evaluation.metrics import EvalConfig, evaluate, format_table, locality_reference, summarize
    from intattn_tl.model.load import load_model
    from intattn_tl.model.spec import weights_fingerprint

    t_start = time.time()
    _check(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    records = load_edits("wiki_counterfact", limit=args.limit, data_dir=args.data_dir)
    try:
        overrides = parse_overrides(args.overrides, None)
        hps = {m: load_hparams(m, args.model, overrides) for m, _ in METHODS}
    except HparamsError as err:
        print(f"intattn demo: error: {err}", file=sys.stderr)
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(7)
    log(f"intattn demo: {args.model}, {len(records)} WikiData_counterfact edits, torch threads {torch.get_num_threads()}"
        f" -> {out}/")

    t0 = log.stage(f"load {args.model}")
    model = load_model(args.model, device=args.device)
    try:
        for hp in hps.values():
            hp.validate(model)
    except EditError as err:
        print(f"intattn demo: error: {err}", file=sys.stderr)
        return 2
    fingerprint = weights_fingerprint(model)
    log(f"loaded in {log.took('load', t0)}; sha256 of all weights {fingerprint}")
    n_stats = {m: hps[m].mom2_n_samples for m, _ in METHODS}
    if any(n != 100_000 for n in n_stats.values()) or overrides:
        log(f"demo settings differ from the committed tables' (100000 statistics tokens, YAML defaults): {overrides}")

    t0 = log.stage("causal tracing of one fact (restore attention / MLP windows of 10 layers)")
    trace = trace_one_fact(args, out, log)
    log(f"traced in {log.took('trace', t0)} -> {', '.join(trace['figures'])}")

    log.stage("alpha and critical layers")
    alpha = read_alpha(model, hps, log)

    t0 = log.stage(f"pre-edit evaluation of {len(records)} records")
    cfg = EvalConfig(fluency_max_len=args.fluency_len, progress=not args.quiet)
    ref = locality_reference(model, records, cfg)
    rows = {"pre-edit": evaluate(model, records, cfg, locality_ref=ref)}
    shown = records[0]
    texts = {"pre-edit": greedy(model, shown.prompt, args.greedy_len)}
    log(f"evaluated in {log.took('pre-edit eval', t0)}")

    t0 = log.stage("key statistics and target deltas (computed once, cached on disk, shared by both editors)")
    warm_caches(model, records, hps, args.quiet)
    log(f"done in {log.took('statistics + targets', t0)}")

    edits, logged = {}, {}  # logged: method -> (summary, tables) for W&B
    for method, name in METHODS:
        t0 = log.stage(f"{name}: edit {len(records)} records, evaluate, roll back")
        try:
            result = edit(model, records, method, hps[method], progress=not args.quiet, conflicts="allow")
        except EditError as err:
            print(f"intattn demo: error: {err}", file=sys.stderr)
            return 2
        t_edit = time.time() - t0
        rows[name] = evaluate(model, records, cfg, locality_ref=ref)
        texts[name] = greedy(model, shown.prompt, args.greedy_len)
        result.rollback()
        logged[method] = tracking.edit_log([result], prefix=f"{name}/")
        restored = weights_fingerprint(model) == fingerprint
        edited = sorted(f"{k}[{l}]" for k, l in result.tx.originals)
        edits[name] = {"edit_seconds": round(t_edit, 1), "edited": edited, "restored_bit_exact": restored,
                       "stats": {k: v for k, v in result.stats.items() if k not in ("steps", "per_edit")}}
        log(f"edited {', '.join(edited)} in {t_edit:.1f}s; {name} total {log.took(name, t0)}")
        log(f"rolled back: sha256 of all weights {weights_fingerprint(model)} "
            + ("= pre-edit: restored bit-exact (verified)" if restored else "!= pre-edit: ROLLBACK FAILED"))
        if not restored:
            return 1

    summaries = [{"method": name, **summarize(r)} for name, r in rows.items()]
    table = format_table(summaries, columns=COLUMNS)
    log(f"\nWikiData_counterfact, first {len(records)} records, {args.model} (percent; Fluency = 100 x n-gram entropy):")
    log(table)
    log(f"\nrecord {shown.id}: {shown.prompt!r}  edit -> {shown.target_new!r} (was {shown.ground_truth[0]!r}); "
        f"greedy continuation:")
    for name, text in texts.items():
        log(f"  {name:>13}: {text!r}")

    import matplotlib.pyplot as plt

    fig = plot_metrics(summaries, f"{args.model}: {len(records)} WikiData_counterfact edits")
    fig.savefig(out / "metrics.png", dpi=120)
    plt.close(fig)
    write_csv([{"method": n, **row} for n, rs in rows.items() for row in rs], out / "metrics.csv")
    (out / "table.md").write_text(table + "\n")
    log.seconds["total"], log.cpu["total"] = round(time.time() - t_start, 1), round(time.process_time(), 1)
    summary = {"model": args.model, "n_records": len(records), "settings": {"overrides": overrides, "mom2_n_samples":
               n_stats, "fluency_len": args.fluency_len, "threads": torch.get_num_threads()},
               "trace": trace, "alpha": alpha, "edits": edits, "weights_sha256": fingerprint,
               "metrics": summaries, "continuations": {"record": shown.id, "prompt": shown.prompt,
                                                       "target_new": shown.target_new, **texts},
               "seconds": log.seconds, "cpu_seconds": log.cpu, "load_average": os.getloadavg()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    log(f"\nweights restored bit-exact after both edits; total {log.seconds['total']:.0f}s wall, "
        f"{log.cpu['total']:.0f}s CPU (load average {load}). Written to {out}/:")
    for name, what in (("trace_attn_window.png", "tracing heatmap, attention windows (token x layer)"),
                       ("trace_mlp_window.png", "tracing heatmap, MLP windows"),
                       ("trace_*.npz", "the traced grids (tracing.TraceResult.load)"),
                       ("metrics.png", "pre-edit / MEMIT / IntAttn-Edit bars"),
                       ("table.md", "the table above"), ("metrics.csv", "per-record metrics and fluency samples"),
                       ("summary.json", "alpha and its source, edited weights, timings, continuations"),
                       ("demo.log", "this output")):
        log(f"  {name:<22} {what}")
    if tracking.wanted(args):
        log(tracking.where(log_demo(args, model, hps, cfg, trace, alpha, summaries, rows, logged, out)))
    (out / "demo.log").write_text("\n".join(log.lines) + "\n")
    return 0


def log_demo(args, model, hps: dict, cfg, trace: dict, alpha: dict, summaries: list[dict], rows: dict,
             logged: dict, out: Path) -> Path:
    """One W&B run of the whole demo: config = its settings and both editors' resolved hyperparameters;
    summary = the traced fact's numbers, α and layers used, and each method's metrics and edit statistics
    (keys "MEMIT/edit_succ", ...); tables = each edit's chain steps and weight changes, every per-record
    metric; images = the tracing heatmaps and the metrics bars."""
    from intattn_tl.core.settings import edit_settings

    config = tracking.command_config(args, settings={m: edit_settings(m, hps[m], model) for m, _ in METHODS},
                                     eval_config=vars(cfg), used=alpha["used"], n_records=len(rows["pre-edit"]))
    summary = {"p_clean": trace["p_clean"], "p_corrupt": trace["p_corrupt"], **alpha["used"]}
    summary |= {f"{s['method']}/{k}": v for s in summaries for k, v in s.items() if k != "method"}
    tables = {"per_record": [{"method": name, **row} for name, rs in rows.items() for row in rs]}
    for stats, method_tables in logged.values():
        summary |= stats
        tables |= method_tables
    images = {Path(f).stem: f for f in trace["figures"]} | {"metrics": out / "metrics.png"}
    return tracking.log_run("demo", config, summary, tables, images, name=f"demo-{args.model}-{len(rows['pre-edit'])}")
