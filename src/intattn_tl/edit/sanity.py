"""Is an edit sane? Checked after the update, before the weights are left changed.

Two cheap looks: the edit's own chain statistics (what each MEMIT-style chain realised against what it
intended, `methods.memit.memit_chain`), and the model's next-token distribution on a few fixed neutral
prompts, before and after. The limits are far outside what normal edits of the real models did (chain
cos/ratio 0.35-0.99 / 0.40-1.18 in RESULTS.md's chain accounts; committed cells down to Locality 2.4 with
fluent text), so a trip means a broken edit (statistics from a handful of tokens, a runaway update), not a
poor one. `editing.edit` rolls a tripped edit back exactly unless `force=True`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from intattn_tl.edit.transaction import EditError, WeightTransaction
from intattn_tl.model.spec import LoadedModel

# Neither about any benchmark subject nor about each other; plain continuations every model has an opinion on.
NEUTRAL_PROMPTS = (
    "The weather today is",
    "One, two, three, four,",
    "She opened the door and",
    "The capital city of a country is where",
    "Water boils at a temperature of",
    "In the morning I usually",
    "The book was written in",
    "Thank you very much for your",
)


@dataclass(frozen=True)
class SanityLimits:
    """Beyond these an edit is rolled back (or kept with force=True and a warning)."""

    max_chain_ratio: float = 10.0  # |realised| / |intended| of any chain step's cumulative change (normal: <= 1.2)
    # Mean KL(before || after) of the next token on NEUTRAL_PROMPTS in nats, together with fewer than this
    # share of prompts keeping their most likely token. SmolLM2 MEMIT on 10 records: 0.001 and 100 %; on
    # statistics from 300 words: 15.8 and 0 %.
    max_probe_kl: float = 10.0
    min_probe_agreement: float = 0.125


DEFAULT_LIMITS = SanityLimits()


def probe(model: LoadedModel, prompts: tuple[str, ...] = NEUTRAL_PROMPTS) -> Float[Tensor, "n vocab"]:
    """Log-probabilities of the next token after each prompt (float32, on the CPU)."""
    enc = model.tokenizer(list(prompts), return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
    with torch.no_grad():  # causal: right padding never reaches a prompt's last real token
        logits = model.bridge(ids)
    last = mask.sum(dim=1) - 1  # right padding: each prompt's last real token
    picked = logits[torch.arange(len(prompts), device=logits.device), last.to(logits.device)]
    return torch.log_softmax(picked.float(), dim=-1).cpu()


def probe_change(before: Float[Tensor, "n vocab"], after: Float[Tensor, "n vocab"]) -> dict:
    """Mean KL(before || after) and the share of prompts whose most likely next token stayed the same."""
    if not torch.isfinite(after).all():
        return {"probe_kl": math.inf, "probe_agreement": 0.0}
    kl = (before.exp() * (before - after)).sum(dim=-1).mean()
    agree = (before.argmax(-1) == after.argmax(-1)).float().mean()
    return {"probe_kl": round(float(kl), 4), "probe_agreement": round(float(agree), 3)}


def chain_steps(stats: dict) -> list[dict]:
    """Every MEMIT-style chain step an edit's stats hold (batch methods: "steps"; one-at-a-time: per_edit)."""
    def listed(d: dict) -> list[dict]:
        steps = d.get("steps")  # FT's "steps" counts its optimiser steps
        return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []
    return listed(stats) + [s for e in stats.get("per_edit", []) for s in listed(e)]


def problems(stats: dict, change: dict, limits: SanityLimits = DEFAULT_LIMITS) -> list[str]:
    """Why this edit is not sane (empty: it is): non-finite weight changes, the chain accounts, then the
    neutral-prompt probe. The size of a weight change is recorded, not limited: it depends on the model's
    scale (SmolLM2 MEMIT: 0.06-0.12 x |W|, broken 4.5-205; normal edits of the tiny random models: up to 300)."""
    out = [f"{name} changed by a non-finite amount" for name, ratio in change.get("weight_change", {}).items()
           if not math.isfinite(ratio)]
    for s in chain_steps(stats):
        cos, ratio = s.get("chain", (0.0, 0.0))
        where = f"{s.get('kind')}[{s.get('layer')}]"
        if not (math.isfinite(cos) and math.isfinite(ratio) and math.isfinite(s.get("delta_norm", 0.0))):
            out.append(f"chain step {where} is not finite (cos {cos}, ratio {ratio})")
        elif ratio > limits.max_chain_ratio:
            out.append(f"chain step {where} moved the residual {ratio:.1f}x what it intended "
                       f"(max_chain_ratio={limits.max_chain_ratio})")
    kl, agree = change["probe_kl"], change["probe_agreement"]
    if not math.isfinite(kl):
        out.append("the edited model's logits on neutral prompts are not finite")
    elif kl > limits.max_probe_kl and agree < limits.min_probe_agreement:
        out.append(f"on {len(NEUTRAL_PROMPTS)} unrelated prompts the next-token distribution moved by KL {kl:.2f} nats "
                   f"(max_probe_kl={limits.max_probe_kl}) and only {agree:.0%} kept their most likely token "
                   f"(min_probe_agreement={limits.min_probe_agreement})")
    return out


class InsaneEditError(EditError):
    """An edit far outside anything normal edits do; it was rolled back exactly."""


def weight_change(tx: WeightTransaction, n_edits: int = 1) -> dict[str, float]:
    """|dW| / |W| of every weight `tx` edited, W as it found it, divided by the number of edits it holds."""
    return {f"{k}.{l}": round(float(tx.deltas[(k, l)].float().norm() / original.float().norm().clamp(min=1e-12))
                              / n_edits, 4) for (k, l), original in tx.originals.items()}


def check_sanity(model: LoadedModel, tx: WeightTransaction, method: str, stats: dict, before: Tensor,
                 limits: SanityLimits, force: bool, n_edits: int = 1) -> dict:
    """The neutral-prompt probe's change; InsaneEditError (the caller restores the weights) for an edit beyond
    `limits`, unless `force`, which keeps it with a warning on stderr."""
    change = {**probe_change(before, probe(model)), "weight_change": weight_change(tx, n_edits)}
    found = problems(stats, change, limits)
    if found and not force:
        raise InsaneEditError(f"{method}: this edit looks broken, so it was rolled back exactly (the weights are "
                              f"unchanged): {'; '.join(found)}. Check its inputs (key statistics, targets); "
                              "force=True (--force) keeps it anyway.")
    if found:
        print(f"[intattn] warning: {method}: edit kept by force although {'; '.join(found)}", file=sys.stderr)
    return {**change, "problems": found}
