"""The MEMIT chain every MEMIT-style method shares: targets, keys, statistics, and the layer-by-layer update.

One target per fact: delta at the residual after the last edited layer L (targets.target_deltas), so
z = h_L + delta. Then for each layer l in ascending order, with keys and residuals recomputed after
every update:  R = (z - h_L) / (layers left),  W_out[l] += R K^T (lam C + K K^T)^-1.
`memit_chain` is that loop for either weight kind; MEMIT, AlphaEdit and both IntAttn-Edit chains use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from intattn_tl.edit.covariance import CHUNK, TEXT_MODES, second_moments
from intattn_tl.edit.keys import KEY_AVERAGES, key_site, resid_post, subject_activations
from intattn_tl.edit.prefixes import MEMIT_LENGTHS, STARTS, context_prefixes
from intattn_tl.edit.solve import solve_delta
from intattn_tl.edit.targets import (
    KL_POSITIONS,
    STEP_UNITS,
    TARGET_SIZES,
    TargetHparams,
    residual_deltas,
    target_deltas,
)
from intattn_tl.edit.transaction import EditError, EditState, WeightTransaction
from intattn_tl.model.spec import LoadedModel


@dataclass
class TargetFields:
    """Target-value optimisation (EasyEdit names), handed to targets.TargetHparams, plus the statistics."""

    v_lr: float = 0.15
    v_lr_units: str = "resid_rms"  # Adam's step is v_lr * rms of the residual; "absolute": v_lr (targets.py)
    v_num_grad_steps: int = 25
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    mom2_n_samples: int = 100_000
    mom2_dataset: str | None = None  # None: WikiText-2; else a text file
    early_stop_loss: float = 5e-2
    seed: int = 0
    use_prefixes: bool = True  # average keys / optimise targets over context prefixes (MEMIT)
    # The reference implementations' choices (EasyEdit's MEMIT / ROME); the alternatives are the toolkit's
    # earlier ones, kept as named options.
    context_lengths: list[list[int]] = field(default_factory=lambda: [list(p) for p in MEMIT_LENGTHS])
    key_average: str = "context_type"  # keys: 1/2 bare + 1/2 mean over prefixed (MEMIT); "uniform": plain mean
    kl_position: str = "subject"  # KL term of "{subject} is a" at the last subject token; "prompt_end": after "a"
    target_size: str = "residual"  # clamp and weight decay sized by the residual (MEMIT) or "module_output" (ROME)
    mom2_text: str = "documents"  # statistics: one sequence per corpus line (EasyEdit); "windows": 128-token cuts

    def validate(self, model: LoadedModel) -> None:
        if self.mom2_n_samples < CHUNK:
            raise EditError(f"mom2_n_samples must be >= {CHUNK}, got {self.mom2_n_samples}")
        if self.v_num_grad_steps < 1 or self.v_lr <= 0:
            raise EditError(f"v_num_grad_steps must be >= 1 and v_lr > 0 (got {self.v_num_grad_steps}, {self.v_lr})")
        for name, allowed in (("v_lr_units", STEP_UNITS), ("kl_position", KL_POSITIONS),
                              ("target_size", TARGET_SIZES), ("key_average", KEY_AVERAGES),
                              ("mom2_text", TEXT_MODES)):
            if getattr(self, name) not in allowed:
                raise EditError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.context_lengths or any(len(p) != 2 or min(p) < 1 or p[1] % len(STARTS)
                                           for p in self.context_lengths):
            raise EditError(f"context_lengths must be [[n_tokens, count], ...] with count a multiple of "
                            f"{len(STARTS)}, got {self.context_lengths}")


def check_layers(model: LoadedModel, layers, what: str) -> list[int]:
    layers = [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < model.spec.n_layers]
    if bad or not layers or len(set(layers)) != len(layers):
        raise EditError(f"{what} {layers} invalid for {model.name}: need distinct layers in [0, {model.spec.n_layers - 1}]")
    return sorted(layers)


def check_target_layer(model: LoadedModel, layer: int) -> None:
    """A target z lives at the last subject token after `layer`; on the model's last layer no attention
    above carries it to the positions that predict the answer, so the gradient is exactly 0: refused."""
    if layer >= model.spec.n_layers - 1:
        raise EditError(f"layer {layer} is {model.name}'s last: a residual change at the subject token there cannot "
                        f"reach the answer's positions (no attention layer above), so the edit would do nothing; "
                        f"use layers <= {model.spec.n_layers - 2}")


def default_mlp_layers(model: LoadedModel) -> list[int]:
    """MEMIT's early-middle band scaled to depth (GPT-J 3-8 of 28); used where no tracing result gave layers
    (config.load_hparams fills a traced model's layers before any method sees them)."""
    n = model.spec.n_layers
    return list(range(max(1, n // 10), max(2, n // 4) + 1))


def target_hparams(hp):
    """The TargetHparams whose fields a method's hparams share by name."""
    names = {f.name for f in dataclasses.fields(TargetHparams)}
    return TargetHparams(**{k: v for k, v in dataclasses.asdict(hp).items() if k in names})


def edit_prefixes(model: LoadedModel, hp, state: EditState) -> list[str]:
    """Context prefixes, fetched once per EditState: they must come from the weights before any edit."""
    if not hp.use_prefixes:
        return [""]
    if "prefixes" not in state.data:
        state.data["prefixes"] = context_prefixes(model, hp.context_lengths)
    return state.data["prefixes"]


def edit_statistics(model: LoadedModel, sites: list[tuple[str, int]], hp, state: EditState) -> dict:
    """E[k k^T] per site, held by the EditState so later sequential batches reuse the unedited model's."""
    held = state.data.setdefault("second_moments", {})
    key = lambda s: (*s, hp.mom2_n_samples, hp.mom2_dataset, hp.mom2_text)  # noqa: E731
    missing = [s for s in sites if key(s) not in held]
    if missing:
        got = second_moments(model, missing, hp.mom2_n_samples, hp.mom2_dataset, progress=True, text=hp.mom2_text)
        held.update({key(s): c for s, c in got.items()})
    return {s: held[key(s)] for s in sites}


def to_module_space(model: LoadedModel, kind: str, layer: int, K: Float[Tensor, "n d_in"],
                    R: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
    """The change of W k that moves the module's *residual contribution* by R (the family adapter's
    `output_change`: R itself without a post-norm; through the norm, least squares, with one)."""
    return model.spec.family.output_change(kind, layer, K, R)


Solver = Callable[[int, Tensor, Tensor], Tensor]  # (layer, R [d_out, n], K [d_in, n]) -> delta


def cos_ratio(real: Float[Tensor, "n d"], want: Float[Tensor, "n d"]) -> tuple[float, float]:
    """(mean cosine, mean |real| / |want|) over rows: how much of an intended change was realised."""
    real, want = real.double(), want.double()
    cos = torch.nn.functional.cosine_similarity(real, want, dim=-1).mean()
    ratio = (real.norm(dim=-1) / want.norm(dim=-1).clamp(min=1e-12)).mean()
    return round(float(cos), 3), round(float(ratio), 3)


def memit_chain(model: LoadedModel, records, kind: str, layers: list[int], z: Float[Tensor, "n d_model"],
                z_layer: int, solver: Solver, tx: WeightTransaction, prefixes: list[str],
                subject_tokens: str = "last", key_average: str = "context_type") -> list[dict]:
    """Ascending over `layers`: recompute keys and h_{z_layer}, solve for (z - h)/(layers left), update.

    Each step's stats account for where the edit goes (cos_ratio of realised vs intended): `module`, the
    module-output change asked for vs K dW^T; `resid@l`, R vs the change of the module's residual
    contribution (through a post-norm if the family has one); `resid@z`, R vs what h_{z_layer} moved;
    `chain`, this chain's whole target z - h (before its first step) vs what h_{z_layer} has moved so far."""
    family = model.spec.family
    stats = []
    h = h_first = resid_post(model, records, z_layer, [""])
    for i, layer in enumerate(layers):
        site = key_site(kind, layer)
        K = subject_activations(model, records, [site], prefixes, subject_tokens, key_average)[site]
        R = (z - h) / (len(layers) - i)
        want = to_module_space(model, kind, layer, K, R)
        delta = solver(layer, want.T, K.T)
        tx.update(kind, layer, delta)
        h_next = resid_post(model, records, z_layer, [""])  # what the next step starts from
        with torch.no_grad():
            at_l = family.residual_change(kind, layer, K, delta.to(K.dtype))
            stats.append({"kind": kind, "layer": layer, "residual_norm": float(R.norm(dim=-1).mean()),
                          "delta_norm": float(delta.norm()), "module": cos_ratio(K.to(delta.dtype) @ delta.T, want),
                          "resid@l": cos_ratio(at_l, R), "resid@z": cos_ratio(h_next - h, R),
                          "chain": cos_ratio(h_next - h_first, z - h_first)})
        h = h_next
    return stats


def lam_solver(C: dict, kind: str, lam: float) -> Solver:
    return lambda layer, R, K: solve_delta(R, K, C[(kind, layer)], lam)


def targets_at(model: LoadedModel, records, z_layer: int, hp, prefixes: list[str], kind: str = "w_out"):
    """(h_L on the bare prompts, delta): the chain drives h_L to h_L + delta. The target is optimised as a
    change of module `kind`'s output at L (targets.target_deltas), so where a norm sits between that module
    and the residual (Gemma-3) delta is a residual change the top layer can emit through it."""
    out = target_deltas(model, records, z_layer, target_hparams(hp), prefixes=prefixes, kind=kind)
    h = resid_post(model, records, z_layer, [""])
    return h, residual_deltas(model, records, z_layer, kind, out).to(h.device)  # where layer L runs
