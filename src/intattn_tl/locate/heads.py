"""Per-head causal tracing: restore one attention head's output (`blocks.l.attn.hook_z`) in the corrupted run.

Same corruption and scores as `tracing.trace_fact` (noise of noise_scale x the embedding std on the subject
tokens, N seeded samples; P(r) and LD = logit(r) - logit(r'), averaged over samples). A site restores the
clean `hook_z` of a set of heads at (layer l, token t); `trace_heads` takes every single head at the last
subject token and the last token, plus all heads of each layer together (W_O is linear, so that row is the
module-level `attn` restoration of `trace_fact`, and the heads' sum can be set against it).

Every restoration goes through the bridge's `hook_z` hook point with a per-row head mask, rows = sites x
noise samples. Families that run their blocks (`runs_blocks`) do it inside the tracing stack's pass: a site's
rows enter the layer stack at its layer l from the cached corrupted run and only positions t.. are computed
(keys/values of earlier positions come from the corrupted run), as in `tracing._Runs`; the stack calls the HF
attention, whose o_proj is the bridge's wrapper, so the `hook_z` hook fires there too. Other families (the
generic adapter) run full batched `bridge.run_with_hooks` forwards. `trace_heads_loop` is the reference:
one hooked forward per (position, layer, head).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from intattn_tl.core.store import _atomic
from intattn_tl.locate.tracing import (
    MIN_LD_GAP,
    Stack,
    TraceError,
    embedding_std,
    ld_facts,
    open_store,
    pick_contrast,
    prepare_fact,
    score_rows,
    select_facts,
    subject_noise,
    window_layers,
    write_selection,
)
from intattn_tl.model.forward import KV, Patch
from intattn_tl.model.spec import LoadedModel

POSITIONS = ("last subject", "last")
ENGINES = ("auto", "stack", "hooks")
LOGIT_BUDGET = 2**27  # logits a full hooked forward may hold at once (rows x tokens x vocab)
TOP_K = (1, 5, 10)


def z_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


@dataclass
class HeadTrace:
    """One fact's per-head grid. `prob` / `logit_diff`: [position, layer, head] over `POSITIONS` (token indices
    in `positions`); `attn_prob` / `attn_logit_diff`: [position, layer], all heads of the layer restored together."""

    prompt: str
    subject: str
    answer: str
    tokens: list[str]
    subject_span: tuple[int, int]
    positions: tuple[int, int]
    answer_token: int
    contrast_token: int
    known: bool
    p_clean: float
    p_corrupt: float
    ld_clean: float
    ld_corrupt: float
    prob: np.ndarray = field(repr=False)
    logit_diff: np.ndarray = field(repr=False)
    attn_prob: np.ndarray = field(repr=False)
    attn_logit_diff: np.ndarray = field(repr=False)

    ARRAYS = ("prob", "logit_diff", "attn_prob", "attn_logit_diff")

    def _normalized(self, ld: np.ndarray) -> np.ndarray:
        gap = self.ld_clean - self.ld_corrupt
        if gap <= 1e-6:  # as TraceResult.ld_effect: the corruption did not lower LD, no signal
            return np.full_like(ld, np.nan)
        return (ld - self.ld_corrupt) / gap

    @property
    def ld_effect(self) -> Float[np.ndarray, "pos layer head"]:
        """(LD_pt - LD_*) / (LD_clean - LD_*) per [position, layer, head], as TraceResult.ld_effect."""
        return self._normalized(self.logit_diff)

    @property
    def attn_ld_effect(self) -> Float[np.ndarray, "pos layer"]:
        return self._normalized(self.attn_logit_diff)

    @property
    def prob_effect(self) -> Float[np.ndarray, "pos layer head"]:
        return self.prob - self.p_corrupt

    def save(self, path: Path) -> None:
        meta = {k: v for k, v in self.__dict__.items() if k not in self.ARRAYS}
        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:
                np.savez(f, **{k: getattr(self, k) for k in self.ARRAYS}, meta=np.array(json.dumps(meta)))
        _atomic(path, write)

    @classmethod
    def load(cls, path: Path) -> "HeadTrace":
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            meta.update(subject_span=tuple(meta["subject_span"]), positions=tuple(meta["positions"]))
            return cls(**meta, **{k: z[k] for k in cls.ARRAYS})


# ----------------------------------------------------------------------------- one fact


@dataclass
class _State:
    """A fact's clean and corrupted runs, what every restoration starts from."""

    ids: list[int]
    span: tuple[int, int]
    r: int
    r2: int
    noise: Float[Tensor, "n subj d"]
    clean_logits: Float[Tensor, "1 vocab"]
    corrupt_logits: Float[Tensor, "n vocab"]
    clean_z: Float[Tensor, "layer tok head d_head"]
    corrupt_in: Float[Tensor, "n layer_1 tok d"] | None = None  # stack engine: each layer's input
    kv: dict | None = None  # stack engine: the corrupted run's keys/values per layer


