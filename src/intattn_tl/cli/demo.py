"""`intattn demo`: the method in miniature on one model, a few minutes on a laptop-class CPU.

1. trace one known fact (corrupt the subject, restore attention / MLP windows) -> heatmap PNGs;
2. read alpha and the critical layers from the committed tracing result (`model_results/<model>.json`);
3. edit the first N WikiData_counterfact records with MEMIT, then (after a rollback) with IntAttn-Edit,
   evaluating pre-edit and after each edit; greedy continuation of one edited prompt before and after;
4. roll back and check that every parameter is bit-for-bit the pre-edit one (sha256 over all weights).
Everything goes into --out; the last lines list what was written where.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from intattn_tl.repro import tracking

FACT = ("The Eiffel Tower is located in the city of", "Eiffel Tower", "Paris")  # the default --fact


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


def trace_one_fact(args, out: Path, log: _Log) -> dict:
    from intattn_tl.diagnostics.demo import save_traces, strongest, trace_windows

    prompt, subject, answer = args.fact
    results, args.trace_dtype = trace_windows(args.model, tuple(args.fact), args.device, args.trace_dtype, args.samples,
                                              args.quiet)
    pngs, peaks = save_traces(results, out), strongest(results)
    r = next(iter(results.values()))
    log(f"fact: {prompt!r} -> {answer!r} (subject {subject!r}); P(answer) clean {r.p_clean:.3f}, subject corrupted "
        f"{r.p_corrupt:.3f} ({args.samples} noise samples, {args.trace_dtype}, fast path)")
    log("strongest restoration (normalized LD): " + (", ".join(
        f"{k} at layer {layer}, token {tok!r}: {v}" for k, (layer, tok, v) in peaks.items()) or "none (no LD drop)"))
    return {"prompt": prompt, "subject": subject, "answer": answer, "p_clean": r.p_clean, "p_corrupt": r.p_corrupt,
            "strongest": peaks, "figures": [str(p) for p in pngs]}


def read_alpha(model, hps: dict, log: _Log) -> dict:
    """alpha and the layer sets the editors will use, and where they come from."""
    from intattn_tl.config.hparams import RESULTS_DIR
    from intattn_tl.diagnostics.demo import alpha_source

    alpha = alpha_source(model, hps)
    traced, used = alpha["committed"], alpha["used"]
    if traced:
        log(f"committed tracing result {alpha['source']}:")
        log(f"  alpha = {traced['alpha']}  attention layers {traced['attn_layers']}  MLP layers {traced['mlp_layers']}")
        log(f"  from {traced['n_facts']} known facts ({traced['n_facts_ld']} in the LD averages), "
            f"{traced['curve']}, {traced['dtype']}; made by: {traced['command']}")
        log("  alpha = sum LD(attn layers) / (sum LD(MLP layers) + sum LD(attn layers)) at the last subject token")
    else:
        log(f"no committed tracing result for {model.name} ({RESULTS_DIR}/<model>.json): the editors use their defaults")
    log(f"editors use: alpha = {used['alpha']:.3f}, IntAttn-Edit W_O layers {used['attn_layers']}, "
        f"W_out layers {used['mlp_layers']} (MEMIT: the same W_out layers)"
        + (f"; set by YAML/--set/defaults: {alpha['differs']}" if traced and alpha["differs"] else ""))
    return {k: alpha[k] for k in ("source", "committed", "used")}


# ----------------------------------------------------------------------------- the command


def run(args) -> int:
    import matplotlib.pyplot as plt
    import torch

    from intattn_tl.cli.edit import parse_overrides
    from intattn_tl.cli.eval import write_csv
    from intattn_tl.config.hparams import HparamsError, load_hparams
    from intattn_tl.data.records import load_edits
    from intattn_tl.diagnostics.demo import COLUMNS, METHODS, edit_evaluate_restore, plot_metrics, warm_caches
    from intattn_tl.edit.transaction import EditError
    from intattn_tl.evaluation.metrics import (
        EvalConfig,
        evaluate,
        format_table,
        greedy_continuation,
        locality_reference,
        summarize,
    )
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
    texts = {"pre-edit": greedy_continuation(model, shown.prompt, args.greedy_len)}
    log(f"evaluated in {log.took('pre-edit eval', t0)}")

    t0 = log.stage("key statistics and target deltas (computed once, cached on disk, shared by both editors)")
    warm_caches(model, records, hps, args.quiet)
    log(f"done in {log.took('statistics + targets', t0)}")

    edits, logged = {}, {}  # logged: method -> (summary, tables) for W&B
    for method, name in METHODS:
        t0 = log.stage(f"{name}: edit {len(records)} records, evaluate, roll back")
        try:
            done = edit_evaluate_restore(model, records, method, hps[method], cfg, ref, shown.prompt, args.greedy_len,
                                         fingerprint, progress=not args.quiet)
        except EditError as err:
            print(f"intattn demo: error: {err}", file=sys.stderr)
            return 2
        rows[name], texts[name] = done.rows, done.text
        logged[method] = tracking.edit_log([done.result], prefix=f"{name}/")
        edits[name] = {"edit_seconds": round(done.edit_seconds, 1), "edited": done.edited,
                       "restored_bit_exact": done.restored,
                       "stats": {k: v for k, v in done.result.stats.items() if k not in ("steps", "per_edit")}}
        log(f"edited {', '.join(done.edited)} in {done.edit_seconds:.1f}s; {name} total {log.took(name, t0)}")
        log(f"rolled back: sha256 of all weights {weights_fingerprint(model)} "
            + ("= pre-edit: restored bit-exact (verified)" if done.restored else "!= pre-edit: ROLLBACK FAILED"))
        if not done.restored:
            return 1

    summaries = [{"method": name, **summarize(r)} for name, r in rows.items()]
    table = format_table(summaries, columns=COLUMNS)
    log(f"\nWikiData_counterfact, first {len(records)} records, {args.model} (percent; Fluency = 100 x n-gram entropy):")
    log(table)
    log(f"\nrecord {shown.id}: {shown.prompt!r}  edit -> {shown.target_new!r} (was {shown.ground_truth[0]!r}); "
        f"greedy continuation:")
    for name, text in texts.items():
        log(f"  {name:>13}: {text!r}")

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
    from intattn_tl.diagnostics.demo import METHODS

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
