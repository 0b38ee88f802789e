"""Do the optimised targets work on a model?

For the first N WikiData_counterfact records: optimise each record's target delta with a method's
target settings (its YAML plus --set overrides), add it to the residual at the z layer (no weight
touched) and count the target_new tokens the model then predicts (targets.injected_accuracy). Also
prints the residual's RMS at the z layer, |delta| / |h| and the optimisation's loss. By default the
target is what ROME and MEMIT optimise (a change of W_out's output, through the post-norm on Gemma-3).

    python experiments/target_check.py --model gemma3-270m --method memit --n 20 --set v_lr_units=resid_rms --lrs 0.05 0.1 0.2
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def z_layer(model, method: str, hp) -> int:
    return hp.layer(model) if method in ("rome", "r-rome") else hp.target_layer(model)


def main() -> None:
    from intattn_tl.cli.common import add_dtype_argument
    from intattn_tl.cli.edit import parse_overrides
    from intattn_tl.data.records import load_edits
    from intattn_tl.config.hparams import load_hparams
    from intattn_tl.model.load import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="memit", choices=("memit", "rome"))
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--set", nargs="*", default=[], metavar="K=V")
    p.add_argument("--lrs", nargs="*", type=float, default=[], help="run once per v_lr value (one model load)")
    p.add_argument("--kind", choices=("w_out", "w_o", "residual"), default="w_out",
                   help="what the target changes: this module's output at the layer (through the family's post-norm, "
                        "targets.target_deltas(kind=); w_out is what ROME and MEMIT optimise) or the residual itself. "
                        "The same thing on families without post-norms")
    p.add_argument("--threads", type=int, default=0)
    add_dtype_argument(p)
    p.add_argument("--json", help="append the summary as one JSON line to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, dtype=args.dtype)
    records = load_edits("wiki_counterfact", limit=args.n)
    for lr in args.lrs or [None]:
        overrides = parse_overrides(args.set, None)
        if lr is not None:
            overrides["v_lr"] = lr
        kind = None if args.kind == "residual" else args.kind
        out = check(model, args.method, load_hparams(args.method, model.name, overrides), records, kind)
        print(json.dumps(out), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(out) + "\n")


def check(model, method: str, hp, records, kind: str | None = None) -> dict:
    from intattn_tl.edit.chain import target_hparams
    from intattn_tl.edit.prefixes import context_prefixes
    from intattn_tl.edit.targets import (
        _batch, injected_accuracy, optimize_deltas, residual_at, residual_deltas, step_scale,
    )

    layer = z_layer(model, method, hp)
    thp = target_hparams(hp)
    prefixes = context_prefixes(model) if hp.use_prefixes else [""]
    t0 = time.time()
    deltas, losses = [], []
    for i in range(0, len(records), 16):
        d, s = optimize_deltas(model, records[i:i + 16], layer, thp, prefixes, kind)
        d = residual_deltas(model, records[i:i + 16], layer, kind, d)
        deltas.append(d)
        losses.append(s["loss"])
    seconds = time.time() - t0
    delta = torch.cat(deltas)
    acc = injected_accuracy(model, records, layer, delta)
    b = _batch(model, records, [""])
    h0 = residual_at(model, b.ids, layer)[b.first, b.subject[b.first]]
    rms = step_scale(type(thp)(v_lr_units="resid_rms"), h0)[:, 0]
    return {"model": model.name, "method": method, "layer": layer, "kind": kind, "n": len(records), "target": vars(thp),
            "injected_accuracy": round(float(acc.mean()), 4), "records_at_100pct": int((acc == 1).sum()),
            "resid_rms_mean": round(float(rms.mean()), 3),
            "delta_over_h": round(float((delta.norm(dim=-1) / h0.norm(dim=-1)).mean()), 3),
            "loss_mean": round(float(torch.cat(losses).mean()), 3), "seconds_per_fact": round(seconds / len(records), 2),
            "threads": torch.get_num_threads(), "dtype": str(model.spec.w_out[0].dtype).removeprefix("torch.")}


if __name__ == "__main__":
    main()