def _engine(model: LoadedModel, engine: str) -> str:
    if engine not in ENGINES:
        raise TraceError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "stack" and not model.spec.family.runs_blocks:
        raise TraceError(f"engine 'stack' needs a family that runs its blocks; {model.spec.family.name} does not "
                         "(use 'hooks' or 'auto')")
    return ("stack" if model.spec.family.runs_blocks else "hooks") if engine == "auto" else engine


def _noise_hook(noise: Tensor, span: tuple[int, int], samples: Tensor):
    s0, s1 = span
    def hook(act, hook):
        act = act.clone()
        act[:, s0:s1] += noise[samples.to(noise.device)].to(act)
        return act
    return hook


def _grab(store: dict, layer: int):
    def hook(z, hook):
        store[layer] = z.detach()
        return z
    return hook


def _state(model: LoadedModel, prompt, subject, answer, n_samples, noise_scale, embed_std, seed, contrast,
           engine: str) -> _State:
    fact = prepare_fact(model, prompt, subject, answer)
    bridge, dev, n_layers = model.bridge, model.device, model.spec.n_layers
    std = noise_scale * (embedding_std(model) if embed_std is None else embed_std)
    s0, s1 = fact.span
    noise = subject_noise(n_samples, s1 - s0, model.spec.d_model, std, seed).to(dev)
    ids = torch.tensor([fact.ids], device=dev)
    z: dict[int, Tensor] = {}
    grab = [(z_hook(j), _grab(z, j)) for j in range(n_layers)]
    if engine == "stack":
        stack = Stack(model)
        emb = stack.embed(ids)
        with bridge.hooks(fwd_hooks=grab):  # the stack's attention calls the bridge's o_proj: hook_z fires
            clean_logits = stack.run(emb, 0, 0, None, Patch())
        noisy = emb.repeat(n_samples, 1, 1)
        noisy[:, s0:s1] += noise.to(emb.dtype)
        corrupt_logits, corrupt_in, _, _, kv = stack.run(noisy, 0, 0, None, Patch(), record=True)
    else:
        with bridge.hooks(fwd_hooks=grab):
            clean_logits = bridge(ids)[:, -1]
        samples = torch.arange(n_samples)
        corrupt_logits = bridge.run_with_hooks(ids.repeat(n_samples, 1),
                                               fwd_hooks=[("hook_embed", _noise_hook(noise, fact.span, samples))])[:, -1]
        corrupt_in = kv = None
    if len(z) != n_layers:
        raise TraceError(f"hook_z fired at {len(z)} of {n_layers} layers; this model's attention bypasses the hook")
    clean_z = torch.stack([z[j][0].to(dev) for j in range(n_layers)])
    r2 = pick_contrast(corrupt_logits, fact.answer_token, contrast, model)
    return _State(fact.ids, fact.span, fact.answer_token, r2, noise, clean_logits, corrupt_logits, clean_z,
                  corrupt_in, kv)


