"""How much of its requested change each IntAttn-Edit chain can realise: the leverage of the edited keys.

    python experiments/key_leverage.py --model qwen2.5-coder-0.5b --T 100 --out runs/leverage-qwen.json

One MEMIT-style step solves D = R K^T (λC + K K^T)^-1, so the change it makes at the edited keys is
D K = R H with H = K^T (λC + K K^T)^-1 K. The mean diagonal of H (the leverage, in [0, 1]) is the share of its
own requested change a record's key gets back: near 1 the step does what it is asked, near 0 the λC term
(the corpus keys' second moment) holds it back. Printed per edited layer of both chains, at the YAML's λ and
on a grid of λ, together with how the records' keys sit in the corpus statistics: |k|² / E|k|² (how large)
and kᵀC⁻¹k / d (how far off the directions the corpus uses). Keys of the unedited model, averaged over the
context prefixes as the edit averages them; statistics and prefixes as the edit takes them (cached).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from intattn_tl.config.hparams import load_hparams
from intattn_tl.data.records import load_edits
from intattn_tl.edit.chain import edit_prefixes, edit_statistics
from intattn_tl.edit.keys import key_site, subject_activations
from intattn_tl.edit.transaction import EditState
from intattn_tl.model.load import load_model

LAMBDAS = (20000.0, 5000.0, 1000.0, 250.0, 50.0)


def leverage(K: torch.Tensor, C: torch.Tensor, lam: float) -> float:
    """Mean diagonal of K^T (λC + K K^T)^-1 K, K [d, n] (float64)."""
    return float(torch.einsum("dn,dn->n", K, torch.linalg.solve(lam * C + K @ K.T, K)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--dataset", default="wiki_counterfact")
    ap.add_argument("--T", type=int, default=100, help="the first T records of the test split")
    ap.add_argument("--out", type=Path, help="write the numbers here as JSON")
    args = ap.parse_args()

    model = load_model(args.model)
    hp = load_hparams("intattn", model.name)
    records = load_edits(args.dataset, limit=args.T)
    state = EditState()
    prefixes = edit_prefixes(model, hp, state)
    sites = [("w_out", l) for l in hp.resolved_layers(model)] + [("w_o", l) for l in hp.resolved_attn_layers(model)]
    stats = edit_statistics(model, sites, hp, state)
    rows = []
    for kind, layer in sites:
        site = key_site(kind, layer)
        K = subject_activations(model, records, [site], prefixes, "last", hp.key_average)[site].double().T  # [d, n]
        C = stats[(kind, layer)].double().to(K.device)
        lam = hp.mom2_update_weight if kind == "w_out" else hp.attn_mom2_update_weight
        d = K.shape[0]
        row = {"kind": kind, "layer": layer, "d": d, "lambda": lam,
               "leverage": round(leverage(K, C, lam), 3),
               "leverage_by_lambda": {str(x): round(leverage(K, C, x), 3) for x in LAMBDAS},
               "key_norm2_over_corpus": round(float(K.pow(2).sum(0).mean() / torch.trace(C)), 2),
               "mahalanobis_per_dim": round(float(torch.einsum("dn,dn->n", K, torch.linalg.solve(C, K)).mean()) / d, 2)}
        rows.append(row)
        print(json.dumps(row))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "dataset": args.dataset, "T": args.T,
                                        "alpha": hp.resolved_alpha(model), "sites": rows}, indent=1))


if __name__ == "__main__":
    main()
