"""The partial forward: decoder layers a..b-1 on any window of positions, through the family adapter.

Every path that runs the decoder stack itself instead of calling the bridge goes through `Forward`:
- tracing (`locate.tracing.Stack`, `_Runs`): the clean and corrupted runs record every layer's input, module
  outputs and keys/values; a restoration pass enters at any layer on positions t.. with the corrupted run's
  keys/values of the positions before t, replacing module outputs at one position (`Patch`);
- target optimisation and FT (`edit.targets.hidden_from` / `logits_from`: layers above the edited one on all
  positions; `Suffixes`: on each row's suffix only, against keys/values of its prefix kept from one run).

It owns the masks and rotary embeddings of the positions a pass computes (`Window`: one window start..total-1
shared by every row, or positions and masks per row), the stand-in for HF's KV cache (`KV`: records each
layer's keys/values, or puts kept ones, of chosen rows, before the new ones), running layers with patches on
attention / MLP / block outputs (`run`, `block`), and the final norm and unembedding. The masks are the
family's additive ones, the same numbers as the masks HF builds for eager attention (the bridge boots every
model in eager attention), so a pass here gives the bits the HF decoder layers give.

The generic family's hooked path (`edit.targets.HookedSuffixes`, `locate.tracing.trace_fact_loop`) is not
expressed here: it runs the whole bridge with hooks and has no layer, mask or cache of its own to share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from intattn_tl.model.spec import LoadedModel

KeysValues = tuple[Float[Tensor, "b heads k d_head"], Float[Tensor, "b heads k d_head"]]
# what a patch puts in: rows mask [r], position [r] (index into the computed positions), value [r, d]
Replacement = tuple[Bool[Tensor, "r"], Int[Tensor, "r"], Float[Tensor, "r d"]]


class KV:
    """Duck-typed HF cache handed to the attention modules (they call `update` with each layer's new keys/values).

    Without `kept` it records them (detached) and returns them unchanged: a run from position 0. With `kept`
    (layer -> keys/values of the positions before the window) it returns those of `rows` (all rows if None)
    followed by the new ones, keeping nothing, so every pass starts from the same cache; a layer with nothing
    kept attends to the new positions only."""

    def __init__(self, kept: dict[int, KeysValues] | None = None, rows: Int[Tensor, "r"] | None = None):
        self.kept, self.rows = kept, rows
        self.recorded: dict[int, KeysValues] = {}

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *args, **kwargs) -> KeysValues:
        if self.kept is None:
            self.recorded[layer_idx] = (k.detach(), v.detach())
            return k, v
        if layer_idx not in self.kept:
            return k, v
        pk, pv = self.kept[layer_idx]  # on that layer's device
        if self.rows is not None:
            rows = self.rows.to(pk.device)
            pk, pv = pk[rows], pv[rows]
        return torch.cat([pk, k], -2), torch.cat([pv, v], -2)


@dataclass
class Window:
    """What the attention of a pass needs about its positions: additive masks ([1 or b, 1, q, keys]) and
    rotary (cos, sin) per layer type, and the position ids handed to attention (None: not handed, the
    rotary embeddings already carry them)."""

    masks: dict[str, Tensor]
    rope: dict[str, tuple[Tensor, Tensor]]
    pos: Int[Tensor, "b q"] | None = None


@dataclass
class Patch:
    """Module outputs replaced during a pass: per layer, for masked rows, the value at that row's position."""

    attn: dict[int, Replacement] = field(default_factory=dict)
    mlp: dict[int, Replacement] = field(default_factory=dict)
    resid: dict[int, Replacement] = field(default_factory=dict)


def patched(out: Float[Tensor, "r p d"], patch: Replacement | None) -> Float[Tensor, "r p d"]:
    """`out` with `patch` applied (a copy), or `out` itself if there is none."""
    if patch is None:
        return out
    rows, pos, value = (t.to(out.device) for t in patch)  # `out` is on its layer's device
    idx = torch.arange(out.shape[0], device=out.device)
    out = out.clone()
    out[idx, pos] = torch.where(rows[:, None], value, out[idx, pos])
    return out


@dataclass
class Recorded:
    """A run's per-layer activations, on the input's device: block inputs plus the last output
    ([r, layers + 1, p, d]), attention and MLP outputs ([r, layers, p, d])."""

    resid: Float[Tensor, "r l1 p d"]
    attn: Float[Tensor, "r l p d"]
    mlp: Float[Tensor, "r l p d"]


class Forward:
    """The decoder stack of one loaded model, run in parts (module docstring). Cheap to make: it holds
    nothing but the adapter's modules and layer types."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self.family = model.spec.family
        self.layers = self.family.layers
        self.n_layers = len(self.layers)
        self.embed = self.family.embed
        self.kinds = self.family.layer_types()

    # ------------------------------------------------------------------------- positions

    def masks(self, allowed: Bool[Tensor, "*b q k"], distance: Int[Tensor, "*b q k"],
              dtype: torch.dtype) -> dict[str, Float[Tensor, "b 1 q k"]]:
        """Additive masks per layer type from the causally allowed (query, key) pairs and q - k, with a head
        axis (and a batch axis of 1 when `allowed` has none)."""
        out = self.family.masks(allowed, distance, dtype)
        return {k: (m[None, None] if allowed.ndim == 2 else m[:, None]) for k, m in out.items()}

    def rope(self, x: Tensor, pos: Int[Tensor, "b q"]) -> dict[str, tuple[Tensor, Tensor]]:
        return self.family.rope(x, pos)

    def window(self, x: Float[Tensor, "r p d"], start: int, total: int, position_ids: bool = False) -> Window:
        """Queries at positions start..total-1 over keys 0..total-1, the same for every row (keys before
        `start` come from a `KV` with kept keys/values)."""
        positions = torch.arange(start, total, device=x.device)
        q, k = positions[:, None], torch.arange(total, device=x.device)[None]
        return Window(self.masks(k <= q, q - k, x.dtype), self.rope(x, positions[None]),
                      positions[None] if position_ids else None)

    # ------------------------------------------------------------------------- layers

    def mlp_out(self, j: int, mid: Float[Tensor, "r p d"]) -> Float[Tensor, "r p d"]:
        """Layer j's MLP output (what `hook_mlp_out` sees) for the post-attention residual `mid`."""
        return self.family.mlp_out(j, mid).to(mid.device)

    def _block(self, j: int, x: Tensor, window: Window, cache: KV | None, patch: Patch | None):
        kind = self.kinds[j]
        on_attn = on_mlp = None
        if patch is not None:
            on_attn, on_mlp = (lambda a: patched(a, patch.attn.get(j))), (lambda m: patched(m, patch.mlp.get(j)))
        out, a, m = self.family.block(j, x, window.rope[kind], window.masks[kind], cache, window.pos,
                                      on_attn=on_attn, on_mlp=on_mlp)
        return (patched(out, patch.resid.get(j)) if patch is not None else out), a, m

    def block(self, j: int, x: Float[Tensor, "r p d"], window: Window, cache: KV | None = None,
              patch: Patch | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """One decoder layer: (block output, attn out, mlp out), patches applied, on x's device (the layer
        itself runs on its own)."""
        return tuple(t.to(x.device) for t in self._block(j, x, window, cache, patch))

    def run(self, x: Float[Tensor, "r p d"], layers: range, window: Window, cache: KV | None = None,
            patch: Patch | None = None, record: bool = False):
        """Layers `layers` (consecutive) on `x`, the residual entering the first of them at the window's
        positions; returns the last one's output on x's device, and with `record` also `Recorded`."""
        home = x.device
        resid, attn, mlp = [], [], []
        for j in layers:
            if record:
                resid.append(x.to(home))
            x, a, m = self._block(j, x, window, cache, patch)  # x stays on the layer's device for the next one
            if record:
                attn.append(a.to(home)), mlp.append(m.to(home))
        x = x.to(home)
        if not record:
            return x
        resid.append(x)
        return x, Recorded(torch.stack(resid, 1), torch.stack(attn, 1), torch.stack(mlp, 1))

    # ------------------------------------------------------------------------- the head

    def final_norm(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        return self.family.final_norm(h).to(h.device)

    def unembed(self, normed: Float[Tensor, "... d"]) -> Float[Tensor, "... vocab"]:
        """Logits from final-normed hidden states, on their device (the head may sit on another)."""
        return self.family.unembed(normed).to(normed.device)

    def logits(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... vocab"]:
        """Logits from the last layer's output: final norm, then the head."""
        return self.family.unembed(self.family.final_norm(h)).to(h.device)
