"""ROME (Meng et al. 2022): one rank-one update of one layer's MLP output matrix per fact.

As the reference implementation (ROME's `compute_u` / `compute_v`, EasyEdit's copy of them):
- k* = the MLP key (input to W_out) at the last subject token, the plain mean over the bare prompt and
  20 context prefixes (10 of 5 tokens, 10 of 10: `context_lengths`, `key_average="uniform"`);
- v* = the MLP output W k_bare of the bare prompt plus the target delta (targets.target_deltas at this
  layer, optimised as a change of W_out's output, its clamp and weight decay sized by |W k_bare|:
  `target_size="module_output"`);
- with C = E[k k^T] over Wikipedia text and u = C^-1 k*, the update solves W k_bare = v* along u:

    Delta = (v* - W k_bare) u^T / (u^T k_bare)

  so ROME mixes keys: the direction from the averaged key, the equation from the bare prompt's (R-ROME,
  r_rome.py, uses the bare key throughout). Gemma-3 adds norm(W k) to the residual, so there the delta is
  optimised inside the post-feed-forward norm, with the loss through it (`family.output_emitter`), and v*
  is emittable by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from intattn_tl.edit.chain import (
    TargetFields,
    check_layers,
    check_target_layer,
    edit_prefixes,
    edit_statistics,
    target_hparams,
)
from intattn_tl.edit.keys import mlp_keys
from intattn_tl.edit.prefixes import ROME_LENGTHS
from intattn_tl.edit.targets import target_deltas
from intattn_tl.edit.transaction import EditError, EditState, WeightTransaction
from intattn_tl.methods.registry import register
from intattn_tl.model.spec import LoadedModel


@dataclass
class ROMEHparams(TargetFields):
    layers: list[int] | None = None  # exactly one layer; None: the YAML's / an early-middle default
    mom2_adjustment: bool = True  # False: C = I (plain least-norm rank-one update)
    v_weight_decay: float = 0.5  # ROME's value (MEMIT uses 1e-3)
    context_lengths: list[list[int]] = field(default_factory=lambda: [list(p) for p in ROME_LENGTHS])
    key_average: str = "uniform"  # ROME's compute_u: the plain mean over its flat template list
    target_size: str = "module_output"  # ROME's compute_v: clamp and decay by |W k_bare|
    # what sizes each target's step and clamp in a sequence: "current" (EasyEdit: W as the earlier edits left
    # it) or "unedited" (W before the sequence's first edit, kept in the EditState). With a relative step
    # on a post-norm family, "current" feeds each edit's growth of W into the next target (RESULTS.md).
    v_scale_reference: str = "current"

    def layer(self, model: LoadedModel) -> int:
        layers = self.layers if self.layers is not None else [default_rome_layer(model)]
        if len(layers) != 1:
            raise EditError(f"ROME edits exactly one layer; got layers={layers}")
        return check_layers(model, layers, "layers")[0]

    def validate(self, model: LoadedModel) -> None:
        super().validate(model)
        check_target_layer(model, self.layer(model))
        if self.v_scale_reference not in SCALE_REFERENCES:
            raise EditError(f"v_scale_reference must be one of {SCALE_REFERENCES}, got {self.v_scale_reference!r}")


SCALE_REFERENCES = ("current", "unedited")


def unedited_weight(model: LoadedModel, kind: str, layer: int, state: EditState) -> Tensor:
    """The weight as this EditState first saw it, i.e. before the sequence's first edit (a float32 copy)."""
    kept = state.data.setdefault("unedited_weights", {})
    if (kind, layer) not in kept:
        kept[(kind, layer)] = model.spec.family.weight(kind, layer).detach().float().clone()
    return kept[(kind, layer)]


def default_rome_layer(model: LoadedModel) -> int:
    """ROME's GPT-2 XL choice, layer 17 of 48, scaled to depth."""
    return round(model.spec.n_layers * 17 / 48)


def rank_one(W: Float[Tensor, "d_out d_in"], k: Float[Tensor, "d_in"], v: Float[Tensor, "d_out"],
             C: Float[Tensor, "d_in d_in"] | None, k_dir: Float[Tensor, "d_in"] | None = None,
             ) -> Float[Tensor, "d_out d_in"]:
    """Delta = (v - W k) u^T / (u^T k), u = C^-1 k_dir (k_dir defaults to k): afterwards (W + Delta) k = v
    exactly (float64)."""
    W, k, v = W.double(), k.double(), v.double()
    k_dir = k if k_dir is None else k_dir.double().to(k.device)
    u = k_dir if C is None else torch.linalg.solve(C.double().to(k.device), k_dir)
    denom = u @ k
    if not torch.isfinite(denom) or denom.abs() < 1e-12:
        raise EditError(f"ROME: degenerate key (k^T C^-1 k = {float(denom):.3g}); cannot make a rank-one update")
    return torch.outer(v - W @ k, u) / denom


def value_target(model: LoadedModel, layer: int, k_bare: Float[Tensor, "d_mlp"],
                 delta: Float[Tensor, "d_model"]) -> Float[Tensor, "d_model"]:
    """v*: the bare prompt's W_out k moved by `delta` (a change of W_out's output, target_deltas(kind="w_out"))."""
    W = model.spec.w_out[layer]
    with torch.no_grad():
        return W @ k_bare.to(W) + delta.to(W)


def rome_update(model: LoadedModel, record, hp: ROMEHparams, state: EditState,
                consistent: bool) -> tuple[int, Tensor, dict]:
    """(layer, Delta, stats) for one record. consistent=False: ROME (averaged key k*), True: R-ROME."""
    layer = hp.layer(model)
    prefixes = edit_prefixes(model, hp, state)
    C = edit_statistics(model, [("w_out", layer)], hp, state)[("w_out", layer)] if hp.mom2_adjustment else None
    reference = unedited_weight(model, "w_out", layer, state) if hp.v_scale_reference == "unedited" else None
    delta = target_deltas(model, [record], layer, target_hparams(hp), prefixes=prefixes, kind="w_out",
                          reference=reference)[0]
    k_bare = mlp_keys(model, [record], layer, [""])[0]
    k_dir = k_bare if consistent else mlp_keys(model, [record], layer, prefixes, hp.key_average)[0]
    v = value_target(model, layer, k_bare, delta)
    W = model.spec.w_out[layer]
    D = rank_one(W, k_bare, v, C, k_dir)
    return layer, D, {"layer": layer, "target_norm": float(delta.norm()), "delta_norm": float(D.norm()),
                      "weight_norm": float(W.float().norm())}


@register("rome", ROMEHparams, batch=False)
def run(model: LoadedModel, records, hp: ROMEHparams, tx: WeightTransaction, state: EditState) -> dict:
    (record,) = records
    layer, D, stats = rome_update(model, record, hp, state, consistent=False)
    tx.update("w_out", layer, D)
    return stats
