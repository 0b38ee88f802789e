"""`intattn eval`: evaluate a model (unedited) on an edit benchmark and print the metrics table."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

from intattn_tl.repro import tracking


def add_arguments(p) -> None:
    from intattn_tl.api import MAX_PROMPT_TOKENS
    from intattn_tl.cli.common import add_dtype_argument, add_placement_arguments
    from intattn_tl.core.checks import device, integer, out_file
    from intattn_tl.data.records import EDIT_DATASETS
    from intattn_tl.model.registry import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"known model, HF id or local dir (default {DEFAULT_MODEL})")
    p.add_argument("--dataset", default="wiki_counterfact", choices=EDIT_DATASETS)
    p.add_argument("--limit", type=integer(lo=0), default=100, help="first N records (default 100; 0 = all)")
    p.add_argument("--batch-size", type=integer(lo=1), default=32, help="prompts per forward pass")
    p.add_argument("--no-fluency", action="store_true", help="skip text generation (the slow part)")
    p.add_argument("--fluency-len", type=integer(lo=1), default=100, help="tokens per sampled text, prompt included")
    p.add_argument("--seed", type=integer(lo=0), default=0, help="seed of the fluency sampling")
    p.add_argument("--per-kind", action="store_true", help="also print Portability/Locality per probe kind")
    p.add_argument("--max-prompt-tokens", type=integer(lo=1), default=MAX_PROMPT_TOKENS,
                   help=f"refuse records with a longer prompt or probe, before any forward pass (default {MAX_PROMPT_TOKENS})")
    p.add_argument("--out", type=out_file, help="write the per-record metrics to this CSV")
    tracking.add_arguments(p)
    p.add_argument("--data-dir", help="benchmark folder (default $INTATTN_DATA, else the copies shipped with the package)")
    p.add_argument("--device", default="cpu", type=device)
    add_dtype_argument(p)
    add_placement_arguments(p)
    p.add_argument("--threads", type=integer(lo=1), help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def write_csv(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()})


def run(args) -> int:
    from intattn_tl.api import check_lengths
    from intattn_tl.cli.common import placement
    from intattn_tl.data.records import load_edits
    from intattn_tl.evaluation.metrics import EvalConfig, evaluate, format_table, summarize
    from intattn_tl.model.load import load_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    records = load_edits(args.dataset, limit=args.limit, data_dir=args.data_dir)
    t0 = time.time()
    model = load_model(args.model, dtype=args.dtype, **placement(args))
    t_load = time.time() - t0
    check_lengths(model, records, args.max_prompt_tokens)
    cfg = EvalConfig(batch_size=args.batch_size, fluency=not args.no_fluency, fluency_max_len=args.fluency_len,
                     seed=args.seed, progress=not args.quiet)
    t0 = time.time()
    rows = evaluate(model, records, cfg)  # unedited: the model is its own locality reference
    t_eval = time.time() - t0
    summary = summarize(rows)
    label = {"model": args.model, "dataset": args.dataset, "n": str(len(records))}
    print(format_table([{**label, **summary}]))
    if args.per_kind:
        kinds = [k for k in summary if "." in k]
        print()
        print(format_table([{**label, **summary}], columns=kinds))
    print(f"\nmodel load {t_load:.1f}s, evaluation {t_eval:.1f}s ({len(records) / t_eval:.2f} records/s); "
          f"percentages x100, Fluency = 100 x weighted n-gram entropy; Locality of an unedited model is 100 by definition")
    if args.out:
        write_csv(rows, args.out)
        print(f"per-record metrics: {args.out}")
    if tracking.wanted(args):
        config = tracking.command_config(args, n_records=len(records), eval_config=vars(cfg))
        print(tracking.where(tracking.log_run("eval", config, summary, {"per_record": rows},
                                              name=f"eval-{args.model}-{args.dataset}-{len(records)}")))
    return 0
