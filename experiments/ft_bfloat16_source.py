"""Where does FT's bfloat16 Fluency gap come from? (docs/history.md, "bfloat16 tables")

    python experiments/ft_bfloat16_source.py rounding   # 20 FT edits per dtype: intended vs realised change
    python experiments/ft_bfloat16_source.py cross      # float32 FT edit of 100 records, evaluated in bfloat16

`rounding`: after a shared-EditState FT sequence, the summed intended deltas against what the weight actually
moved (bfloat16 rounds each write; float32 should be exact). `cross`: the float32 sequence's summed change added
to the bfloat16 model and evaluated there; a Fluency like float32's puts the gap in the edit, not in generation.
"""

from __future__ import annotations

import json
import sys

import torch

from intattn_tl.data.records import load_edits
from intattn_tl.edit.transaction import EditState
from intattn_tl.api import edit
from intattn_tl.evaluation.metrics import EvalConfig, evaluate, locality_reference, summarize
from intattn_tl.config.hparams import load_hparams
from intattn_tl.model.load import load_model


def ft_sequence(model, records):
    """(layer, intended summed change, realised change) of an FT sequence, rolled back afterwards."""
    hp = load_hparams("ft", model.name)
    layer = hp.layer(model)
    before = model.spec.w_out[layer].detach().float().clone()
    state, results = EditState(), []
    for r in records:
        results.append(edit(model, [r], method="ft", hparams=hp, state=state))
    intended = sum(x.tx.deltas[("w_out", layer)].float() for x in results)
    realised = model.spec.w_out[layer].detach().float() - before
    for x in reversed(results):
        x.rollback()
    return layer, intended, realised


def rounding(n: int = 20) -> None:
    records = load_edits("wiki_counterfact", limit=n)
    for dtype in ("bfloat16", "float32"):
        _, intended, realised = ft_sequence(load_model("smollm2-135m", dtype=dtype), records)
        print(json.dumps({"dtype": dtype, "intended_norm": float(intended.norm()), "realised_norm": float(realised.norm()),
                          "lost_share": float((intended - realised).norm() / intended.norm()),
                          "changed_but_zero": float(((realised == 0) & (intended != 0)).float().mean())}))


def cross(n: int = 100) -> None:
    records = load_edits("wiki_counterfact", limit=n)
    layer, change, _ = ft_sequence(load_model("smollm2-135m"), records)
    model = load_model("smollm2-135m", dtype="bfloat16")
    cfg = EvalConfig(progress=False)
    ref = locality_reference(model, records, cfg)
    W = model.spec.w_out[layer]
    original = W.detach().clone()
    try:
        with torch.no_grad():
            W.copy_((original.float() + change).to(W.dtype))
        s = summarize(evaluate(model, records, cfg, locality_ref=ref))
    finally:
        with torch.no_grad():
            W.copy_(original)
    print(json.dumps({k: s[k] for k in ("edit_succ", "portability", "locality", "fluency", "edit_em")}))


if __name__ == "__main__":
    {"rounding": rounding, "cross": cross}[sys.argv[1] if len(sys.argv) > 1 else "cross"]()
