"""IntAttn-Edit: MEMIT-style updates of W_O at the critical attention layers and of W_out at the critical
MLP layers, balanced by alpha (the attention share of causal effect):
    W_out += (1 - alpha) Delta_mlp,   W_O += alpha Delta_attn        (Eq. 13)

Choices the paper leaves open, each a hyperparameter:
- residual_split="share" (default): each module chain drives h_L by its share of the target delta,
  z = h_start + share * delta. Since the one-layer solve is linear in R, this is Eq. 13's scaling of the
  full-residual update, applied inside MEMIT's loop so keys and residuals stay recomputed after each
  update. "remainder": the second chain instead targets the full h_L + delta, absorbing the first's shortfall.
- order="attn_first" (default): the traced attention layers lie below the MLP ones, and MEMIT edits
  lower layers first so that later keys already see the earlier edits.
- one lambda per module (mom2_update_weight, attn_mom2_update_weight): lam weighs lam*C against K K^T and
  the two modules' keys have different scales (hook_post vs hook_z), so one lambda cannot fit both.
- target_site="shared" (default): one target, at the top layer L of the chains that run, optimised as a
  change of the module there (the one that owns L). "per_chain": each chain gets MEMIT's own target at its
  own top layer, optimised as a change of its own top module, and drives that layer's residual by its share.
  Without a post-norm the two differ only in where z sits; with one (Gemma-3) a target is emittable only
  by the module it was optimised for, and the shared one asks the MLP chain to build, two layers below,
  a change shaped by attention's post-norm (RESULTS.md, "IntAttn-Edit on Gemma-3").
A chain whose share is 0 is skipped, and L is the top layer of the chains that run, so alpha = 0 is
exactly MEMIT with the same MLP hyperparameters.

Parallel-residual blocks (GPT-J, GPT-NeoX, Phi: h + attn(ln(h)) + mlp(ln'(h)), families/generic.py): attention
and MLP of a layer read the same residual h, so "attention first, then MLP" orders the *edits*, not the data
flow inside a layer. An attention edit at layer l reaches the MLP keys of layers above l only; where both
chains edit the same layer, the MLP chain's keys there do not see the attention edit (on a sequential block
they do), and the MLP chain still starts from h_L as the attention edit left it, so the two shares add up
the same way. tests/test_generic.py checks each step's realised / intended change on a tiny NeoX (both with
the attention layer below the MLP one and with both at one layer): within 10 % at the edited layer, 25 % at L.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from intattn_tl.edit.chain import check_layers, edit_prefixes, edit_statistics, lam_solver, memit_chain, targets_at
from intattn_tl.edit.keys import resid_post
from intattn_tl.edit.transaction import EditError, EditState, WeightTransaction
from intattn_tl.methods.memit import MEMITHparams
from intattn_tl.methods.registry import register
from intattn_tl.model.spec import LoadedModel


def default_attn_layers(model: LoadedModel) -> list[int]:
    """The early band 1..n/7 (attention matters early), where no tracing result gave attention layers."""
    return list(range(1, max(2, model.spec.n_layers // 7) + 1))


DEFAULT_ALPHA = 0.3  # used only when neither the YAML, the overrides nor a tracing result gives alpha


@dataclass
class IntAttnHparams(MEMITHparams):
    TRACED: ClassVar[dict[str, str]] = {"layers": "mlp_layers", "attn_layers": "attn_layers", "alpha": "alpha"}
    alpha: float | None = None  # None: tracing result's alpha (filled by config.load_hparams), else DEFAULT_ALPHA
    attn_layers: list[int] | None = None  # None: tracing result's, else default_attn_layers
    attn_mom2_update_weight: float = 15000.0
    attn_subject_tokens: str = "last"  # "all": attention key = mean over the subject span
    order: str = "attn_first"  # or "mlp_first"
    residual_split: str = "share"  # or "remainder"
    target_site: str = "shared"  # or "per_chain"

    def resolved_alpha(self, model: LoadedModel) -> float:
        return float(self.alpha if self.alpha is not None else DEFAULT_ALPHA)

    def resolved_attn_layers(self, model: LoadedModel) -> list[int]:
        layers = self.attn_layers if self.attn_layers is not None else default_attn_layers(model)
        return check_layers(model, layers, "attn_layers")

    def target_layer(self, model: LoadedModel) -> int:
        """z's layer: the top of the chains that get a share (alpha 0: MLPs only, alpha 1: attention only)."""
        alpha = self.resolved_alpha(model)
        chains = [self.resolved_attn_layers(model)] if alpha > 0 else []
        chains += [self.resolved_layers(model)] if alpha < 1 else []
        return max(max(layers) for layers in chains)

    def validate(self, model: LoadedModel) -> None:
        super().validate(model)  # includes check_target_layer(target_layer)
        self.resolved_attn_layers(model)
        if not 0.0 <= self.resolved_alpha(model) <= 1.0:
            raise EditError(f"alpha must be in [0, 1], got {self.resolved_alpha(model)}")
        if self.attn_mom2_update_weight < 0:
            raise EditError(f"attn_mom2_update_weight must be >= 0, got {self.attn_mom2_update_weight}")
        for name, value, allowed in (("order", self.order, ("attn_first", "mlp_first")),
                                     ("residual_split", self.residual_split, ("share", "remainder")),
                                     ("attn_subject_tokens", self.attn_subject_tokens, ("last", "all")),
                                     ("target_site", self.target_site, ("shared", "per_chain"))):
            if value not in allowed:
                raise EditError(f"{name} must be one of {allowed}, got {value!r}")


