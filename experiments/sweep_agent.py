"""One point of the α sweep, as a W&B sweep agent calls it (training-free: edit, evaluate, log, roll back).

    python experiments/sweep_agent.py --alpha=0.3 --T=100 --model=smollm2-135m --dataset=zsre

W&B passes the grid values as `--name=value`; without W&B credentials the run is logged offline.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dataset", default="zsre")
    p.add_argument("--fluency", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    import wandb

    from intattn_tl.data import load_edits
    from intattn_tl.evaluate import EvalConfig, locality_reference
    from intattn_tl.models import load_model
    from intattn_tl.sweep import sweep_point
    from intattn_tl.tracking import wandb_mode

    args = parse(argv)
    os.environ.setdefault("WANDB_MODE", wandb_mode())
    run = wandb.init(project="intattn-tl-alpha", config=vars(args), reinit="finish_previous")
    cfg = EvalConfig()
    cfg.fluency = args.fluency
    model = load_model(args.model, device=args.device)
    records = load_edits(args.dataset, limit=args.T)
    point = sweep_point(model, records, args.alpha, cfg, locality_reference(model, records, cfg))
    run.log(point)
    run.summary.update(point)
    run.finish()
    print(point)
    return point


if __name__ == "__main__":
    main(sys.argv[1:])
