"""Sizes at the last subject token per layer: residual |h|, W_out's output |v| before and |norm(v)| after the
post-FFN norm, the norm's gains, and the size of MEMIT's target delta (docs/history.md, "Gemma-3: how the current setup was found").

    python experiments/norm_magnitudes.py --model gemma3-270m --n 10 --layers 3 4 5 6 7
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    from intattn_tl.data.records import load_edits
    from intattn_tl.edit.transaction import EditState
    from intattn_tl.model.families.gemma3 import norm_gain
    from intattn_tl.config.hparams import load_hparams
    from intattn_tl.edit.keys import resid_post, subject_activations
    from intattn_tl.edit.chain import edit_prefixes, targets_at
    from intattn_tl.model.load import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--layers", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    fam = model.spec.family
    records = load_edits("wiki_counterfact", limit=args.n)
    acts = subject_activations(model, records, [f"blocks.{l}.mlp.hook_post" for l in args.layers], [""])
    for l in args.layers:
        norm = fam.post_norm("w_out", l) or (lambda x: x)
        with torch.no_grad():
            v = acts[f"blocks.{l}.mlp.hook_post"] @ fam.weight("w_out", l).T
            y = norm(v)
        row = {"layer": l, "|h|": float(resid_post(model, records, l, [""]).norm(dim=-1).mean()),
               "|v|": float(v.norm(dim=-1).mean()), "|norm(v)|": float(y.norm(dim=-1).mean())}
        if fam.post_norm("w_out", l) is not None:
            g = norm_gain(fam.post_norm("w_out", l), v)
            row.update({"gain_rms": float(g.pow(2).mean().sqrt()), "gain_max": float(g.abs().max())})
        print(json.dumps({k: round(x, 2) if isinstance(x, float) else x for k, x in row.items()}), flush=True)
    hp = load_hparams("memit", model.name, {})
    _, delta = targets_at(model, records, hp.target_layer(model), hp, edit_prefixes(model, hp, EditState()))
    print(json.dumps({"memit_target_layer": hp.target_layer(model), "|delta|": round(float(delta.norm(dim=-1).mean()), 1)}))


if __name__ == "__main__":
    main()
