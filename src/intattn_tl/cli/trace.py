"""`intattn trace`: causal tracing over known facts; writes arrays, CSV, figures and the alpha/layers file.

Across machines: `intattn trace ... --shard i/n --out DIR` on n machines sharing DIR (each traces every n-th
chosen fact into DIR/facts), then `intattn trace --collect --out DIR` writes what the unsharded run writes.
`--kinds head` (alone or with other kinds) also traces single attention heads (locate/heads.py) into DIR/heads
and writes heads.npz, heads.json and heads_heatmap.png; it is not sharded."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from intattn_tl.repro import tracking

INSTALL_MIN_FACTS = 100  # a package default is never installed from a smoke run


def _layers(layers):
    return None if layers is None else list(layers)


def add_arguments(p) -> None:
    from intattn_tl.cli.common import add_dtype_argument, add_placement_arguments
    from intattn_tl.core.checks import device, int_list, integer, name_list, out_dir, out_file, real
    from intattn_tl.locate.tracing import KINDS

    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--facts", type=integer(lo=1), default=100, help="trace this many facts the model knows (known_1000)")
    p.add_argument("--fact", nargs="+", action="append", metavar=("PROMPT SUBJECT", "ANSWER"),
                   help="trace your own fact instead of known_1000: PROMPT SUBJECT [ANSWER] (default ANSWER: the "
                   "model's own greedy answer); repeatable")
    p.add_argument("--facts-file", metavar="FILE", help="your own facts from a .json / .jsonl / .csv file (prompt, "
                   "subject, optional attribute)")
    p.add_argument("--out", required=True, type=out_dir, help="output folder (also gets the alpha/layers JSON)")
    p.add_argument("--device", default="cpu", type=device, help="cpu, cuda, cuda:1, ...")
    p.add_argument("--samples", type=integer(lo=1), default=10, help="noise samples per fact")
    p.add_argument("--noise-scale", type=real(lo=0, lo_open=True), default=3.0,
                   help="noise std in units of the embedding std")
    p.add_argument("--window", type=integer(lo=1), default=10, help="layers restored together by the *_window kinds")
    p.add_argument("--seed", type=integer(lo=0), default=0)
    p.add_argument("--key-tokens", action="store_true", help="restore only at the last subject token and the last "
                   "token, where alpha and the layers are read (same numbers there, the other tokens empty; several "
                   "times faster)")
    p.add_argument("--kinds", default=None, type=name_list(KINDS + ("head",)), help="comma-separated restoration "
                   "kinds to trace (resid, attn, mlp, attn_window, mlp_window; default: those five) and/or head: "
                   "every single attention head's hook_z at the last subject token and the last token")
    add_dtype_argument(p)  # tracing computes in the model's dtype
    add_placement_arguments(p)
    p.add_argument("--min-ld-gap", type=real(finite=False), default=1.0, help="leave facts whose corruption lowers "
                   "logit(r) - logit(r') by less than this out of the LD averages (see balance.py)")
    p.add_argument("--single", action="store_true", help="choose layers/alpha from single-layer curves, not windows")
    p.add_argument("--attn-width", type=integer(lo=1), default=3, help="number of consecutive critical attention layers")
    p.add_argument("--mlp-width", type=integer(lo=1), default=5, help="number of consecutive critical MLP layers")
    p.add_argument("--attn-layers", type=int_list(lo=0), help="override: comma-separated attention layers")
    p.add_argument("--mlp-layers", type=int_list(lo=0), help="override: comma-separated MLP layers")
    p.add_argument("--apply", metavar="EDIT.pt", help="trace the model with this saved edit applied (`intattn edit "
                   "--save`): where an edited fact lives; pass --fact PROMPT SUBJECT NEW_ANSWER to trace the new one")
    p.add_argument("--result-file", type=out_file, help="also write the alpha/layers JSON here")
    p.add_argument("--install-defaults", action="store_true",
                   help="also write it to the package's model_results/<model>.json, the default alpha/layers of every "
                   f"later edit (needs --facts >= {INSTALL_MIN_FACTS}); without it the package defaults never change")
    p.add_argument("--no-result-file", action="store_true", help=argparse.SUPPRESS)  # the old opt-out; now the default
    p.add_argument("--shard", type=shard, default=(0, 1), metavar="I/N", help="trace only every N-th chosen fact, "
                   "starting at I (0..N-1), into OUT/facts; N shards on machines sharing OUT trace the unsharded run's "
                   "facts; then --collect")
    tracking.add_arguments(p)  # one run of the whole trace (not of a --shard): α, layers, curves, heatmaps
    p.add_argument("--collect", action="store_true", help="write the arrays, CSV, figures and alpha/layers JSON from "
                   "the facts the shards stored in OUT/facts (no model is loaded; tracing settings come from there); "
                   "exit 1, listing them, while facts are missing")


def shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"shard I/N needs 0 <= I < N, got {text}")
    return i, n


def run(args) -> int:
    from intattn_tl.api import trace_facts
    from intattn_tl.cli.common import placement
    from intattn_tl.data.records import DataError, load_known_facts, sha256_file
    from intattn_tl.edit.result import apply_saved
    from intattn_tl.edit.transaction import EditError
    from intattn_tl.data.requests import checked_trace_facts, read_trace_facts
    from intattn_tl.locate.tracing import KINDS, TraceError, read_store, trace_dataset
    from intattn_tl.model.load import load_model

    out = Path(args.out)
    command = "intattn trace " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["trace"] else None
    heads = "head" in (args.kinds or ())
    if heads and (args.collect or args.shard[1] > 1):
        raise TraceError("--kinds head is not sharded: --shard / --collect trace the module kinds only; trace "
                         "heads in one run (intattn trace --kinds head ...)")
    if args.collect:
        trace, missing, stored = read_store(out / "facts")
        if missing:
            print(f"intattn trace --collect: {len(missing)} of {len(missing) + len(trace.results)} facts not traced yet "
                  f"(their shards are running or failed): {', '.join(missing)}", file=sys.stderr)
            return 1
        args.facts = len(trace.results)  # what the shards were asked for, as far as the record is concerned
        args.model, args.dtype, args.kinds = stored["model"], stored["dtype"], stored["kinds"]
        args.samples, args.noise_scale, args.window, args.seed = (stored[k] for k in ("n_samples", "noise_scale",
                                                                                       "window", "seed"))
    if args.apply and (args.collect or args.install_defaults):
        raise EditError("--apply traces an edited model: it neither --collect's shards nor --install-defaults "
                        "(the package defaults come from the unedited model)")
    if args.apply and not Path(args.apply).is_file():
        raise EditError(f"edit file {args.apply} not found")
    if args.install_defaults and args.facts < INSTALL_MIN_FACTS:
        print(f"intattn trace: error: --install-defaults needs --facts >= {INSTALL_MIN_FACTS} (a smoke run never "
              f"changes the package defaults); got --facts {args.facts}", file=sys.stderr)
        return 2
    kinds = tuple(args.kinds) if args.kinds else KINDS
    kinds = tuple(k for k in kinds if k != "head")  # the module kinds; head is traced on its own
    if heads and args.install_defaults and not kinds:
        raise TraceError("--install-defaults needs the module kinds (alpha comes from attn/mlp); --kinds head alone "
                         "writes no alpha/layers")
    own = [tuple(f) for f in args.fact or []]
    bad = [f for f in own if len(f) not in (2, 3)]
    if bad:
        raise DataError(f"--fact takes PROMPT SUBJECT [ANSWER], got {len(bad[0])} value(s): {bad[0]}")
    if args.facts_file:
        own += [tuple(v for v in (f["prompt"], f["subject"], f["attribute"]) if v) for f in read_trace_facts(args.facts_file)]
    if own:
        checked_trace_facts(own)  # before the model loads
    if own and (args.collect or args.install_defaults):
        raise DataError("--fact / --facts-file trace your facts now: they neither --collect shards nor "
                        "--install-defaults (the package defaults come from known_1000)")
    # hashed once, before the edit is read to be applied: the settings and the record name the same bytes
    args.applied_sha256 = sha256_file(Path(args.apply)) if args.apply else None
    if not args.collect:
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        model = load_model(args.model, dtype=args.dtype, **placement(args))
        tx = apply_saved(model, args.apply) if args.apply else None  # all or nothing; rolled back below
        if tx:
            print(f"tracing with the edit {args.apply} applied")
        try:
            facts = trace_facts(model, own) if own else load_known_facts()
            if own:
                args.facts = len(facts)
                for f in facts:
                    print(f"fact {f.id}: {f.prompt!r} -> {f.attribute!r} (subject {f.subject!r})")
            settings = {"model": args.model, "dtype": args.dtype,
                        **({"applied_edit": args.applied_sha256} if args.apply else {}),
                        **({"own_facts": [[f.prompt, f.subject, f.attribute] for f in facts]} if own else {})}
            trace = head_trace = None
            try:  # per-fact results land in out/facts as they are done; a rerun with the same settings resumes there
                if kinds:
                    trace = trace_dataset(model, facts, args.facts, known_only=not own, n_samples=args.samples,
                                          noise_scale=args.noise_scale, window=args.window, seed=args.seed, kinds=kinds,
                                          store=out / "facts", settings=settings, shard=args.shard,
                                          **({"key_tokens": True} if args.key_tokens else {}))
                    print(f"traced {len(trace.results)} facts of {trace.seen} read ({len(trace.skipped)} skipped) in "
                          f"{time.time() - t0:.0f}s")
                if heads:  # the same facts: chosen by the same rule from the same list
                    from intattn_tl.locate.heads import trace_heads_dataset

                    t1 = time.time()
                    head_trace = trace_heads_dataset(model, facts, args.facts, known_only=not own,
                                                     n_samples=args.samples, noise_scale=args.noise_scale,
                                                     seed=args.seed, store=out / "heads", settings=settings)
                    print(f"traced the heads of {len(head_trace.results)} facts in {time.time() - t1:.0f}s")
            except TraceError as err:
                print(f"intattn trace: {err}", file=sys.stderr)
                return 2
            if args.shard[1] > 1:
                print(f"shard {args.shard[0]}/{args.shard[1]} done -> {out / 'facts'}; when every shard is: "
                      f"intattn trace --collect --out {out}")
                return 0
        finally:
            if tx:
                tx.rollback()
    rc = write_outputs(args, out, kinds, trace, command) if kinds else 0
    if heads:
        rc = write_head_outputs(args, out, head_trace, trace if kinds else None) or rc
    return rc


def write_outputs(args, out: Path, kinds, trace, command: str | None) -> int:
    """Arrays, effects CSV, figures and the alpha/layers JSON from the traced facts (one run or its shards)."""
    import numpy as np

    from intattn_tl.config.hparams import RESULTS_DIR
    from intattn_tl.locate.balance import CLASSES, aggregate, summarize
    from intattn_tl.locate.plots import plot_heatmaps, plot_layer_curves
    from intattn_tl.locate.tracing import TraceError

    results = trace.results
    if not results:
        print("no fact could be traced; see skipped.json", file=sys.stderr)
        (out / "skipped.json").write_text(json.dumps(trace.skipped, indent=1))
        return 1
    if len(results) < args.facts:
        print(f"warning: only {len(results)} known facts found, fewer than --facts {args.facts}", file=sys.stderr)

    ld, prob = aggregate(results, "ld", args.min_ld_gap), aggregate(results, "prob")
    print(f"normalized-LD averages over {ld['n_facts']} facts (corruption lowers LD by >= {args.min_ld_gap}); "
          f"probability averages over {prob['n_facts']}")
    arrays = {"kinds": np.array(kinds), "classes": np.array(CLASSES)}
    for name, agg in (("ld", ld), ("prob", prob)):
        arrays.update({f"{name}_{k}": v for k, v in agg.items() if k != "n_facts"})
    for i, r in enumerate(results):
        arrays.update({f"fact{i}_prob": r.prob, f"fact{i}_logit_diff": r.logit_diff,
                       f"fact{i}_scalars": np.array([r.p_clean, r.p_corrupt, r.ld_clean, r.ld_corrupt])})
    np.savez_compressed(out / "trace.npz", **arrays)
    facts_meta = [{"prompt": r.prompt, "subject": r.subject, "answer": r.answer, "tokens": r.tokens,
                   "subject_span": r.subject_span, "contrast_token": r.contrast_token,
                   "p_clean": r.p_clean, "p_corrupt": r.p_corrupt, "ld_clean": r.ld_clean, "ld_corrupt": r.ld_corrupt}
                  for r in results]
    (out / "facts.json").write_text(json.dumps({"facts": facts_meta, "skipped": trace.skipped}, indent=1))

    with (out / "effects.csv").open("w") as f:
        f.write("metric,kind,layer,token_class,mean,se,count\n")
        for name, agg in (("ld", ld), ("prob", prob)):
            for k, kind in enumerate(kinds):
                for layer in range(agg["mean"].shape[1]):
                    for c, cls in enumerate(CLASSES):
                        f.write(f"{name},{kind},{layer},{cls},{agg['mean'][k, layer, c]:.6g},"
                                f"{agg['se'][k, layer, c]:.6g},{agg['count'][k, layer, c]}\n")

    import matplotlib.pyplot as plt

    title = f"{args.model}, {len(results)} facts ({ld['n_facts']} with LD drop >= {args.min_ld_gap} in LD panels)"
    windows, singles = ("attn_window", "mlp_window"), ("attn", "mlp")
    use_window = not args.single and set(windows) <= set(kinds)
    pair = windows if use_window else singles
    figures = {}
    if set(windows) <= set(kinds):
        figures["fig1_heatmaps.png"] = plot_heatmaps(ld, kinds, title=title)
    shown = tuple(k for k in ("resid", "attn", "mlp") if k in kinds)
    if shown:
        figures["fig1_heatmaps_single.png"] = plot_heatmaps(ld, kinds, show=shown, title=title + ", single layer")
    if set(pair) <= set(kinds):
        figures["fig2_last_subject.png"] = plot_layer_curves(ld, prob, kinds, pair=pair, title=title)
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=120)
        plt.close(fig)

    try:
        summary = summarize(results, attn_width=args.attn_width, mlp_width=args.mlp_width, window=use_window,
                            attn_layers=_layers(args.attn_layers), mlp_layers=_layers(args.mlp_layers),
                            min_ld_gap=args.min_ld_gap)
    except TraceError as err:
        print(f"intattn trace: no alpha/layers file written: {err} (arrays and figures are in {out})", file=sys.stderr)
        return 1
    record = {
        "model": args.model, "alpha": round(summary["alpha"], 4), "mlp_layers": summary["mlp_layers"],
        "attn_layers": summary["attn_layers"], "n_facts": len(results), "n_read": trace.seen,
        "min_ld_gap": args.min_ld_gap, "n_facts_ld": summary["n_facts_ld"],
        "curve": f"window {args.window}" if use_window else "single layer",
        "n_samples": args.samples, "dtype": args.dtype, "noise_scale": args.noise_scale, "seed": args.seed,
        "overridden": bool(args.attn_layers or args.mlp_layers),
        **({"applied_edit": {"file": str(args.apply), "sha256": args.applied_sha256}} if args.apply else {}),
        "ld_last_subject": {k: [round(x, 4) for x in v] for k, v in summary["curves"].items() if k != "kinds"},
        "command": command or f"intattn trace --model {args.model} --facts {args.facts} --out {args.out}",
    }
    text = json.dumps(record, indent=1)
    (out / f"{args.model}.json").write_text(text)
    targets = ([Path(args.result_file)] if args.result_file else []) + \
        ([RESULTS_DIR / f"{args.model}.json"] if args.install_defaults else [])  # where hparams.tracing_result reads
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n")
        print(f"wrote {target}")
    if not args.install_defaults:
        print("package defaults unchanged (use --install-defaults to make this alpha/these layers every edit's default)")
    print(f"alpha={record['alpha']} attn_layers={record['attn_layers']} mlp_layers={record['mlp_layers']} -> {out}")
    if tracking.wanted(args):
        print(tracking.where(log_trace(args, out, kinds, record, ld, prob, figures)))
    return 0


def log_trace(args, out: Path, kinds, record: dict, ld: dict, prob: dict, figures: dict) -> Path:
    """One W&B run: config = the trace's resolved settings, summary = α and the critical layers, tables = the
    layer curves at the last subject token (layer x kind, LD and probability; also as line plots) and every
    effect of effects.csv, images = the figures written to `out`."""
    from intattn_tl.locate.balance import CLASSES

    last = CLASSES.index("last subject")
    curves = [{"kind": kind, "layer": layer, "ld": float(ld["mean"][k, layer, last]),
               "ld_se": float(ld["se"][k, layer, last]), "prob": float(prob["mean"][k, layer, last]),
               "prob_se": float(prob["se"][k, layer, last])}
              for k, kind in enumerate(kinds) for layer in range(ld["mean"].shape[1])]
    effects = [{"metric": name, "kind": kind, "layer": layer, "token_class": cls, "mean": float(agg["mean"][k, layer, c]),
                "se": float(agg["se"][k, layer, c]), "count": int(agg["count"][k, layer, c])}
               for name, agg in (("ld", ld), ("prob", prob)) for k, kind in enumerate(kinds)
               for layer in range(agg["mean"].shape[1]) for c, cls in enumerate(CLASSES)]
    resolved = {k: record[k] for k in ("model", "dtype", "n_samples", "noise_scale", "seed", "min_ld_gap", "curve",
                                       "overridden", "command")}
    config = tracking.command_config(args, **resolved, kinds=list(kinds), out=str(out))
    summary = {k: record[k] for k in ("alpha", "attn_layers", "mlp_layers", "n_facts", "n_read", "n_facts_ld")}
    return tracking.log_run("trace", config, summary, {"layer_curves": curves, "effects": effects},
                            images={name.removesuffix(".png"): out / name for name in figures},
                            lines={"ld_by_layer": ("layer_curves", "layer", "ld", "kind"),
                                   "prob_by_layer": ("layer_curves", "layer", "prob", "kind")},
                            name=f"trace-{args.model}-{record['n_facts']}facts")


def write_head_outputs(args, out: Path, head_trace, trace=None) -> int:
    """heads.npz (per-fact [fact, position, layer, head] effects, means and SEs over facts), heads_heatmap.png
    and heads.json (concentration, top heads, the heads' share of the attention effect and, when the module
    kinds were traced too, of alpha's attention sum)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from intattn_tl.locate.balance import summarize
    from intattn_tl.locate.heads import POSITIONS, aggregate_heads, head_grid_array, summarize_heads
    from intattn_tl.locate.plots import plot_head_heatmaps
    from intattn_tl.locate.tracing import TraceError

    results = head_trace.results
    if not results:
        print("no fact could be traced for heads; see heads/selection.json", file=sys.stderr)
        return 1
    alpha, alpha_value = {}, None
    if trace is not None and trace.results and {"attn_window", "mlp_window"} <= set(trace.results[0].kinds):
        try:
            s = summarize(trace.results, attn_width=args.attn_width, mlp_width=args.mlp_width, window=True,
                          attn_layers=_layers(args.attn_layers), mlp_layers=_layers(args.mlp_layers),
                          min_ld_gap=args.min_ld_gap)
            alpha = {"attn_window_curve": s["curves"]["attn"], "attn_layers": s["attn_layers"], "window": args.window}
            alpha_value = s["alpha"]
        except TraceError as err:  # the head numbers stand without it
            print(f"intattn trace: heads.json gets no share of alpha's attention sum: {err}", file=sys.stderr)
    try:
        agg = aggregate_heads(results, args.min_ld_gap)
        summary = summarize_heads(results, min_ld_gap=args.min_ld_gap, **alpha)
    except TraceError as err:
        print(f"intattn trace: no head summary written: {err}", file=sys.stderr)
        return 1
    arrays = {**head_grid_array(results), **{k: v for k, v in agg.items() if isinstance(v, np.ndarray)},
              "position_names": np.array(POSITIONS)}
    np.savez_compressed(out / "heads.npz", **arrays)
    record = {"model": args.model, "n_samples": args.samples, "noise_scale": args.noise_scale, "seed": args.seed,
              "dtype": args.dtype, "min_ld_gap": args.min_ld_gap, "n_read": head_trace.seen, **summary}
    if alpha:
        record["alpha_attention_sum"]["alpha"] = round(alpha_value, 4)
    (out / "heads.json").write_text(json.dumps(record, indent=1))
    fig = plot_head_heatmaps(agg["ld_mean"], POSITIONS, title=f"{args.model}: mean normalized LD of one head's hook_z "
                             f"over {agg['n_facts_ld']} facts")
    fig.savefig(out / "heads_heatmap.png", dpi=110)
    plt.close(fig)
    c = summary["concentration_per_fact"]
    print(f"heads: top-1/5/10 carry {c['top1']['mean']:.2f}/{c['top5']['mean']:.2f}/{c['top10']['mean']:.2f} of a fact's "
          f"positive head effect at the last subject token (mean over {agg['n_facts_ld']} facts) -> {out / 'heads.json'}")
    return 0