def _restore_stack(model: LoadedModel, st: _State, t: int, layers: list[int],
                   masks: Bool[Tensor, "site head"]) -> tuple[Tensor, Tensor]:
    """Per site (restoring heads masks[i] at layer layers[i], token t; layers ascending): P(r) and LD per
    row (site-major, then noise sample). Rows enter the stack at their layer; positions t.. only."""
    stack, n = Stack(model), st.noise.shape[0]
    fw, total = stack.forward, len(st.ids)
    n_layers = fw.n_layers
    x0 = st.corrupt_in[:1, 0, t:]
    window = fw.window(x0, t, total)
    cache = KV({j: (k[:, :, :t], v[:, :, :t]) for j, (k, v) in st.kv.items()})  # corrupted keys/values before t
    layer_of = torch.tensor(layers, device=masks.device)
    x, count = x0[:0], 0
    for j in range(layers[0], n_layers):
        entering = int((layer_of == j).sum())
        if entering:
            x = torch.cat([x, st.corrupt_in[:, j, t:].repeat(entering, 1, 1)])
            count += entering
        row_layer = layer_of[:count].repeat_interleave(n)
        active = masks[:count].repeat_interleave(n, 0) & (row_layer == j)[:, None]  # [rows, head]
        cache.rows = torch.arange(n, device=x.device).repeat(count)  # each row's own noise sample
        hooks = []
        if entering:
            clean = st.clean_z[j, t]  # [head, d_head]

            def patch(z: Float[Tensor, "r p head d_head"], hook, active=active, clean=clean):
                z = z.clone()
                z[:, 0] = torch.where(active.to(z.device)[:, :, None], clean.to(z), z[:, 0])  # position t
                return z
            hooks = [(z_hook(j), patch)]
        with model.bridge.hooks(fwd_hooks=hooks):
            x = fw.block(j, x, window, cache)[0]
    return stack.scores(x[:, -1], st.r, st.r2)


def _restore_hooks(model: LoadedModel, st: _State, ts: list[int], layers: list[int],
                   masks: Bool[Tensor, "site head"]) -> tuple[Tensor, Tensor]:
    """Per site (heads masks[i] at layer layers[i], token ts[i]): P(r) and LD per row, one full hooked forward."""
    n, dev = st.noise.shape[0], model.device
    rows = len(layers) * n
    samples = torch.arange(n).repeat(len(layers))
    row_t = torch.tensor(ts, device=dev).repeat_interleave(n)
    row_layer = torch.tensor(layers, device=dev).repeat_interleave(n)
    row_mask = masks.to(dev).repeat_interleave(n, 0)
    idx = torch.arange(rows, device=dev)

    def patch(j: int):
        def hook(z: Float[Tensor, "r p head d_head"], hook):
            sel = (row_mask & (row_layer == j)[:, None]).to(z.device)
            z = z.clone()
            at = row_t.to(z.device)
            z[idx.to(z.device), at] = torch.where(sel[:, :, None], st.clean_z[j][at].to(z), z[idx.to(z.device), at])
            return z
        return hook

    hooks = [("hook_embed", _noise_hook(st.noise, st.span, samples))]
    hooks += [(z_hook(j), patch(j)) for j in sorted(set(layers))]
    ids = torch.tensor([st.ids], device=dev).repeat(rows, 1)
    logits = model.bridge.run_with_hooks(ids, fwd_hooks=hooks)[:, -1]
    return score_rows(logits, st.r, st.r2)


def _sites(n_layers: int, n_heads: int) -> tuple[list[int], Bool[Tensor, "site head"]]:
    """Every single head, then every layer's heads all together; sorted by layer (the stack pass needs it)."""
    eye = torch.eye(n_heads, dtype=torch.bool)
    layers, masks = [], []
    for j in range(n_layers):
        layers += [j] * (n_heads + 1)
        masks += [eye, torch.ones(1, n_heads, dtype=torch.bool)]
    return layers, torch.cat(masks)


@torch.no_grad()
def restore_heads(
    model: LoadedModel, prompt: str, subject: str, answer: str, sites: Sequence[tuple[int, int, Sequence[int]]], *,
    n_samples: int = 10, noise_scale: float = 3.0, embed_std: float | None = None, seed: int = 0,
    contrast: int | str | None = None, max_rows: int = 32768, engine: Literal["auto", "stack", "hooks"] = "auto",
) -> tuple[Float[np.ndarray, "site"], Float[np.ndarray, "site"], dict]:
    """P(r) and LD (means over noise samples) per site (token, layer, heads): the clean hook_z of those heads
    at that token and layer put back into the corrupted run. Also returns the clean/corrupted scores."""
    engine = _engine(model, engine)
    n_layers, n_heads = model.spec.n_layers, model.spec.n_heads
    _check_samples(n_samples)
    sites = [(int(t), int(layer), tuple(int(h) for h in heads)) for t, layer, heads in sites]
    n_tok = len(prepare_fact(model, prompt, subject, answer).ids)  # no forward yet
    for t, layer, heads in sites:
        if not (0 <= t < n_tok and 0 <= layer < n_layers and heads and all(0 <= h < n_heads for h in heads)):
            raise TraceError(f"site (token {t}, layer {layer}, heads {heads}) is outside the model "
                             f"({n_tok} tokens, {n_layers} layers, {n_heads} heads) or restores no head")
    st = _state(model, prompt, subject, answer, n_samples, noise_scale, embed_std, seed, contrast, engine)
    prob, ld = _run_sites(model, st, sites, max_rows, engine)
    return prob.cpu().numpy(), ld.cpu().numpy(), _baselines(st)


