"""FT-L (constrained fine-tuning, Zhu et al. 2020 as in ROME / EasyEdit): Adam on one layer's W_out.

Loss: teacher-forced NLL of target_new after the bare prompt (EasyEdit's "target_new" objective).
Constraint: every entry of the weight change stays in [-norm_constraint, norm_constraint] (EasyEdit clamps
W to W0 +- norm_constraint after each step). Stops once the loss is below early_stop_loss.

Only W_out[l] changes, so the model below block l is fixed: we run it once, keep the MLP keys k and the
residual h after block l, and each step recomputes just h + (change of the MLP output) through the
layers above (targets.logits_from). The change is the family adapter's `residual_change`: k dW^T (Llama-style)
or norm(Wk + k dW^T) - norm(Wk) (Gemma-3's post-norm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from intattn_tl.edit.chain import check_layers
from intattn_tl.edit.targets import logits_from
from intattn_tl.edit.transaction import EditError, EditState, WeightTransaction
from intattn_tl.methods.registry import register
from intattn_tl.model.spec import LoadedModel
from intattn_tl.model.tokens import answer_ids, prompt_ids


@dataclass
class FTHparams:
    layers: list[int] | None = None  # exactly one layer; None: the middle layer
    lr: float = 5e-4
    num_steps: int = 25
    norm_constraint: float = 5e-5  # max |dW| per entry; <= 0: unconstrained
    early_stop_loss: float = 1e-2

    def layer(self, model: LoadedModel) -> int:
        layers = self.layers if self.layers is not None else [model.spec.n_layers // 2]
        if len(layers) != 1:
            raise EditError(f"FT edits exactly one layer's W_out; got layers={layers}")
        return check_layers(model, layers, "layers")[0]

    def validate(self, model: LoadedModel) -> None:
        self.layer(model)
        if self.lr <= 0 or self.num_steps < 1:
            raise EditError(f"FT needs lr > 0 and num_steps >= 1 (got {self.lr}, {self.num_steps})")


def _inputs(model: LoadedModel, record) -> tuple[Tensor, Tensor]:
    """Token ids of prompt + target_new[:-1] and the labels (-100 except the target tokens)."""
    head = prompt_ids(model.tokenizer, record.prompt)
    ans = answer_ids(model.tokenizer, record.prompt, record.target_new)
    ids = torch.tensor([head + ans[:-1]], device=model.device)
    labels = torch.tensor([[-100] * (len(head) - 1) + ans], device=model.device)
    return ids, labels


def _below(model: LoadedModel, ids: Tensor, layer: int) -> tuple[Tensor, Tensor]:
    """(MLP key at every position, residual after block `layer`), running only blocks 0..layer."""
    got = {}

    def grab(x, hook):
        got["k"] = x.detach()

    with torch.no_grad():
        h = model.bridge.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", grab)], stop_at_layer=layer + 1)
    return got["k"], h.detach()


def mlp_change(model: LoadedModel, layer: int, k: Float[Tensor, "b t d_mlp"],
               dW: Float[Tensor, "d_model d_mlp"]) -> Float[Tensor, "b t d_model"]:
    """How the block's residual output moves when W_out[layer] becomes W + dW."""
    return model.spec.family.residual_change("w_out", layer, k, dW)


@register("ft", FTHparams, batch=False)
def run(model: LoadedModel, records, hp: FTHparams, tx: WeightTransaction, state: EditState) -> dict:
    (record,) = records
    layer = hp.layer(model)
    ids, labels = _inputs(model, record)
    k, h = _below(model, ids, layer)
    where = labels != -100
    targets = labels[where]
    # The change is optimised in float32 whatever the model's dtype: Adam's steps (≈ lr) on a bfloat16 dW,
    # and a bfloat16 dW added to W, would round most of them away. The forward pass sees it in W's dtype.
    w = model.spec.w_out[layer]
    dW = torch.zeros(w.shape, dtype=torch.float32, device=w.device, requires_grad=True)
    opt = torch.optim.Adam([dW], lr=hp.lr)
    losses = []
    for _ in range(hp.num_steps):
        logits = logits_from(model, h + mlp_change(model, layer, k, dW.to(w.dtype)), layer, where, ids)
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        losses.append(float(loss.detach()))
        if loss.item() < hp.early_stop_loss:
            break
        (dW.grad,) = torch.autograd.grad(loss, dW)  # grads for dW only, none for the model's weights
        opt.step()
        if hp.norm_constraint > 0:
            with torch.no_grad():
                dW.clamp_(-hp.norm_constraint, hp.norm_constraint)
    tx.update("w_out", layer, dW.detach())
    return {"layer": layer, "loss_first": losses[0], "loss_last": losses[-1], "steps": len(losses)}
