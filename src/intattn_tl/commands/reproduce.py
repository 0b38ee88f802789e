"""`intattn reproduce table1|table2|sweep-alpha`: the paper's experiments from one command each."""

from __future__ import annotations

from pathlib import Path

QUICK_SIZES = (4, 8)
QUICK_GRID = (0.0, 0.5, 1.0)


def add_arguments(p) -> None:
    from ..checks import device, int_list, integer, name_list, out_dir, real_list
    from ..data import EDIT_DATASETS
    from ..reproduce import METHODS
    from . import add_placement_arguments

    p.add_argument("what", choices=["table1", "table2", "sweep-alpha"], help="which experiment")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", type=out_dir, default=Path("runs"), help="output root (resumable)")
    p.add_argument("--sizes", type=int_list(lo=1), default=None, help="batch sizes T, e.g. 100,300,500")
    p.add_argument("--methods", type=name_list(METHODS), default=None,
                   help="comma-separated subset of ft,rome,r-rome,memit,alphaedit,intattn")
    p.add_argument("--quick", action="store_true", help=f"smoke test: T={QUICK_SIZES}, 40-token fluency samples")
    p.add_argument("--T", type=integer(lo=1), default=100, help="batch size of the α sweep")
    p.add_argument("--grid", type=real_list(0, 1), default=None, help="α values of the sweep, comma-separated")
    p.add_argument("--dataset", default="zsre", choices=EDIT_DATASETS,
                   help="dataset of the α sweep (the paper's Figure 4 uses ZsRE)")
    p.add_argument("--no-fluency", action="store_true", help="skip the generation-based Fluency metric")
    p.add_argument("--wandb", action="store_true", help="log every cell / point to W&B (offline unless configured)")
    p.add_argument("--device", default="cpu", type=device)
    add_placement_arguments(p)


def run(args) -> int:
    from ..evaluate import EvalConfig
    from ..reproduce import METHODS, TableRun, run_table
    from . import placement

    where = placement(args)  # checked before any work

    eval_cfg = EvalConfig()
    if args.no_fluency:
        eval_cfg.fluency = False
    if args.quick:
        eval_cfg.fluency_max_len = min(eval_cfg.fluency_max_len, 40)
    if args.what == "sweep-alpha":
        from ..sweep import DEFAULT_GRID, run_sweep

        grid = args.grid or (QUICK_GRID if args.quick else DEFAULT_GRID)
        folder = run_sweep(args.model, args.dataset, 4 if args.quick else args.T, grid, args.out, eval_cfg,
                           wandb=args.wandb, placement=where)
        print((folder / "points.csv").read_text())
        print(f"figure: {folder / 'figure4.png'}")
        return 0
    sizes = args.sizes or (QUICK_SIZES if args.quick else (100, 300, 500))
    methods = args.methods or METHODS
    out = args.out / "quick" if args.quick and args.out == Path("runs") else args.out
    run_ = TableRun(table=args.what, model=args.model, sizes=sizes, methods=methods, out=out,
                    device=args.device, device_map=where.get("device_map"), max_memory=where.get("max_memory"),
                    eval_cfg=eval_cfg, wandb=args.wandb)
    folder = run_table(run_)
    print((folder / "table.md").read_text())
    print(f"per-record scores: {folder / 'cells'}")
    return 0