def _run_sites(model, st: _State, sites: list[tuple[int, int, tuple[int, ...]]], max_rows: int, engine: str):
    n, n_tok, n_heads = st.noise.shape[0], len(st.ids), model.spec.n_heads
    prob = torch.empty(len(sites))
    ld = torch.empty(len(sites))
    if engine == "hooks":  # every row computes every token and unembeds them all
        vocab = st.clean_logits.shape[-1]
        per_pass = max(1, min(max_rows // (n * n_tok), LOGIT_BUDGET // (n * n_tok * vocab)))
        groups = [list(range(len(sites)))[i:i + per_pass] for i in range(0, len(sites), per_pass)]
    else:
        groups = []
        for t in sorted({s[0] for s in sites}):
            mine = sorted((i for i, s in enumerate(sites) if s[0] == t), key=lambda i: sites[i][1])
            per_pass = max(1, max_rows // (n * (n_tok - t)))
            groups += [mine[i:i + per_pass] for i in range(0, len(mine), per_pass)]
    for group in groups:
        masks = torch.zeros(len(group), n_heads, dtype=torch.bool)
        for k, i in enumerate(group):
            masks[k, list(sites[i][2])] = True
        layers = [sites[i][1] for i in group]
        if engine == "hooks":
            p, d = _restore_hooks(model, st, [sites[i][0] for i in group], layers, masks)
        else:
            p, d = _restore_stack(model, st, sites[group[0]][0], layers, masks)
        prob[group] = p.view(len(group), n).mean(1).float().cpu()
        ld[group] = d.view(len(group), n).mean(1).float().cpu()
    return prob, ld


def _baselines(st: _State) -> dict:
    p_clean, ld_clean = (float(x[0]) for x in score_rows(st.clean_logits, st.r, st.r2))
    p, d = score_rows(st.corrupt_logits, st.r, st.r2)
    return {"p_clean": p_clean, "p_corrupt": float(p.mean()), "ld_clean": ld_clean, "ld_corrupt": float(d.mean())}


def _head_trace(model, prompt, subject, answer, st: _State, positions, prob, ld) -> HeadTrace:
    tok = model.tokenizer
    return HeadTrace(
        prompt=prompt, subject=subject, answer=answer, tokens=[tok.decode([i]) for i in st.ids],
        subject_span=st.span, positions=positions, answer_token=st.r, contrast_token=st.r2,
        known=int(st.clean_logits[0].argmax()) == st.r, **_baselines(st),
        prob=prob[..., :-1].copy(), logit_diff=ld[..., :-1].copy(),
        attn_prob=prob[..., -1].copy(), attn_logit_diff=ld[..., -1].copy(),
    )


def _check_samples(n_samples: int) -> None:
    if n_samples < 1:
        raise TraceError(f"n_samples must be >= 1, got {n_samples}")


@torch.no_grad()
def trace_heads(
    model: LoadedModel, prompt: str, subject: str, answer: str, *, n_samples: int = 10, noise_scale: float = 3.0,
    embed_std: float | None = None, seed: int = 0, contrast: int | str | None = None, max_rows: int = 32768,
    engine: Literal["auto", "stack", "hooks"] = "auto",
) -> HeadTrace:
    """The per-head grid at the last subject token and the last token (module docstring).

    `engine`: "stack" (families that run their blocks: rows enter at their layer, positions t.. only),
    "hooks" (full hooked bridge forwards, any architecture), "auto" (stack where possible). Same numbers.
    """
    _check_samples(n_samples)
    engine = _engine(model, engine)
    n_layers, n_heads = model.spec.n_layers, model.spec.n_heads
    st = _state(model, prompt, subject, answer, n_samples, noise_scale, embed_std, seed, contrast, engine)
    positions = (st.span[1] - 1, len(st.ids) - 1)
    layers, masks = _sites(n_layers, n_heads)
    heads = [tuple(torch.nonzero(m).flatten().tolist()) for m in masks]
    prob = np.empty((len(POSITIONS), n_layers, n_heads + 1), dtype=np.float32)
    ld = np.empty_like(prob)
    unique = sorted(set(positions))
    sites = [(t, layer, h) for t in unique for layer, h in zip(layers, heads)]
    p, d = _run_sites(model, st, sites, max_rows, engine)
    per_t = len(layers)
    for k, t in enumerate(positions):
        u = unique.index(t)
        prob[k] = p[u * per_t:(u + 1) * per_t].view(n_layers, n_heads + 1).numpy()
        ld[k] = d[u * per_t:(u + 1) * per_t].view(n_layers, n_heads + 1).numpy()
    return _head_trace(model, prompt, subject, answer, st, positions, prob, ld)


@torch.no_grad()
def trace_heads_loop(
    model: LoadedModel, prompt: str, subject: str, answer: str, *, n_samples: int = 10, noise_scale: float = 3.0,
    embed_std: float | None = None, seed: int = 0, contrast: int | str | None = None,
) -> HeadTrace:
    """The reference for `trace_heads`: one hooked bridge forward of the N noise samples per (position, layer,
    head) and per (position, layer) with all heads, patching hook_z by plain indexing."""
    _check_samples(n_samples)
    fact = prepare_fact(model, prompt, subject, answer)
    bridge, dev = model.bridge, model.device
    n_layers, n_heads = model.spec.n_layers, model.spec.n_heads
    std = noise_scale * (embedding_std(model) if embed_std is None else embed_std)
    s0, s1 = fact.span
    ids = torch.tensor([fact.ids], device=dev)
    clean_logits, cache = bridge.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_z")
                                                or name.endswith("o.hook_in"))
    clean_logits = clean_logits[:, -1]
    noise = subject_noise(n_samples, s1 - s0, model.spec.d_model, std, seed).to(dev)

    def add_noise(act, hook):
        act = act.clone()
        act[:, s0:s1] += noise.to(act.dtype)
        return act

    batch = ids.repeat(n_samples, 1)
    corrupt_logits = bridge.run_with_hooks(batch, fwd_hooks=[("hook_embed", add_noise)])[:, -1]
    r, r2 = fact.answer_token, pick_contrast(corrupt_logits, fact.answer_token, contrast, model)
    positions = (s1 - 1, len(fact.ids) - 1)
    prob = np.empty((len(POSITIONS), n_layers, n_heads + 1), dtype=np.float32)
    ld = np.empty_like(prob)
    for k, t in enumerate(positions):
        for layer in range(n_layers):
            clean = cache[z_hook(layer)][0, t]
            for h in range(n_heads + 1):
                heads = slice(None) if h == n_heads else slice(h, h + 1)

                def restore(z, hook, heads=heads, clean=clean):
                    z = z.clone()
                    z[:, t, heads] = clean[heads]
                    return z
                logits = bridge.run_with_hooks(batch, fwd_hooks=[("hook_embed", add_noise), (z_hook(layer), restore)])
                p, d = score_rows(logits[:, -1], r, r2)
                prob[k, layer, h], ld[k, layer, h] = float(p.mean()), float(d.mean())
    z0 = torch.stack([cache[z_hook(j)][0] for j in range(n_layers)])
    st = _State(fact.ids, fact.span, r, r2, noise, clean_logits, corrupt_logits, z0)
    return _head_trace(model, prompt, subject, answer, st, positions, prob, ld)


# ----------------------------------------------------------------------------- many facts


@dataclass
class HeadDataset:
    results: list[HeadTrace]
    seen: int
    skipped: list[tuple[str, str]]


def trace_heads_dataset(
    model: LoadedModel, facts, n_facts: int | None = None, *, known_only: bool = True, progress: bool = True,
    store: str | Path | None = None, settings: dict | None = None, **kwargs,
) -> HeadDataset:
    """`trace_heads` over facts chosen as `tracing.trace_dataset` chooses them (same facts for the same input);
    with `store`, each fact is written there as `<id>.npz` when done and read back on a later call."""
    if n_facts is not None and n_facts < 1:
        raise TraceError(f"n_facts must be >= 1, got {n_facts}")
    _check_samples(kwargs.get("n_samples", 10))
    _engine(model, kwargs.get("engine", "auto"))
    kwargs.setdefault("embed_std", embedding_std(model))
    folder = open_store(store, {**(settings or {}), "kinds": ["head"],
                                **{k: v for k, v in kwargs.items() if k not in ("embed_std", "engine", "max_rows")}})
    chosen, seen, skipped = select_facts(model, facts, n_facts, known_only, folder, progress)
    if folder is not None:
        write_selection(folder, [f.id for f in chosen], seen, skipped, n_facts, known_only)
    results = []
    for fact in tqdm(chosen, disable=not progress, desc="tracing heads", unit="fact"):
        done = folder / f"{fact.id}.npz" if folder else None
        if done is not None and done.exists():
            try:
                results.append(HeadTrace.load(done))
                continue
            except Exception as err:  # a damaged file is traced again, not trusted
                print(f"re-tracing fact {fact.id}: unreadable {done.name} ({err})")
        results.append(trace_heads(model, fact.prompt, fact.subject, fact.attribute, **kwargs))
        if done is not None:
            results[-1].save(done)
    return HeadDataset(results, seen, skipped)


# ----------------------------------------------------------------------------- summaries


def _mean_se(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        se = np.nanstd(x, 0, ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.full(x.shape[1:], np.nan)
        return np.nanmean(x, 0), se


def aggregate_heads(results: list[HeadTrace], min_ld_gap: float = MIN_LD_GAP) -> dict[str, np.ndarray | int]:
    """Mean and standard error over facts: normalized LD (facts whose corruption lowers LD by >= min_ld_gap,
    as balance.aggregate) and probability effect (every fact), per [position, layer, head] and, for all heads
    together, per [position, layer]."""
    if not results:
        raise TraceError("no traced facts to aggregate")
    kept = ld_facts(results, min_ld_gap)
    out: dict = {"n_facts_ld": len(kept), "n_facts": len(results)}
    for name, values in (("ld", [r.ld_effect for r in kept]), ("attn_ld", [r.attn_ld_effect for r in kept]),
                         ("prob", [r.prob_effect for r in results]),
                         ("attn_prob", [r.attn_prob - r.p_corrupt for r in results])):
        out[f"{name}_mean"], out[f"{name}_se"] = _mean_se(np.stack(values))
    return out


def concentration(grid: Float[np.ndarray, "layer head"], ks=TOP_K) -> dict[str, float]:
    """Fraction of the total positive head effect (sum of max(0, LD) over the grid) carried by the top-k heads."""
    flat = np.nan_to_num(grid.ravel(), nan=0.0).clip(min=0)
    total = flat.sum()
    top = np.sort(flat)[::-1]
    return {f"top{k}": float(top[:k].sum() / total) if total > 0 else float("nan") for k in ks}


def top_heads(grid: Float[np.ndarray, "layer head"], k: int = 10) -> list[dict]:
    order = np.argsort(np.nan_to_num(grid.ravel(), nan=-np.inf))[::-1][:k]
    n_heads = grid.shape[1]
    return [{"layer": int(i // n_heads), "head": int(i % n_heads), "ld": round(float(grid.ravel()[i]), 4)}
            for i in order]


def summarize_heads(results: list[HeadTrace], *, min_ld_gap: float = MIN_LD_GAP, attn_window_curve=None,
                    attn_layers=None, window: int = 10) -> dict:
    """Concentration of the head effect at the last subject token and the heads' share of the attention effect.

    - concentration: per fact (LD facts), the share of its positive head effect in its top-1/5/10 heads, mean
      and SE over facts; and the same on the mean grid.
    - share per layer: sum over heads of the mean head LD vs the mean LD of restoring the whole layer's attention.
    - with `attn_window_curve` (mean attn_window normalized LD per layer at the last subject token) and
      `attn_layers` (α's critical attention layers): α's attention sum S = sum over attn_layers of the curve, set
      against the heads' additive estimate of it (sum of the mean head LD over the heads of every layer of each
      window), the single-layer attention restorations' sum over the same windows, and the top-k heads' part.
    """
    agg = aggregate_heads(results, min_ld_gap)
    kept = ld_facts(results, min_ld_gap)
    ls = POSITIONS.index("last subject")
    per_fact = [concentration(r.ld_effect[ls]) for r in kept]
    out: dict = {"n_facts": agg["n_facts"], "n_facts_ld": agg["n_facts_ld"], "positions": list(POSITIONS)}
    out["concentration_per_fact"] = {}
    for key in per_fact[0]:
        mean, se = _mean_se(np.array([c[key] for c in per_fact])[:, None])
        out["concentration_per_fact"][key] = {"mean": round(float(mean[0]), 4), "se": round(float(se[0]), 4)}
    mean = agg["ld_mean"]  # [pos, layer, head]
    out["concentration_mean_grid"] = {p: {k: round(v, 4) for k, v in concentration(mean[i]).items()}
                                      for i, p in enumerate(POSITIONS)}
    out["top_heads"] = {p: top_heads(mean[i]) for i, p in enumerate(POSITIONS)}
    heads_sum = np.nansum(mean, -1)  # [pos, layer]
    out["layer_share"] = {p: {"heads_sum": [round(float(x), 4) for x in heads_sum[i]],
                              "attn": [round(float(x), 4) for x in agg["attn_ld_mean"][i]],
                              "heads_sum_total": round(float(heads_sum[i].sum()), 4),
                              "attn_total": round(float(np.nansum(agg["attn_ld_mean"][i])), 4)}
                          for i, p in enumerate(POSITIONS)}
    if attn_window_curve is not None and attn_layers is not None:
        n_layers = mean.shape[1]
        covered = [j for l in attn_layers for j in window_layers(int(l), window, n_layers)]  # with repeats
        grid = mean[ls]
        s = float(np.nansum(np.asarray(attn_window_curve)[list(attn_layers)]))
        heads_est = float(np.nansum(grid[covered]))
        single = float(np.nansum(agg["attn_ld_mean"][ls][covered]))
        flat = np.nan_to_num(grid, nan=-np.inf).ravel()
        top = {}
        for k in TOP_K:
            chosen = np.zeros(flat.shape, dtype=bool)
            chosen[np.argsort(flat)[::-1][:k]] = True
            chosen = chosen.reshape(grid.shape)
            top[f"top{k}"] = round(float(sum(grid[j][chosen[j]].sum() for j in covered)) / s, 4) if s else None
        out["alpha_attention_sum"] = {
            "attn_layers": [int(l) for l in attn_layers], "window": window, "window_sum": round(s, 4),
            "heads_sum": round(heads_est, 4), "single_layer_attn_sum": round(single, 4),
            "heads_share": round(heads_est / s, 4) if s else None,
            "single_layer_share": round(single / s, 4) if s else None, "top_heads_share": top,
        }
    return out


def head_grid_array(results: list[HeadTrace]) -> dict[str, np.ndarray]:
    """Per-fact arrays for one .npz: [fact, position, layer, head] effects and the baselines."""
    return {
        "ld_effect": np.stack([r.ld_effect for r in results]),
        "prob_effect": np.stack([r.prob_effect for r in results]),
        "attn_ld_effect": np.stack([r.attn_ld_effect for r in results]),
        "attn_prob_effect": np.stack([r.attn_prob - r.p_corrupt for r in results]),
        "scalars": np.array([[r.p_clean, r.p_corrupt, r.ld_clean, r.ld_corrupt] for r in results]),
        "positions": np.array([r.positions for r in results]),
    }


def head_outputs(z: Float[Tensor, "... head d_head"], w_o: Float[Tensor, "d_model hd"]) -> Float[Tensor, "... head d_model"]:
    """Each head's contribution to the attention output (bias excluded): z_h W_O,h^T; their sum + bias = attn_out."""
    w = rearrange(w_o, "d (head d_head) -> head d_head d", head=z.shape[-2])
    return torch.einsum("...hk,hkd->...hd", z, w.to(z))

