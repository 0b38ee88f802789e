"""Where does a batch edit get lost? Per layer of each chain: intended vs realised change.

Edits the first N WikiData_counterfact records with a batch method (MEMIT, AlphaEdit or IntAttn-Edit, the
method's own code) and prints the account its chain steps keep (methods.memit.memit_chain; mean over records,
cos = cosine, ratio = |realised| / |intended|):
  module: the module-output change the solve was asked for vs K dW^T;
  resid@l: R vs the realised change of the module's residual contribution (through its post-norm, if any);
  resid@z: R vs the realised change of h at the z layer after the update (what the next step sees);
  chain: the chain's whole target vs what h at the z layer has moved since the chain began.
Then the injected accuracy of the target (no weight touched) and the edited model's token accuracy on
target_new (teacher-forced argmax), and the weights are rolled back. With --parts (IntAttn-Edit) that accuracy
is also measured with only the W_out deltas and with only the W_O deltas applied.

    python experiments/chain_account.py --model gemma3-270m --method intattn --n 10 --set mom2_n_samples=20000
    python experiments/chain_account.py --model qwen2.5-coder-0.5b --method intattn --n 300 --parts
"""

from __future__ import annotations

import argparse
import json

import torch

from intattn_tl.api import edit
from intattn_tl.cli.edit import parse_overrides
from intattn_tl.config.hparams import load_hparams
from intattn_tl.data.records import load_edits
from intattn_tl.edit.chain import edit_prefixes, targets_at
from intattn_tl.edit.targets import injected_accuracy
from intattn_tl.edit.transaction import EditState, apply_deltas
from intattn_tl.model.load import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--method", default="memit", choices=("memit", "alphaedit", "intattn"))
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--set", nargs="*", default=[], metavar="K=V")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="append the account as one JSON line to this file")
    p.add_argument("--parts", action="store_true",
                   help="IntAttn-Edit: also the edited token accuracy with only the W_out / only the W_O deltas")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    records = load_edits("wiki_counterfact", limit=args.n)
    hp = load_hparams(args.method, model.name, parse_overrides(args.set, None))
    state = EditState()
    # as the tables edit them: records sharing a prompt and subject are edited as given
    result = edit(model, records, args.method, hp, state=state, conflicts="allow", sanity=None)
    stats = result.stats
    sites = [(t["layer"], t["kind"]) for t in stats["targets"]]  # one per chain (IntAttn-Edit: two)
    zeros = torch.zeros(len(records), model.spec.d_model, device=model.device)
    try:  # the edited model on target_new: the injected check with nothing added
        edited = float(injected_accuracy(model, records, sites[0][0], zeros).mean())
    finally:
        result.tx.rollback()
    parts = {}
    for part in (("w_out", "w_o") if args.parts else ()):  # one chain's deltas alone, each in its own transaction
        tx = apply_deltas(model, result.deltas, [k for k in result.deltas if k.startswith(part + ".")])
        try:
            parts[f"{part} only"] = round(float(injected_accuracy(model, records, sites[0][0], zeros).mean()), 3)
        finally:
            tx.rollback()
    injected = {}
    for layer, kind in dict.fromkeys(sites):
        _, delta = targets_at(model, records, layer, hp, edit_prefixes(model, hp, state), kind)  # cached by the edit
        injected[f"{kind}@{layer}"] = round(float(injected_accuracy(model, records, layer, delta).mean()), 3)
    out = {"model": model.name, "method": args.method, "n": len(records), "set": args.set,
           **{k: stats[k] for k in ("alpha", "order") if k in stats},
           "target_norm": round(stats["target_norm"], 1), "injected_accuracy": injected,
           "edited_token_accuracy": round(edited, 3), **({"edited_token_accuracy_parts": parts} if parts else {}),
           "steps": [{k: s[k] for k in ("kind", "layer", "module", "resid@l", "resid@z", "chain")}
                     for s in stats["steps"]]}
    for s in out["steps"]:
        print(json.dumps(s))
    print(json.dumps({k: v for k, v in out.items() if k != "steps"}))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
