"""Where does a MEMIT edit get lost? Per layer of the chain: intended vs realised change (issue 13, item 3).

Runs MEMIT's chain (methods.memit) step by step on the first N WikiData_counterfact records and, at every
edited layer l, compares (mean over records; cos = cosine, ratio = |realised| / |intended|):
  module: the module-output change the solve was asked for (family.output_change of R) vs K @ dW^T;
  resid@l: R vs the realised change of the module's residual contribution (family.residual_change);
  resid@z: R vs the realised change of h at the z layer after the update (what the next step sees);
  total: the target delta vs h_z - h_z(before any edit), i.e. how much of the target the chain has built.
Then the injected accuracy of the target and the edited model's token accuracy on target_new. The weights
are rolled back at the end.

    python experiments/chain_account.py --model gemma3-270m --n 10 --set mom2_n_samples=20000
"""

from __future__ import annotations

import argparse
import json

import torch


def cos_ratio(real: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    real, want = real.double(), want.double()
    cos = torch.nn.functional.cosine_similarity(real, want, dim=-1).mean()
    ratio = (real.norm(dim=-1) / want.norm(dim=-1).clamp(min=1e-12)).mean()
    return round(float(cos), 3), round(float(ratio), 3)


def main() -> None:
    from intattn_tl.commands.edit import parse_overrides
    from intattn_tl.data import load_edits
    from intattn_tl.editing import EditState, WeightTransaction
    from intattn_tl.hparams import load_hparams
    from intattn_tl.keys import key_site, resid_post, subject_activations
    from intattn_tl.methods.memit import edit_prefixes, edit_statistics, lam_solver, targets_at
    from intattn_tl.models import load_model
    from intattn_tl.targets import injected_accuracy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--set", nargs="*", default=[], metavar="K=V")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="append the account as one JSON line to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    family = model.spec.family
    records = load_edits("wiki_counterfact", limit=args.n)
    hp = load_hparams("memit", model.name, parse_overrides(args.set, None))
    layers = hp.resolved_layers(model)
    z = layers[-1]
    state = EditState()
    prefixes = edit_prefixes(model, hp, state)
    C = edit_statistics(model, [("w_out", l) for l in layers], hp, state)
    solve = lam_solver(C, "w_out", hp.mom2_update_weight)
    h0, delta = targets_at(model, records, z, hp, prefixes)
    out = {"model": model.name, "n": len(records), "layers": layers, "z": z,
           "injected_accuracy": round(float(injected_accuracy(model, records, z, delta).mean()), 3), "steps": []}
    tx = WeightTransaction(model)
    try:
        for i, l in enumerate(layers):
            site = key_site("w_out", l)
            K = subject_activations(model, records, [site], prefixes)[site]
            h = resid_post(model, records, z, [""])
            R = (h0 + delta - h) / (len(layers) - i)
            want = family.output_change("w_out", l, K, R)
            D = solve(l, want.T, K.T)
            with torch.no_grad():
                got = K.to(D.dtype) @ D.T
                resid_l = family.residual_change("w_out", l, K, D.to(K.dtype))
            tx.update("w_out", l, D)
            h_after = resid_post(model, records, z, [""])
            out["steps"].append({"layer": l, "module": cos_ratio(got, want), "resid@l": cos_ratio(resid_l, R),
                                 "resid@z": cos_ratio(h_after - h, R), "total": cos_ratio(h_after - h0, delta)})
            print(json.dumps(out["steps"][-1]), flush=True)
        # the edited model on target_new: the injected check with no delta left to add
        out["edited_token_accuracy"] = round(float(injected_accuracy(model, records, z, torch.zeros_like(delta)).mean()), 3)
    finally:
        tx.rollback()
    print(json.dumps(out))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
