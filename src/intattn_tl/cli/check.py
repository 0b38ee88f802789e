"""`intattn check --model M`: the rows of `diagnostics.check`; the exit status is 1 when any row fails."""

from __future__ import annotations

import sys
import time

import torch

# ----------------------------------------------------------------------------- the command


def add_arguments(p) -> None:
    from intattn_tl.cli.common import add_dtype_argument, add_placement_arguments
    from intattn_tl.model.registry import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"known model, HF id or local dir (default {DEFAULT_MODEL})")
    p.add_argument("--records", type=int, default=10,
                   help="WikiData_counterfact records for the edit checks (default 10; 0 = mechanics only)")
    p.add_argument("--stats-tokens", type=int, default=20_000,
                   help="WikiText tokens for the check's key statistics (default 20000; the methods' YAML use "
                        "100000: the check tests the mechanics, not the final numbers)")
    p.add_argument("--data-dir", help="benchmark folder (default $INTATTN_DATA, else the copies shipped with the package)")
    p.add_argument("--device", default="cpu")
    add_dtype_argument(p)
    add_placement_arguments(p)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def run(args) -> int:
    from intattn_tl.cli.common import placement
    from intattn_tl.data.records import DataError, load_edits
    from intattn_tl.diagnostics.check import format_rows, run_checks
    from intattn_tl.edit.covariance import CHUNK
    from intattn_tl.model.load import load_model

    if args.records < 0:
        raise DataError(f"--records must be >= 0, got {args.records}")
    if args.stats_tokens < CHUNK:
        raise DataError(f"--stats-tokens must be >= {CHUNK}, got {args.stats_tokens}")
    if args.threads:
        torch.set_num_threads(args.threads)
    records = load_edits("wiki_counterfact", limit=args.records, data_dir=args.data_dir) if args.records else []
    t0 = time.time()
    model = load_model(args.model, dtype=args.dtype, **placement(args))
    t_load = time.time() - t0
    rows = run_checks(model, records, {"mom2_n_samples": args.stats_tokens})
    print(f"intattn check --model {args.model} --dtype {args.dtype}: {sum(r.ok for r in rows)}/{len(rows)} passed")
    print(format_rows(rows))
    scope = (f"edit checks on the first {len(records)} WikiData_counterfact records with {args.stats_tokens}-token "
             "key statistics (the methods' YAML use more)" if records else "mechanics only (--records 0)")
    print(f"\nload {t_load:.0f}s, checks {time.time() - t0 - t_load:.0f}s; {scope}")
    failed = [r.check for r in rows if not r.ok]
    if failed:
        print(f"FAILED: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