@register("intattn", IntAttnHparams, batch=True)
def run(model: LoadedModel, records, hp: IntAttnHparams, tx: WeightTransaction, state: EditState) -> dict:
    alpha = hp.resolved_alpha(model)
    chains = {"w_o": (hp.resolved_attn_layers(model), alpha, hp.attn_mom2_update_weight, hp.attn_subject_tokens),
              "w_out": (hp.resolved_layers(model), 1.0 - alpha, hp.mom2_update_weight, "last")}
    order = ["w_o", "w_out"] if hp.order == "attn_first" else ["w_out", "w_o"]
    active = [k for k in order if chains[k][1] > 0]
    z_layer = max(max(chains[k][0]) for k in active)
    prefixes = edit_prefixes(model, hp, state)
    C = edit_statistics(model, [(k, l) for k in active for l in chains[k][0]], hp, state)
    top = next(k for k in reversed(order) if k in active and max(chains[k][0]) == z_layer)  # the chain that owns L
    # (layer, module) of each chain's target, optimised on the unedited weights before any chain runs
    sites = {k: (max(chains[k][0]), k) if hp.target_site == "per_chain" else (z_layer, top) for k in active}
    targets = {(L, k): targets_at(model, records, L, hp, prefixes, k) for L, k in sorted(set(sites.values()))}
    steps = []
    for i, kind in enumerate(active):
        layers, share, lam, subject_tokens = chains[kind]
        L = sites[kind][0]
        h0, delta = targets[sites[kind]]
        start = h0 if i == 0 else resid_post(model, records, L, [""])
        last = i == len(active) - 1
        z = h0 + delta if (last and i > 0 and hp.residual_split == "remainder") else start + share * delta
        steps += memit_chain(model, records, kind, layers, z, L, lam_solver(C, kind, lam), tx, prefixes,
                             subject_tokens, hp.key_average)
    return {"alpha": alpha, "z_layer": z_layer, "order": active, "steps": steps,
            "targets": [{"chain": k, "layer": sites[k][0], "kind": sites[k][1]} for k in active],
            "target_norm": float(sum(targets[sites[k]][1].norm(dim=-1).mean() for k in active) / len(active))}
