"""One grid point of a W&B sweep, as `wandb agent` calls it: one reproduction cell or one α point.

    python experiments/sweep_agent.py --table=table2 --method=rome --T=300 --out=/shared/runs
    python experiments/sweep_agent.py --alpha=0.3 --T=100 --dataset=zsre --out=/shared/runs

The result goes to the shared `--out` folder exactly as `intattn reproduce` writes it (atomic files; a point
already there is logged, not recomputed), so `intattn reproduce collect --out DIR` assembles the table or
figure from whatever the agents on all machines finished. W&B passes the grid values as `--name=value`;
without W&B credentials the run is logged offline.
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
    from intattn_tl.repro.tracking import finish, log_results, start_run

    args = parse(argv)
    cfg = EvalConfig(fluency=args.fluency, progress=False)
    if args.fluency_max_len:
        cfg.fluency_max_len = args.fluency_max_len
    if args.table:
        from intattn_tl.repro.tables import TableRun, run_one_cell

        run = TableRun(table=args.table, model=args.model, sizes=tuple(int(s) for s in args.sizes.split(",")),
                       out=args.out, device=args.device, eval_cfg=cfg)
        summary, rows = run_one_cell(run, args.method, args.T)
        project, name = "intattn-tl", f"{args.table}-{args.model}-{args.method}-T{args.T}"
    else:
        from intattn_tl.repro.sweep import point_path, read_point, run_sweep

        folder = run_sweep(args.model, args.dataset, args.T, (args.alpha,), args.out, cfg, device=args.device)
        summary = read_point(point_path(folder, args.alpha))
        project, name = "intattn-tl-alpha", f"{args.model}-alpha{args.alpha:.2f}"
    wb = start_run(args.table or "sweep-alpha", config=vars(args), name=name, project=project)
    scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    log_results(wb, scalars, [scalars] if args.alpha is not None else rows)
    finish(wb)
    print(scalars)
    return scalars


if __name__ == "__main__":
    main(sys.argv[1:])
