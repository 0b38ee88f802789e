"""Keys of the edited matrices at the subject: what W_out / W_O read when the model sees a fact.

MLP key k = input to W_out (`blocks.l.mlp.hook_post`); attention key k = the concatenated head outputs
before W_O (`blocks.l.attn.hook_z`, flattened). Like MEMIT, a record's key is averaged over its prompt
put behind each context prefix, so the edit does not hinge on the prompt starting the text.

How the prompts are averaged (`KeyAverage`) follows the reference implementations:
- "context_type" (MEMIT's `compute_ks`, which groups its templates by type, [["{}"], [generated...]]):
  1/2 * the bare prompt's key + 1/2 * the mean over the prefixed prompts;
- "uniform" (ROME's `compute_u`, one flat template list): the mean over all prompts, bare one included.
With only the bare prompt the two are the same.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from intattn_tl.data.records import EditRecord
from intattn_tl.edit.prefixes import context_prefixes
from intattn_tl.model.spec import LoadedModel
from intattn_tl.model.tokens import subject_span

SubjectTokens = Literal["last", "all"]
KeyAverage = Literal["context_type", "uniform"]
KEY_AVERAGES = ("context_type", "uniform")
BATCH = 64  # prompts per forward pass


def _prefixes(model: LoadedModel, prefixes: list[str] | None) -> list[str]:
    if prefixes is None:
        prefixes = context_prefixes(model)
    if not prefixes:
        raise ValueError("prefixes must hold at least one context prefix (use [''] for the bare prompt)")
    return prefixes


def flat_heads(site: str, x: Tensor) -> Tensor:
    """hook_z's heads side by side, as W_O reads them; other sites as they are."""
    return rearrange(x, "... heads d_head -> ... (heads d_head)") if site.endswith("hook_z") else x


def prompt_weights(prefixes: list[str], average: KeyAverage) -> Float[Tensor, "p"]:
    """The weight of each prefixed prompt in a record's key (they sum to 1)."""
    if average not in KEY_AVERAGES:
        raise ValueError(f"key average must be one of {KEY_AVERAGES}, got {average!r}")
    bare = torch.tensor([p == "" for p in prefixes])
    if average == "uniform" or bool(bare.all()) or not bool(bare.any()):
        return torch.full((len(prefixes),), 1 / len(prefixes), dtype=torch.float64)
    return torch.where(bare, 0.5 / bare.sum(), 0.5 / (~bare).sum()).double()


def subject_activations(
    model: LoadedModel, records: list[EditRecord], sites: list[str], prefixes: list[str] | None = None,
    subject_tokens: SubjectTokens = "last", average: KeyAverage = "context_type",
) -> dict[str, Float[Tensor, "n d"]]:
    """Activations at hook `sites` (e.g. "blocks.3.mlp.hook_post") at the subject, averaged over prefixes
    as `average` says (module docstring), each on the device its layer runs on.

    One forward per batch of prefixed prompts, stopped after the highest layer any site needs.
    """
    if subject_tokens not in ("last", "all"):
        raise ValueError(f"subject_tokens must be 'last' or 'all', got {subject_tokens!r}")
    prefixes = _prefixes(model, prefixes)
    weights = prompt_weights(prefixes, average)
    tok = model.tokenizer
    texts, spans, owner = [], [], []
    for i, r in enumerate(records):
        for p in prefixes:
            start, end = subject_span(tok, p + r.prompt, r.subject, start=len(p))
            texts.append(p + r.prompt)
            spans.append((end - 1, end) if subject_tokens == "last" else (start, end))
            owner.append(i)
    stop = max(int(s.split(".")[1]) for s in sites) + 1
    sums: dict[str, Tensor] = {}
    for b0 in range(0, len(texts), BATCH):
        ids = tok(texts[b0:b0 + BATCH], return_tensors="pt", padding=True)["input_ids"].to(model.device)
        got: dict[str, Tensor] = {}

        def grab(x, hook, site):
            got[site] = flat_heads(site, x.detach())

        hooks = [(s, lambda x, hook, s=s: grab(x, hook, s)) for s in sites]
        with torch.no_grad():
            model.bridge.run_with_hooks(ids, fwd_hooks=hooks, stop_at_layer=min(stop, model.spec.n_layers))
        for s in sites:
            # Right padding: every prompt's own positions are unchanged by the batch.
            rows = torch.stack([got[s][j, a:b].mean(0) for j, (a, b) in enumerate(spans[b0:b0 + BATCH])])
            sums[s] = torch.cat([sums[s], rows]) if s in sums else rows
    out = {}
    for s in sites:  # each site's keys stay on its layer's device (a split model's weights live there too)
        dev = sums[s].device
        total = torch.zeros(len(records), sums[s].shape[-1], dtype=torch.float64, device=dev)
        idx = torch.tensor(owner, device=dev)
        w = weights.to(dev).repeat(len(records))[:, None]
        out[s] = total.index_add_(0, idx, sums[s].double() * w).to(sums[s].dtype)
    return out


def mlp_keys(model: LoadedModel, records: list[EditRecord], layer: int, prefixes: list[str] | None = None,
             average: KeyAverage = "context_type") -> Float[Tensor, "n d_mlp"]:
    site = f"blocks.{layer}.mlp.hook_post"
    return subject_activations(model, records, [site], prefixes, average=average)[site]


def attn_keys(model: LoadedModel, records: list[EditRecord], layer: int, prefixes: list[str] | None = None,
              subject_tokens: SubjectTokens = "last", average: KeyAverage = "context_type") -> Float[Tensor, "n d_attn"]:
    site = f"blocks.{layer}.attn.hook_z"
    return subject_activations(model, records, [site], prefixes, subject_tokens, average)[site]


def key_site(kind: str, layer: int) -> str:
    """The hook whose activation is the key of weight `kind` ("w_out" or "w_o") at `layer`."""
    return {"w_out": f"blocks.{layer}.mlp.hook_post", "w_o": f"blocks.{layer}.attn.hook_z"}[kind]


def resid_post(model: LoadedModel, records: list[EditRecord], layer: int,
               prefixes: list[str] | None = None) -> Float[Tensor, "n d_model"]:
    """The residual stream after block `layer` at the last subject token (where MEMIT's target z lives)."""
    site = f"blocks.{layer}.hook_resid_post"
    return subject_activations(model, records, [site], prefixes)[site]
