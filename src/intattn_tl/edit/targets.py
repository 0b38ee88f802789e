"""Target values: the residual change at one layer that makes the model say `target_new` (MEMIT's z - h).

For record i we look for delta_i such that adding it to the residual stream output of `layer`
(`blocks.{layer}.hook_resid_post`) at the last subject token makes every prefixed prompt continue with
target_new, while "{subject} is a" keeps its distribution at the last subject token (the delta's own
position: ROME's and MEMIT's lookup index; `kl_position="prompt_end"` takes it after "is a" instead):

    loss_i = mean_p NLL(target_new | prefix_p + prompt) + kl_factor * KL(p0 || p_delta)
             + v_weight_decay * |delta_i| / |s_i|^2,        |delta_i| <= clamp_norm_factor * |s_i|

(s_i sizes the target: `target_size="residual"`, MEMIT's, the residual h_i at that position in the
unprefixed prompt; "module_output", ROME's, the edited module's output W k there.)
Adam moves every coordinate by about v_lr per step whatever the gradient's size, so v_lr is in the
residual's own units, and residual norms differ by orders of magnitude between models (Gemma-3's is
~20x SmolLM2's at the edit layer). `v_lr_units="resid_rms"` makes the step v_lr * rms(h_i) instead, by
optimising u_i = delta_i / rms(h_i): the same relative step on every model. "absolute" is MEMIT's
(and EasyEdit's) parameterisation (v_lr = 0.5), kept in the SmolLM2 YAMLs that the committed tables used.
The default, 0.15 * rms, is the smallest of the values tried that makes the targets work (injected_accuracy
>= 90 % on the first 20 WikiData_counterfact records) on every real model (RESULTS.md, "Target check").

Nothing below `layer`, and nothing before the subject token, depends on delta. So the model runs up to
`layer` once (`residual_at`), the layers above it run once over the positions before each row's subject
token to keep their keys/values (`Suffixes`), and every Adam step runs only the layers above `layer` on
the positions from the subject token on. `logits_from` is the plain (all positions) version of the same
partial forward; both run on the engine in model/forward.py.
A family that runs no blocks itself (families/generic.py) uses `HookedSuffixes` instead: the
full bridge forward with the delta added by a hook. Records are optimised together in one padded batch; Adam is element-wise and each record
stops on its own, so a record's delta is the same as if it were optimised alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from intattn_tl.core.paths import cache_dir
from intattn_tl.core.store import cached, write_torch
from intattn_tl.data.records import EditRecord
from intattn_tl.edit.keys import flat_heads, key_site, subject_activations
from intattn_tl.edit.prefixes import context_prefixes
from intattn_tl.edit.transaction import fingerprint as fingerprint_of
from intattn_tl.errors import IntattnError
from intattn_tl.model.forward import KV, Forward, Window
from intattn_tl.model.spec import LoadedModel, weights_fingerprint
from intattn_tl.model.tokens import answer_ids, prompt_ids, subject_span


class TargetError(IntattnError, ValueError):
    """Bad arguments for target optimisation (layer out of range, no prefixes, ...)."""


@dataclass(frozen=True)
class TargetHparams:
    v_lr: float = 0.15
    v_num_grad_steps: int = 25
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    early_stop_loss: float = 5e-2
    seed: int = 0
    v_lr_units: str = "resid_rms"  # the Adam step is v_lr * rms(h_i); "absolute": v_lr (module docstring)
    kl_position: str = "subject"  # where the KL term is read in "{subject} is a"; "prompt_end": after "a"
    target_size: str = "residual"  # what sizes clamp and weight decay: "residual" (MEMIT), "module_output" (ROME)

    def __post_init__(self):
        if self.v_num_grad_steps < 1:
            raise TargetError(f"v_num_grad_steps must be >= 1, got {self.v_num_grad_steps}")
        if self.v_lr <= 0 or self.clamp_norm_factor <= 0:
            raise TargetError(f"v_lr and clamp_norm_factor must be > 0, got {self.v_lr}, {self.clamp_norm_factor}")
        if self.kl_factor < 0 or self.v_weight_decay < 0:
            raise TargetError(f"kl_factor and v_weight_decay must be >= 0, got {self.kl_factor}, {self.v_weight_decay}")
        for name, allowed in (("v_lr_units", STEP_UNITS), ("kl_position", KL_POSITIONS),
                              ("target_size", TARGET_SIZES)):
            if getattr(self, name) not in allowed:
                raise TargetError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


STEP_UNITS = ("absolute", "resid_rms")
KL_POSITIONS = ("subject", "prompt_end")
TARGET_SIZES = ("residual", "module_output")


def step_scale(hp: TargetHparams, h0: Float[Tensor, "n d"]) -> Float[Tensor, "n 1"]:
    """What one unit of the optimised variable is worth in the residual stream, per record."""
    if hp.v_lr_units == "absolute":
        return torch.ones(h0.shape[0], 1, dtype=h0.dtype, device=h0.device)
    return h0.pow(2).mean(-1, keepdim=True).sqrt()


# ----------------------------------------------------------------------------- partial forward


def residual_at(model: LoadedModel, ids: Int[Tensor, "b t"], layer: int) -> Float[Tensor, "b t d"]:
    """blocks.{layer}.hook_resid_post, running only the blocks up to `layer`."""
    with torch.no_grad():
        if layer + 1 < model.spec.n_layers:
            return model.bridge(ids, stop_at_layer=layer + 1)
        # the top layer: a run to the end returns logits (final norm + unembedding), so read the hook instead
        _, cache = model.bridge.run_with_cache(ids, names_filter=[f"blocks.{layer}.hook_resid_post"])
        return cache[f"blocks.{layer}.hook_resid_post"]


def hidden_from(model: LoadedModel, resid: Float[Tensor, "b t d"], layer: int) -> Float[Tensor, "b t d"]:
    """Run blocks layer+1 .. n-1 and the final norm on `resid` (= the output of block `layer`).

    The partial-forward engine (model/forward.py) on positions 0..t-1. No padding mask is needed: pads are
    on the right, so no real token attends to them.
    """

    if getattr(model.spec.family.config, "use_bidirectional_attention", False):
        raise TargetError("partial forward does not support bidirectional attention")
    fw = Forward(model)
    h = fw.run(resid, range(layer + 1, fw.n_layers), fw.window(resid, 0, resid.shape[1], position_ids=True))
    return fw.final_norm(h)


def unembed(model: LoadedModel, h: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch vocab"]:
    return Forward(model).unembed(h).to(model.device)


def logits_from(model: LoadedModel, resid: Float[Tensor, "b t d"], layer: int,
                where: Bool[Tensor, "b t"] | None = None, ids: Int[Tensor, "b t"] | None = None) -> Tensor:
    """Logits of the full model given the output of block `layer`; only at `where` ([m, vocab]) if given.

    A family that cannot run its blocks (families/generic.py) runs the whole bridge on `ids` (the tokens
    `resid` came from) with `resid` put in place of `blocks.{layer}.hook_resid_post`."""
    if not model.spec.family.runs_blocks:
        if ids is None:
            raise TargetError(f"{model.name} runs no partial forward (generic adapter): logits_from needs the ids")
        logits = model.bridge.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.hook_resid_post",
                                                              lambda x, hook: resid.to(x))])
        return logits[where.to(logits.device)] if where is not None else logits
    h = hidden_from(model, resid, layer)
    return unembed(model, h[where.to(h.device)] if where is not None else h)


# ----------------------------------------------------------------------------- fast path: suffixes only


def _length_groups(lengths: list[int], waste: float = 0.2) -> list[tuple[int, int]]:
    """Ranges [lo, hi] of row lengths run together: from the longest down, shorter rows join a group while
    padding them to its length adds at most `waste` of its real tokens (each group costs a pass over the
    layers, so equal-length groups alone would be many small matmuls)."""
    count = {n: lengths.count(n) for n in set(lengths)}
    groups, hi, real, rows = [], None, 0, 0
    for n in sorted(count, reverse=True):
        if hi is not None and (rows + count[n]) * hi > (1 + waste) * (real + n * count[n]):
            groups.append((lo, hi))
            hi = None
        if hi is None:
            hi, real, rows = n, 0, 0
        lo, real, rows = n, real + n * count[n], rows + count[n]
    return groups + [(lo, hi)] if hi is not None else groups


class Suffixes:
    """Logits above `layer` when only positions >= start[i] of row i change (the delta's position onwards).

    Positions before start[i] do not depend on the delta, so the keys/values the upper layers make for
    them are computed once; each call runs the upper layers on the suffixes only, suffix j of row i at
    absolute position start[i] + j, attending to the kept keys c < start[i] and to suffix keys j' <= j.
    """

    def __init__(self, model: LoadedModel, resid: Float[Tensor, "b t d"], start: Int[Tensor, "b"],
                 length: Int[Tensor, "b"], layer: int):
        if getattr(model.spec.family.config, "use_bidirectional_attention", False):
            raise TargetError("partial forward does not support bidirectional attention")
        self.model, self.layer, self.forward = model, layer, Forward(model)
        dev, b = resid.device, resid.shape[0]
        P = int(start.max())
        S = int((length - start).max())
        self.S = S
        # keys/values of the fixed positions 0..P-1 (row i uses only c < start[i])
        fixed = KV()  # records
        c = torch.arange(P, device=dev)
        fixed_pos = c.unsqueeze(0).expand(b, P)
        fixed_masks = self.forward.masks(c[:, None] >= c[None, :], c[:, None] - c[None, :], resid.dtype)
        if P > 0:
            self._run(resid[:, :P], fixed_pos, {k: m.expand(b, 1, P, P) for k, m in fixed_masks.items()}, fixed)
        self.cache = KV(fixed.recorded)  # replays them before the suffixes of the rows of each call
        # suffixes, their absolute positions and their masks over [fixed keys, suffix keys]
        j = torch.arange(S, device=dev)
        self.pos = start[:, None] + j[None, :]  # [b, S]
        self.real = j[None, :] < (length - start)[:, None]
        self.suffix = resid.gather(1, self.pos.clamp(max=resid.shape[1] - 1)[..., None].expand(-1, -1, resid.shape[-1]))
        q = self.pos[:, :, None]  # [b, S, 1]
        keys_abs = torch.cat([c[None, None, :].expand(b, S, P), self.pos[:, None, :].expand(b, S, S)], -1)
        kept = torch.cat([(c[None, :] < start[:, None])[:, None, :].expand(b, S, P),
                          (j[None, :] <= j[:, None])[None].expand(b, S, S)], -1)
        self.masks = self.forward.masks(kept, q - keys_abs, resid.dtype)

    def _run(self, h: Tensor, pos: Tensor, masks: dict[str, Tensor], cache: KV) -> Tensor:
        fw = self.forward
        return fw.final_norm(fw.run(h, range(self.layer + 1, fw.n_layers), Window(masks, fw.rope(h, pos), pos), cache))

    def hidden(self, rows: Int[Tensor, "r"], add: Float[Tensor, "r d"]) -> Float[Tensor, "r S d"]:
        """Final-normed hidden states of the suffixes of `rows`, with `add` added at each row's start
        (zeros past a row's end).

        Suffix lengths vary a lot (2 to 24 tokens on WikiData_counterfact, mean 5.5), so one padded batch
        would spend most of its matmuls on padding: rows run in groups of similar length instead."""
        length = self.real[rows].sum(1)
        out = add.new_zeros(len(rows), self.S, add.shape[-1], dtype=self.suffix.dtype)  # model dtype (bf16 models too)
        for lo, s in _length_groups(length.tolist()):
            idx = torch.nonzero((length >= lo) & (length <= s))[:, 0]
            out[idx, :s] = self._suffix_hidden(rows[idx], add[idx], s) * self.real[rows[idx], :s, None]
        return out

    def logits(self, rows: Int[Tensor, "r"], add: Float[Tensor, "r d"],
               where: Bool[Tensor, "r S"]) -> Float[Tensor, "m vocab"]:
        """Logits at the suffix positions `where` ([r, S], row-major) of `rows`, with `add` at each row's start."""
        return unembed(self.model, self.hidden(rows, add)[where])

    def _suffix_hidden(self, rows: Int[Tensor, "r"], add: Float[Tensor, "r d"], s: int) -> Float[Tensor, "r s d"]:
        """`hidden` for rows whose suffixes all have length s: the first s suffix positions, no padding."""
        self.cache.rows = rows
        h = self.suffix[rows, :s].index_put((torch.arange(len(rows), device=add.device), torch.zeros_like(rows)),
                                            add.to(self.suffix.dtype), accumulate=True)
        keys = next(iter(self.masks.values())).shape[-1] - self.S + s  # [fixed keys, the first s suffix keys]
        return self._run(h, self.pos[rows, :s], {k: m[rows, :, :s, :keys] for k, m in self.masks.items()}, self.cache)


class HookedSuffixes:
    """`Suffixes` for a family that runs no blocks itself (families/generic.py): each call runs the whole
    bridge on the rows with `add` put into `blocks.{layer}.hook_resid_post` at each row's start by a hook,
    and reads the logits at the suffix positions. The same numbers as `Suffixes`, more work per step."""

    def __init__(self, model: LoadedModel, ids: Int[Tensor, "b t"], start: Int[Tensor, "b"],
                 length: Int[Tensor, "b"], layer: int):
        self.model, self.ids, self.start, self.layer = model, ids, start, layer
        self.S = int((length - start).max())
        j = torch.arange(self.S, device=ids.device)
        self.pos = start[:, None] + j[None, :]  # [b, S]
        self.real = j[None, :] < (length - start)[:, None]

    def logits(self, rows: Int[Tensor, "r"], add: Float[Tensor, "r d"],
               where: Bool[Tensor, "r S"]) -> Float[Tensor, "m vocab"]:
        at = self.start[rows]

        def inject(x, hook):  # x: [r, t, d] on the layer's device; out of place, so add keeps its gradient
            idx = (torch.arange(len(rows), device=x.device), at.to(x.device))
            return x.index_put(idx, add.to(x), accumulate=True)

        logits = self.model.bridge.run_with_hooks(self.ids[rows], fwd_hooks=[
            (f"blocks.{self.layer}.hook_resid_post", inject)]).to(self.model.device)
        r, s = torch.nonzero(where, as_tuple=True)  # row-major, as Suffixes' `hidden(...)[where]`
        return logits[r, self.pos[rows][r, s]]


# ----------------------------------------------------------------------------- batching prompts


@dataclass
class _Batch:
    ids: Int[Tensor, "rows t"]
    record: Int[Tensor, "rows"]  # which record each row belongs to
    subject: Int[Tensor, "rows"]  # last subject token of each row
    labels: Int[Tensor, "rows t"]  # teacher-forced target_new tokens, -100 elsewhere
    kl: Int[Tensor, "rows"]  # position of the KL prediction ("{subject} is a"), -1 for rewrite rows
    first: Int[Tensor, "n"]  # the unprefixed row of each record (for |h|)
    length: Int[Tensor, "rows"]  # tokens before the padding


def _rows(tok, record: EditRecord, prefixes: list[str],
          kl_position: str = "subject") -> list[tuple[list[int], int, list[int], int]]:
    rows = []
    for prefix in prefixes:
        text = prefix + record.prompt
        head = prompt_ids(tok, text)
        ans = answer_ids(tok, text, record.target_new)
        labels = [-100] * (len(head) - 1) + ans + [-100]
        subj = subject_span(tok, text, record.subject, start=len(prefix))[1] - 1
        rows.append((head + ans[:-1], subj, labels[: len(head) + len(ans) - 1], -1))
    kl_text = f"{record.subject} is a"
    kl_ids = prompt_ids(tok, kl_text)
    subj = subject_span(tok, kl_text, record.subject)[1] - 1
    rows.append((kl_ids, subj, [-100] * len(kl_ids), subj if kl_position == "subject" else len(kl_ids) - 1))
    return rows


def _batch(model: LoadedModel, records: list[EditRecord], prefixes: list[str],
           kl_position: str = "subject") -> _Batch:
    ids, rec, subj, labels, kl, first = [], [], [], [], [], []
    for i, r in enumerate(records):
        first.append(len(ids))
        for row_ids, s, lab, k in _rows(model.tokenizer, r, prefixes, kl_position):
            ids.append(row_ids), rec.append(i), subj.append(s), labels.append(lab), kl.append(k)
    t = max(len(x) for x in ids)
    pad = model.tokenizer.pad_token_id
    dev = model.device
    return _Batch(
        ids=torch.tensor([x + [pad] * (t - len(x)) for x in ids], device=dev),
        record=torch.tensor(rec, device=dev), subject=torch.tensor(subj, device=dev),
        labels=torch.tensor([x + [-100] * (t - len(x)) for x in labels], device=dev),
        kl=torch.tensor(kl, device=dev), first=torch.tensor(first, device=dev),
        length=torch.tensor([len(x) for x in ids], device=dev),
    )


# ----------------------------------------------------------------------------- optimisation


def _losses(model: LoadedModel, sf: Suffixes | HookedSuffixes, labels: Tensor, kl_pos: Tensor, record: Tensor, rows: Tensor,
            delta: Tensor, kl_init: Tensor | None, add=None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-record NLL and KL (zero for records without rows in `rows`), and the KL rows' log-probs.

    `labels` / `kl_pos` are in suffix coordinates (position - start of the row). `add(rows, delta)`: what
    enters the residual of each row (default: its record's delta itself)."""
    rec = record[rows]
    labels, kl_pos = labels[rows], kl_pos[rows]
    is_kl = kl_pos >= 0
    where = labels != -100
    where[is_kl, kl_pos[is_kl]] = True
    resid_add = delta[rec] if add is None else add(rows, delta)
    logp = torch.log_softmax(sf.logits(rows, resid_add, where).float(), -1)  # [m, vocab], row-major
    row_of = torch.nonzero(where)[:, 0]
    tgt = labels[where]
    is_tgt = tgt != -100
    tok_nll = -logp[is_tgt].gather(1, tgt[is_tgt, None]).squeeze(1)
    n_tok = (labels != -100).sum(1).clamp(min=1)
    n = delta.shape[0]
    per_row = torch.zeros(len(rows), device=logp.device).index_add(0, row_of[is_tgt], tok_nll) / n_tok
    n_rewrite = torch.zeros(n, device=logp.device).index_add(0, rec, (~is_kl).float()).clamp(min=1)
    nll = torch.zeros(n, device=logp.device).index_add(0, rec, per_row * (~is_kl)) / n_rewrite
    kl_logp = logp[~is_tgt]  # one per KL row, in row order
    kl = torch.zeros(n, device=logp.device)
    if kl_init is not None:
        kl_rec = rec[is_kl]
        kl_each = F.kl_div(kl_init[kl_rec], kl_logp, log_target=True, reduction="none").sum(-1)  # MEMIT's argument order
        kl = kl.index_add(0, kl_rec, kl_each)
    return nll, kl, kl_logp


def module_outputs(model: LoadedModel, ids: Int[Tensor, "b t"], at: Int[Tensor, "b"], kind: str,
                   layer: int, weights: tuple[Tensor, ...] = ()) -> tuple[Float[Tensor, "b d_model"], ...]:
    """W k of weight `kind` at `layer` at position at[i] of row i (before any post-norm), for the model's W
    and then for each of `weights` in its place (the same keys k)."""

    site, got = key_site(kind, layer), {}
    with torch.no_grad():
        model.bridge.run_with_hooks(ids, fwd_hooks=[(site, lambda x, hook: got.setdefault("k", x))],
                                    stop_at_layer=min(layer + 1, model.spec.n_layers))
    k = got["k"][torch.arange(len(at), device=ids.device), at]
    W = model.spec.family.weight(kind, layer)
    return tuple(flat_heads(site, k).to(w.dtype) @ w.to(k.device).T for w in (W, *weights))


def _unedited(model: LoadedModel, b, kind: str, weight: Tensor, layer: int,
              ref: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    """`ref` (the bare prompts' module output, or residual, under the current weights) as it would be with
    `weight` in place of the current W: ref - (W - weight) k."""
    W = model.spec.family.weight(kind, layer)
    _, now, was = module_outputs(model, b.ids[b.first], b.subject[b.first], kind, layer, (W.float(), weight.float()))
    return ref - (now - was).to(ref.dtype)  # both in float32: nothing but the edits in the difference


def optimize_deltas(model: LoadedModel, records: list[EditRecord], layer: int, hp: TargetHparams,
                    prefixes: list[str], kind: str | None = None,
                    reference: tuple[str, Tensor] | None = None,
                    sized_by: str | None = None) -> tuple[Float[Tensor, "n d_model"], dict]:
    """The optimisation itself (no cache): one padded batch for all `records`. With `kind` and a family that
    puts a norm after that module (`family.output_emitter`), the variable is the change dv of the module's
    output v at the subject token of every row (ROME's v*), entering the residual as emit(v_row, dv); its
    step and clamp are then relative to v of the bare prompt instead of h, and the weight decay is on the
    residual change it makes there (|emit(v, dv)| / |h|^2: the norm ignores v's scale, so |dv| / |v|^2 would
    weigh the same edit differently per layer).

    `reference` = (kind, W0): the step (v_lr_units="resid_rms") and the clamp are sized by the bare prompt's
    v or h as it would be with W0 in place of that weight (ROME in a sequence: the weight before the first
    edit). Otherwise by the current one, as in EasyEdit; then each edit that grows W grows the next target's
    step and clamp with it, and on Gemma-3 that runs away (RESULTS.md, "Gemma-3 ROME in a sequence").

    `sized_by` (with hp.target_size="module_output", a family without a post-norm there): the weight kind
    whose output W k at the bare prompt's subject sizes the clamp and the weight decay (ROME's
    |target_init|), instead of the residual; the step stays sized by the residual."""
    b = _batch(model, records, prefixes, hp.kl_position)
    n = len(records)
    resid = residual_at(model, b.ids, layer).detach().to(model.device)  # from layer's device to the batch's
    sf = (Suffixes(model, resid, b.subject, b.length, layer) if model.spec.family.runs_blocks
          else HookedSuffixes(model, b.ids, b.subject, b.length, layer))
    labels = torch.where(sf.real, b.labels.gather(1, sf.pos.clamp(max=b.ids.shape[1] - 1)), -100)
    kl_pos = torch.where(b.kl >= 0, b.kl - b.subject, -1)
    h0 = resid[b.first, b.subject[b.first]]  # [n, d]
    emit = model.spec.family.output_emitter(kind, layer) if kind is not None else None
    add, ref, resid_change = None, h0, lambda delta: delta  # noqa: E731
    if emit is not None:
        (v,) = module_outputs(model, b.ids, b.subject, kind, layer)
        ref = v[b.first]
        add = lambda rows, delta: emit(v[rows], delta[b.record[rows]].to(v.dtype))  # noqa: E731
        resid_change = lambda delta: emit(ref, delta.to(ref.dtype))  # noqa: E731
    size = ref if reference is None else _unedited(model, b, *reference, layer, ref)
    decay_norm = h0.norm(dim=-1)  # weight decay |resid change| / |h|^2 (MEMIT's; post-norm families too)
    clamp_by = size
    if sized_by is not None and emit is None:  # ROME: clamp and decay by the module's output W k
        (out,) = module_outputs(model, b.ids[b.first], b.subject[b.first], sized_by, layer)
        clamp_by = out if reference is None else _unedited(model, b, *reference, layer, out)
        decay_norm = clamp_by.norm(dim=-1).to(h0.dtype)
    max_norm = hp.clamp_norm_factor * clamp_by.norm(dim=-1)
    scale = step_scale(hp, size)
    torch.manual_seed(hp.seed)
    # delta = scale * u, optimised in float32 (float64 for a float64 model), never in bfloat16
    u = torch.zeros(n, resid.shape[-1], device=resid.device, dtype=torch.promote_types(resid.dtype, torch.float32),
                    requires_grad=True)
    opt = torch.optim.Adam([u], lr=hp.v_lr)
    final = torch.zeros_like(u, requires_grad=False)
    done = torch.zeros(n, dtype=torch.bool, device=resid.device)
    losses = torch.full((n,), float("nan"))
    is_kl_row = b.kl >= 0
    with torch.no_grad():  # initial KL distribution: delta = 0
        _, _, kl_init = _losses(model, sf, labels, kl_pos, b.record, torch.nonzero(is_kl_row)[:, 0], u.detach(), None,
                                add)
        kl_init = kl_init[torch.argsort(b.record[is_kl_row])]  # indexed by record
    for step in range(hp.v_num_grad_steps):
        active = ~done
        rows = torch.nonzero(active[b.record])[:, 0]
        delta = u * scale
        nll, kl, _ = _losses(model, sf, labels, kl_pos, b.record, rows, delta, kl_init, add)
        wd = hp.v_weight_decay * resid_change(delta).norm(dim=-1) / decay_norm**2
        loss = nll + hp.kl_factor * kl + wd
        stop = active & ((loss < hp.early_stop_loss) | (step == hp.v_num_grad_steps - 1))
        with torch.no_grad():
            final[stop] = delta[stop]
            losses[stop.cpu()] = loss[stop].detach().cpu().to(losses.dtype)
        done |= stop
        if done.all():
            break
        (grad,) = torch.autograd.grad(loss[~done].sum(), u)  # grads for u only, none for weights
        u.grad = grad
        opt.step()
        with torch.no_grad():  # project delta back into the L2 ball
            norm = u.norm(dim=-1)
            limit = max_norm / scale[:, 0]
            u.mul_(torch.where(norm > limit, limit / norm.clamp(min=1e-12), torch.ones_like(norm))[:, None])
    return final.detach(), {"loss": losses, "steps": step + 1}


# ----------------------------------------------------------------------------- do the targets work?


def injected_accuracy(model: LoadedModel, records: list[EditRecord], layer: int,
                      deltas: Float[Tensor, "n d_model"], batch: int = 32) -> Float[Tensor, "n"]:
    """Per record: the fraction of target_new tokens that are the model's argmax (teacher-forced on the bare
    prompt) with deltas[i] added to blocks.{layer}.hook_resid_post at the last subject token.

    No weight is touched: this checks the targets themselves. A weight edit can only realise what its
    target asks for, so a model where this is low cannot be edited with these target settings. It runs the
    full hooked model, not the partial forwards the optimisation uses, so it also checks those.
    """
    tok = model.tokenizer
    rows = []
    for r in records:
        head, ans = prompt_ids(tok, r.prompt), answer_ids(tok, r.prompt, r.target_new)
        rows.append((head + ans[:-1], len(head) - 1, ans, subject_span(tok, r.prompt, r.subject)[1] - 1))
    out = []
    for b0 in range(0, len(rows), batch):
        chunk = rows[b0:b0 + batch]
        t = max(len(ids) for ids, *_ in chunk)
        ids = torch.tensor([x + [tok.pad_token_id] * (t - len(x)) for x, *_ in chunk], device=model.device)
        subj = torch.tensor([s for *_, s in chunk])
        add = deltas[b0:b0 + len(chunk)]

        def inject(x, hook):  # x is on the device of `layer`
            x = x.clone()
            x[torch.arange(len(chunk), device=x.device), subj.to(x.device)] += add.to(x)
            return x

        with torch.no_grad():
            logits = model.bridge.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", inject)])
        for i, (_, first, ans, _) in enumerate(chunk):
            pred = logits[i, first:first + len(ans)].argmax(-1).tolist()
            out.append(sum(p == a for p, a in zip(pred, ans)) / len(ans))
    return torch.tensor(out)


# ----------------------------------------------------------------------------- disk cache


def _cache_key(fingerprint: str, record: EditRecord, layer: int, hp: TargetHparams, prefixes: list[str],
               site: str | None = None, scaled_by: str | None = None, sized_by: str | None = None) -> dict:
    """Everything a target depends on; stored inside its file too, so a swapped or stale file is caught.
    `site`: the module whose (pre-norm) output the target changes; None: the residual. `scaled_by`: the
    fingerprint of the reference weight sizing step and clamp, if not the current one."""
    full = json.dumps([record.prompt, record.subject, record.target_new, layer, dataclasses.asdict(hp), prefixes]
                      + ([f"{site} pre-norm output, weight decay on the residual change"] if site else [])
                      + ([f"step and clamp sized by weight {scaled_by}"] if scaled_by else [])
                      + ([f"clamp and decay sized by the output of {sized_by}"] if sized_by else []))
    return {"weights": fingerprint, "layer": layer, "subject": record.subject, "target_new": record.target_new,
            "sha256": hashlib.sha256(full.encode()).hexdigest()}


def _path(key: dict):
    return cache_dir() / "targets-v2" / key["weights"] / f"L{key['layer']}-{key['sha256'][:24]}.pt"


def _cache_path(fingerprint: str, record: EditRecord, layer: int, hp: TargetHparams, prefixes: list[str],
                site: str | None = None):
    return _path(_cache_key(fingerprint, record, layer, hp, prefixes, site))


def _load(key: dict, d: int) -> Tensor | None:
    t = cached(_path(key), key, "target")
    if t is not None and (not isinstance(t, Tensor) or t.shape != (d,) or not torch.isfinite(t).all()):
        return None
    return t


def _save(key: dict, t: Tensor) -> None:
    write_torch(_path(key), t.detach().cpu().clone(), key)


def target_deltas(model: LoadedModel, records: list[EditRecord], layer: int, hp: TargetHparams,
                  prefixes: list[str] | None = None, use_cache: bool = True,
                  chunk: int = 16, kind: str | None = None,
                  reference: Tensor | None = None) -> Float[Tensor, "n d_model"]:
    """delta_i added to blocks.{layer}.hook_resid_post at the last subject token of every prefixed prompt
    makes the model predict records[i].target_new (MEMIT's z - h); see the module docstring.
    With `kind` ("w_out" / "w_o"), where the family passes that module's output through a norm
    (`family.output_emitter`), delta_i is the change of the module's pre-norm output instead
    (`residual_deltas` turns it into the residual change); elsewhere the two are the same thing.

    `reference`: the weight `kind` had before a sequence's first edit; the step and clamp are then sized by
    it (`optimize_deltas`), and its fingerprint joins the cache key.

    Cached on disk per (model weights fingerprint, record, layer, hp, prefixes), that key and a sha256 inside
    each file (store.py); a corrupt, altered or swapped file is recomputed. Records not in the cache are optimised `chunk` at a time in one padded batch each.
    """

    if not records:
        raise TargetError("no records")
    if not 0 <= layer < model.spec.n_layers:
        raise TargetError(f"layer {layer} out of range for {model.name} ({model.spec.n_layers} layers)")
    fingerprint = weights_fingerprint(model)  # ~0.6 s on SmolLM2: once per call
    if prefixes is None:
        prefixes = context_prefixes(model, fingerprint=fingerprint)
    if not prefixes:
        raise TargetError("prefixes is empty; pass [''] for the bare prompt")
    d = model.spec.d_model
    site = kind if kind is not None and model.spec.family.output_emitter(kind, layer) is not None else None
    if reference is not None and kind is None:
        raise TargetError("a reference weight needs the kind of module it belongs to (kind='w_out' / 'w_o')")
    ref = None if reference is None else (kind, reference)
    scaled_by = None if reference is None else fingerprint_of(reference)
    if hp.target_size == "module_output" and kind is None:
        raise TargetError("target_size='module_output' needs the kind of module whose output sizes the target")
    sized_by = kind if hp.target_size == "module_output" else None
    keys = [_cache_key(fingerprint, r, layer, hp, prefixes, site, scaled_by, sized_by) for r in records]
    out: list[Tensor | None] = [_load(k, d) if use_cache else None for k in keys]
    todo = [i for i, t in enumerate(out) if t is None]
    for start in range(0, len(todo), chunk):
        idx = todo[start: start + chunk]
        deltas, _ = optimize_deltas(model, [records[i] for i in idx], layer, hp, prefixes, site, ref, sized_by)
        for i, dlt in zip(idx, deltas):
            out[i] = dlt.cpu()
            if use_cache:
                _save(keys[i], dlt)
    return torch.stack(out).to(model.device)


def residual_deltas(model: LoadedModel, records: list[EditRecord], layer: int, kind: str | None,
                    deltas: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
    """The residual change at blocks.{layer}.hook_resid_post (last subject token, bare prompt) that
    `target_deltas(..., kind=kind)` asks for: the deltas themselves unless the family passes the module's
    output through a norm, then emit(v, delta)."""

    emit = model.spec.family.output_emitter(kind, layer) if kind is not None else None
    if emit is None:
        return deltas
    site = key_site(kind, layer)
    k = subject_activations(model, records, [site], [""])[site]  # the bare prompts' keys at the last subject token
    W = model.spec.family.weight(kind, layer)
    with torch.no_grad():
        v = k.to(W) @ W.T
        return emit(v, deltas.to(v))
