"""One grid point of a W&B sweep, as `wandb agent` calls it: one reproduction cell or one α point.

    python experiments/sweep_agent.py --table=table2 --method=rome --T=300 --out=/shared/runs
    python experiments/sweep_agent.py --alpha=0.3 --T=100 --dataset=zsre --out=/shared/runs

The result goes to the shared `--out` folder exactly as `intattn reproduce` writes it (atomic files; a point
already there is logged, not recomputed), so `intattn reproduce collect --out DIR` assembles the table or
figure from whatever the agents on all machines finished. W&B passes the grid values as `--name=value`;
without W&B credentials the run is logged offline. The run's config is the cell's or point's resolved
settings (as `intattn reproduce` logs them) plus this script's arguments under `agent`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", choices=("table1", "table2"), help="a reproduction cell of this table")
    p.add_argument("--method", help="the cell's method: pre-edit, ft, rome, r-rome, memit, alphaedit, intattn")
    p.add_argument("--alpha", type=float, help="an α-sweep point (IntAttn-Edit at this α)")
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--sizes", default="100,300,500", help="the table's sizes (all of them, not just this T)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dataset", default="zsre", help="dataset of the α sweep (a table fixes its own)")
    p.add_argument("--fluency", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    p.add_argument("--fluency-max-len", type=int, default=None, help="shorter fluency samples (QUICK runs: 40)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs"), help="the output root shared by all agents")
    args = p.parse_args(argv)
    if (args.table is None) == (args.alpha is None) or (args.table and not args.method):
        p.error("give either --table with --method, or --alpha")
    return args


def main(argv=None) -> dict:
    from intattn_tl.evaluation.metrics import EvalConfig
    from intattn_tl.core.store import read_rows

    args = parse(argv)
    cfg = EvalConfig(fluency=args.fluency, progress=False)
    if args.fluency_max_len:
        cfg.fluency_max_len = args.fluency_max_len
    agent = {"agent": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    if args.table:
        from intattn_tl.repro.tables import TableRun, log_cell, run_one_cell

        run = TableRun(table=args.table, model=args.model, sizes=tuple(int(s) for s in args.sizes.split(",")),
                       out=args.out, device=args.device, eval_cfg=cfg)
        summary, rows = run_one_cell(run, args.method, args.T)
        log_cell(run, args.method, args.T, summary, rows, extra=agent)
    else:
        from intattn_tl.repro.sweep import log_point, point_path, read_point, run_sweep

        folder = run_sweep(args.model, args.dataset, args.T, (args.alpha,), args.out, cfg, device=args.device)
        summary = read_point(point_path(folder, args.alpha))
        rows = read_rows(point_path(folder, args.alpha).with_suffix(".csv"))  # the point's per-record rows
        log_point(summary, rows, cfg, folder.name, extra=agent)
    scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    print(scalars)
    return scalars


if __name__ == "__main__":
    main(sys.argv[1:])
