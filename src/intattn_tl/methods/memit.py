"""MEMIT (Meng et al. 2023): spread a residual-stream change over a band of MLP output matrices.

The steps (target, keys, statistics, the layer-by-layer update) live in `edit/chain.py`, shared with
AlphaEdit and IntAttn-Edit; this module is MEMIT's hyperparameters and its one chain over W_out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from intattn_tl.edit.chain import (
    TargetFields,
    check_layers,
    check_target_layer,
    default_mlp_layers,
    edit_prefixes,
    edit_statistics,
    lam_solver,
    memit_chain,
    targets_at,
)
from intattn_tl.edit.transaction import EditError, EditState, WeightTransaction
from intattn_tl.methods.registry import register
from intattn_tl.model.spec import LoadedModel

# ----------------------------------------------------------------------------- MEMIT itself


@dataclass
class MEMITHparams(TargetFields):
    TRACED: ClassVar[dict[str, str]] = {"layers": "mlp_layers"}  # fields config.load_hparams fills from tracing
    layers: list[int] | None = None  # None: tracing result's MLP layers, else default_mlp_layers
    mom2_update_weight: float = 15000.0  # lam in lam*C + K K^T

    def resolved_layers(self, model: LoadedModel) -> list[int]:
        return check_layers(model, self.layers if self.layers is not None else default_mlp_layers(model), "layers")

    def target_layer(self, model: LoadedModel) -> int:
        """The layer whose residual the target z is optimised at."""
        return self.resolved_layers(model)[-1]

    def validate(self, model: LoadedModel) -> None:
        super().validate(model)
        check_target_layer(model, self.target_layer(model))
        if self.mom2_update_weight < 0:
            raise EditError(f"mom2_update_weight must be >= 0, got {self.mom2_update_weight}")


@register("memit", MEMITHparams, batch=True)
def run(model: LoadedModel, records, hp: MEMITHparams, tx: WeightTransaction, state: EditState) -> dict:
    layers = hp.resolved_layers(model)
    prefixes = edit_prefixes(model, hp, state)
    C = edit_statistics(model, [("w_out", l) for l in layers], hp, state)
    h, delta = targets_at(model, records, layers[-1], hp, prefixes)
    steps = memit_chain(model, records, "w_out", layers, h + delta, layers[-1],
                        lam_solver(C, "w_out", hp.mom2_update_weight), tx, prefixes, key_average=hp.key_average)
    return {"layers": layers, "steps": steps, "targets": [{"chain": "w_out", "layer": layers[-1], "kind": "w_out"}],
            "target_norm": float(delta.norm(dim=-1).mean())}
