"""Numbers that depend on the partial forward (model/forward.py), saved to compare two versions bit for bit.

    INTATTN_CACHE=$(mktemp -d) PYTHONPATH=<old tree>/src python experiments/partial_forward_refs.py save /tmp/before.pt
    INTATTN_CACHE=$(mktemp -d) PYTHONPATH=<new tree>/src python experiments/partial_forward_refs.py save /tmp/after.pt
    python experiments/partial_forward_refs.py compare /tmp/before.pt /tmp/after.pt   # exit 1 unless all torch.equal

Per model (tiny Llama, Qwen2, Mistral, Gemma-3 and GPT-2, plus SmolLM2 unless --no-smollm): `trace_fact` grids
(prob, LD and the scalars) of a few facts, one in several passes (small `max_rows`); `hidden_from`, `logits_from`
and the gradient through it at three layers; `optimize_deltas` for the residual and W_out's output;
`target_deltas` and `Suffixes.hidden` on the tiny models. Targets are recomputed (use_cache=False, explicit
prefixes); a fresh INTATTN_CACHE keeps the prefix and target caches out of it anyway.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from intattn_tl.data.records import load_edits
from intattn_tl.edit import targets as T
from intattn_tl.locate.tracing import embedding_std, trace_fact
from intattn_tl.model.load import load_model

FACTS = [("The Eiffel Tower is located in the city of", "The Eiffel Tower", "Paris"),
         ("Danielle Darrieux's mother tongue is", "Danielle Darrieux", "French"),
         ("I am told that a long time ago, in a town far away, Paris is", "Paris", "France")]
PREFIXES = ["", "A long prefix to shift the positions. ", "Short. "]


def collect(name: str, recs) -> dict[str, torch.Tensor]:
    res, m = {}, load_model(name)
    small = name.startswith("tiny")
    std = embedding_std(m)
    for i, fact in enumerate(FACTS if small else FACTS[:2]):
        kw = dict(n_samples=3 if small else 2, window=3 if small else 10, seed=i, embed_std=std)
        if i == 1:
            kw["max_rows"] = 64  # several passes per token
        r = trace_fact(m, *fact, **kw)
        res[f"{name}/trace/{i}/prob"] = torch.from_numpy(r.prob)
        res[f"{name}/trace/{i}/ld"] = torch.from_numpy(r.logit_diff)
        res[f"{name}/trace/{i}/scal"] = torch.tensor([r.p_clean, r.p_corrupt, r.ld_clean, r.ld_corrupt, r.contrast_token])
    g = torch.Generator().manual_seed(1)
    n_layers = m.spec.n_layers
    ids = torch.randint(0, 250 if small else 5000, (3, 80 if small else 24), generator=g)  # 80: past sliding windows
    for layer in sorted({0, n_layers // 2, n_layers - 1}):
        resid = T.residual_at(m, ids, layer).clone().detach().requires_grad_(True)
        where = torch.zeros(ids.shape, dtype=torch.bool)
        where[:, -3:] = True
        if m.spec.family.runs_blocks:
            res[f"{name}/hidden_from/{layer}"] = T.hidden_from(m, resid, layer).detach()
        logits = T.logits_from(m, resid, layer, where, ids)
        (grad,) = torch.autograd.grad(logits.float().logsumexp(-1).sum(), resid)
        res[f"{name}/logits_from/{layer}"], res[f"{name}/logits_from_grad/{layer}"] = logits.detach(), grad
    hp = T.TargetHparams(v_num_grad_steps=6 if small else 3, early_stop_loss=1e-9)
    for kind in (None, "w_out"):
        d, info = T.optimize_deltas(m, recs[:3 if small else 2], n_layers // 2, hp, PREFIXES, kind)
        res[f"{name}/optimize/{kind}"], res[f"{name}/optimize_loss/{kind}"] = d, info["loss"]
    if small:
        hp2 = T.TargetHparams(v_num_grad_steps=5, target_size="module_output")
        res[f"{name}/target_deltas"] = T.target_deltas(m, recs[3:6], 1, hp2, PREFIXES, use_cache=False, kind="w_out")
        if m.spec.family.runs_blocks:
            b = T._batch(m, recs[:3], PREFIXES)
            sf = T.Suffixes(m, T.residual_at(m, b.ids, 1), b.subject, b.length, 1)
            add = torch.randn(len(b.ids), m.spec.d_model, generator=g)
            res[f"{name}/suffix_hidden"] = sf.hidden(torch.arange(len(b.ids)), add).detach()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    save = sub.add_parser("save")
    save.add_argument("out")
    save.add_argument("--no-smollm", action="store_true")
    cmp = sub.add_parser("compare")
    cmp.add_argument("a")
    cmp.add_argument("b")
    args = ap.parse_args()
    if args.cmd == "save":
        recs, res = load_edits("wiki_counterfact"), {}
        names = ["tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-gemma3", "tiny-gpt2"]
        for name in names + ([] if args.no_smollm else ["smollm2-135m"]):
            t0 = time.time()
            res.update(collect(name, recs))
            print(f"{name}: {time.time() - t0:.0f} s", flush=True)
        torch.save(res, args.out)
        print(f"saved {len(res)} tensors to {args.out}")
        return 0
    a, b = torch.load(args.a), torch.load(args.b)
    if a.keys() != b.keys():
        print(f"different tensors: {sorted(set(a) ^ set(b))}")
        return 1
    bad = [k for k in a if not torch.equal(a[k].nan_to_num(123.0), b[k].nan_to_num(123.0))
           or not torch.equal(a[k].isnan(), b[k].isnan())]
    for k in bad:
        print(f"differs: {k} (max |diff| {(a[k].double() - b[k].double()).abs().nan_to_num().max().item():.3g})")
    print(f"{len(a)} tensors, {len(a) - len(bad)} torch.equal")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
