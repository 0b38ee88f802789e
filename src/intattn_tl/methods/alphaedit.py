"""AlphaEdit (Fang et al. 2025): MEMIT's loop, with every update projected onto the null space of the
corpus keys so the outputs of preserved knowledge cannot move:
    W_out[l] += R K^T P (P (K K^T + K_p K_p^T) + l2 I)^-1,   P = U0 U0^T, C = U S U^T, S_0 < threshold.
K_p K_p^T sums the keys of earlier sequential batches; it lives in the EditState, not in a global.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from intattn_tl.edit.chain import (
    TargetFields,
    check_layers,
    check_target_layer,
    default_mlp_layers,
    edit_prefixes,
    edit_statistics,
    memit_chain,
    targets_at,
)
from intattn_tl.edit.keys import mlp_keys
from intattn_tl.edit.solve import nullspace_projector, solve_projected
from intattn_tl.edit.transaction import EditError, EditState, WeightTransaction
from intattn_tl.methods.registry import register
from intattn_tl.model.spec import LoadedModel


@dataclass
class AlphaEditHparams(TargetFields):
    TRACED: ClassVar[dict[str, str]] = {"layers": "mlp_layers"}  # fields config.load_hparams fills from tracing
    layers: list[int] | None = None  # None: tracing result's MLP layers, else default_mlp_layers
    nullspace_threshold: float = 2e-2  # EasyEdit's: eigenvalues of E[k k^T] below it span the null space
    L2: float = 10.0  # EasyEdit's name for the ridge term l2 I

    def resolved_layers(self, model: LoadedModel) -> list[int]:
        return check_layers(model, self.layers if self.layers is not None else default_mlp_layers(model), "layers")

    def validate(self, model: LoadedModel) -> None:
        super().validate(model)
        check_target_layer(model, self.resolved_layers(model)[-1])
        if self.nullspace_threshold <= 0 or self.L2 <= 0:
            raise EditError(f"nullspace_threshold and L2 must be > 0 (got {self.nullspace_threshold}, {self.L2})")


def projectors(C: dict, layers: list[int], hp: AlphaEditHparams, state: EditState) -> dict[int, torch.Tensor]:
    held = state.data.setdefault("alphaedit_P", {})
    for layer in layers:
        key = (layer, hp.nullspace_threshold, hp.mom2_n_samples, hp.mom2_dataset)
        if key not in held:
            P, dim = nullspace_projector(C[("w_out", layer)], hp.nullspace_threshold)
            if dim == 0:
                raise EditError(f"alphaedit: E[kk^T] at layer {layer} has no eigenvalue below nullspace_threshold="
                                f"{hp.nullspace_threshold}; raise it (the null space is empty)")
            held[key] = P
    return {layer: held[(layer, hp.nullspace_threshold, hp.mom2_n_samples, hp.mom2_dataset)] for layer in layers}


@register("alphaedit", AlphaEditHparams, batch=True)
def run(model: LoadedModel, records, hp: AlphaEditHparams, tx: WeightTransaction, state: EditState) -> dict:
    layers = hp.resolved_layers(model)
    prefixes = edit_prefixes(model, hp, state)
    C = edit_statistics(model, [("w_out", l) for l in layers], hp, state)
    P = projectors(C, layers, hp, state)
    preserved = state.data.setdefault("alphaedit_preserved", {})  # layer -> sum of K K^T of earlier batches

    def solver(layer, R, K):
        prev = preserved.get(layer, torch.zeros_like(P[layer]))
        return solve_projected(R, K, P[layer], prev, hp.L2)

    h, delta = targets_at(model, records, layers[-1], hp, prefixes)
    steps = memit_chain(model, records, "w_out", layers, h + delta, layers[-1], solver, tx, prefixes,
                        key_average=hp.key_average)
    for layer in layers:  # the keys as the edited model computes them join the preserved set
        K = mlp_keys(model, records, layer, prefixes, hp.key_average).double().cpu()
        preserved[layer] = preserved.get(layer, torch.zeros_like(P[layer])) + K.T @ K
    return {"layers": layers, "steps": steps, "targets": [{"chain": "w_out", "layer": layers[-1], "kind": "w_out"}],
            "nullspace_dims": {l: int(torch.trace(P[l]).round()) for l in layers},
            "target_norm": float(delta.norm(dim=-1).mean())}
