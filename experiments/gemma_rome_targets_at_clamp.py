"""Do Gemma-3's ROME targets sit at the clamp? (docs/history.md, "Gemma-3: how the current setup was found")

    python experiments/gemma_rome_targets_at_clamp.py

On the unedited model, per record of the first 10: |delta|, |v| = |W_out k| at the subject token, and their
ratio (the YAML's clamp_norm_factor 4.0 is the ceiling). Compare with a sequence's `per_edit` target norms.
"""
from __future__ import annotations

import json

from intattn_tl.data.records import load_edits
from intattn_tl.edit.transaction import EditState
from intattn_tl.config.hparams import load_hparams
from intattn_tl.edit.keys import mlp_keys
from intattn_tl.edit.chain import edit_prefixes, target_hparams
from intattn_tl.model.load import load_model
from intattn_tl.edit.targets import target_deltas


def main(n: int = 10) -> None:
    model = load_model("gemma3-270m")
    hp = load_hparams("rome", model.name)
    layer = hp.layer(model)
    prefixes = edit_prefixes(model, hp, EditState())
    W = model.spec.w_out[layer]
    for r in load_edits("wiki_counterfact", limit=n):
        delta = target_deltas(model, [r], layer, target_hparams(hp), prefixes=prefixes, kind="w_out")[0]
        v = W @ mlp_keys(model, [r], layer, [""])[0].to(W)
        print(json.dumps({"id": r.id, "target_norm": float(delta.norm()), "v_norm": float(v.norm()),
                          "ratio": float(delta.norm() / v.norm())}), flush=True)


if __name__ == "__main__":
    main()
