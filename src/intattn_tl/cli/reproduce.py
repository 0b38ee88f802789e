"""`intattn reproduce table1|table2|sweep-alpha`: the paper's experiments from one command each;
`intattn reproduce collect`: assemble them from the cells / points that sweep agents wrote into `--out`."""

from __future__ import annotations

from pathlib import Path

from intattn_tl.repro import tracking

QUICK_SIZES = (4, 8)
QUICK_GRID = (0.0, 0.5, 1.0)


def add_arguments(p) -> None:
    from intattn_tl.cli.common import add_dtype_argument, add_placement_arguments
    from intattn_tl.core.checks import device, int_list, integer, name_list, out_dir, real_list
    from intattn_tl.data.records import EDIT_DATASETS
    from intattn_tl.repro.tables import METHODS

    p.add_argument("what", choices=["table1", "table2", "sweep-alpha", "collect"],
                   help="which experiment; collect: assemble every table / α sweep found in --out (exit 1 while "
                        "cells or points are missing)")
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
    tracking.add_arguments(p)  # every new cell / α point a W&B run; collect: the assembled files as artifacts
    p.add_argument("--jobs", type=integer(lo=1), default=1,
                   help="tables: worker processes filling the missing cells side by side, the CPU threads split "
                        "among them (2 on a 2-core CPU: one-edit-at-a-time methods gain little from a second thread)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="tables: override one hyperparameter of one method (YAML value), e.g. --set "
                        "memit.v_lr=0.15; repeatable; recorded in the cells, so a folder made with other values "
                        "refuses to resume")
    p.add_argument("--device", default="cpu", type=device)
    add_placement_arguments(p)
    add_dtype_argument(p)


def run(args) -> int:
    from intattn_tl.cli.common import placement
    from intattn_tl.evaluation.metrics import EvalConfig
    from intattn_tl.repro.tables import METHODS, TableRun, run_table

    where = placement(args)  # checked before any work
    overrides = method_overrides(args.overrides)
    if overrides and args.what not in ("table1", "table2"):
        from intattn_tl.config.hparams import HparamsError

        raise HparamsError(f"--set METHOD.KEY=VALUE applies to table1 / table2, not to {args.what}")

    if args.what == "collect":
        return collect(args)
    eval_cfg = EvalConfig()
    if args.no_fluency:
        eval_cfg.fluency = False
    if args.quick:
        eval_cfg.fluency_max_len = min(eval_cfg.fluency_max_len, 40)
    if args.what == "sweep-alpha":
        from intattn_tl.repro.sweep import DEFAULT_GRID, run_sweep

        grid = args.grid or (QUICK_GRID if args.quick else DEFAULT_GRID)
        folder = run_sweep(args.model, args.dataset, 4 if args.quick else args.T, grid, args.out, eval_cfg,
                           wandb=tracking.wanted(args), placement={**where, "dtype": args.dtype})
        print((folder / "points.csv").read_text())
        print(f"figure: {folder / 'figure4.png'}")
        _say_logged(args, "α point")
        return 0
    sizes = args.sizes or (QUICK_SIZES if args.quick else (100, 300, 500))
    methods = args.methods or METHODS
    if set(overrides) - set(methods):
        from intattn_tl.config.hparams import HparamsError

        raise HparamsError(f"--set for {', '.join(sorted(set(overrides) - set(methods)))}, which this run does not "
                           f"include (--methods {','.join(methods)})")
    out = args.out / "quick" if args.quick and args.out == Path("runs") else args.out
    run_ = TableRun(table=args.what, model=args.model, sizes=sizes, methods=methods, out=out,
                    device=args.device, dtype=args.dtype, device_map=where.get("device_map"), max_memory=where.get("max_memory"),
                    eval_cfg=eval_cfg, hparam_overrides=overrides, wandb=tracking.wanted(args), jobs=args.jobs)
    folder = run_table(run_)
    print((folder / "table.md").read_text())
    print(f"per-record scores: {folder / 'cells'}")
    _say_logged(args, "cell")
    return 0


def _say_logged(args, unit: str) -> None:
    if tracking.wanted(args):
        mode = tracking.wandb_mode()
        print(f"W&B: every {unit} computed by this run was logged as one run ({mode}) under "
              f"{tracking.wandb_dir() / 'wandb'}" + (" (upload: wandb sync <run folder>; --no-wandb turns logging "
                                                     "off)" if mode == "offline" else ""))


def method_overrides(items: list[str]) -> dict[str, dict]:
    """['memit.v_lr=0.15', ...] -> {'memit': {'v_lr': 0.15}}; an unknown method is refused here, an unknown
    field when the table checks every method's hyperparameters (before any work)."""
    from intattn_tl.cli.edit import parse_overrides
    from intattn_tl.config.hparams import HparamsError
    from intattn_tl.repro.tables import METHODS

    out: dict[str, dict] = {}
    for item in items:
        method, dot, rest = item.partition(".")
        if not dot or method not in METHODS:
            raise HparamsError(f"--set expects METHOD.KEY=VALUE with METHOD one of {', '.join(METHODS)}, "
                               f"got {item!r}")
        out.setdefault(method, {}).update(parse_overrides([rest], None))
    return out


def collect(args) -> int:
    """Every `table1-*`, `table2-*` and `sweep-*` folder under --out: its table.md / table.csv / table.png (or
    points.csv / figure4.png) from the cells present, and the cells missing from the expected grid: --sizes
    (default: the sizes in the folder's run.json) x --methods (default: all) plus pre-edit; --grid for α."""
    from intattn_tl.repro.tables import ReproduceError

    units = [*_tables(args), *_sweeps(args)]  # (folder, assembled files, what is missing)
    if not units:
        raise ReproduceError(f"no table or α-sweep folder (with cells or points) under {args.out}")
    missing = []
    for folder, files, gaps in units:
        print(f"assembled {', '.join(str(f) for f in files)}")
        missing += [f"{folder.name}: {gap}" for gap in gaps]
        if tracking.wanted(args):
            tracking.log_artifact(folder.name, files, tracking.command_config(args, folder=str(folder)))
    if missing:
        print(f"{len(missing)} missing (still running, not started, or failed):", *missing, sep="\n  ")
        return 1
    print("complete: nothing missing")
    return 0


def _tables(args):
    import json

    from intattn_tl.repro.tables import METHODS, TableRun, collect

    for folder in sorted(Path(args.out).glob("table[12]-*")):
        if (folder / "run.json").is_file():
            rec = json.loads((folder / "run.json").read_text())
            run_ = TableRun(table=rec["table"], model=rec["model"], sizes=tuple(args.sizes or rec["sizes"]),
                            methods=tuple(args.methods or METHODS), out=Path(args.out))
            gaps = collect(run_)
            yield folder, [folder / f"table.{x}" for x in ("md", "csv", "png")], [f"{m} T={T}" for m, T in gaps]


def _sweeps(args):
    from intattn_tl.repro.sweep import DEFAULT_GRID, point_path, write_points

    for folder in sorted(Path(args.out).glob("sweep-*-T*")):
        if (folder / "points").is_dir():
            write_points(folder, title=folder.name.removeprefix("sweep-"))
            gaps = [f"alpha={a}" for a in (args.grid or DEFAULT_GRID) if not point_path(folder, a).exists()]
            yield folder, [folder / "points.csv", folder / "figure4.png"], gaps
