"""Causal tracing (ROME, Meng et al. 2022): corrupt the subject, restore one clean activation, measure.

A fact is (prompt, subject, answer). The corrupted run adds Gaussian noise of `noise_scale` x the std of
the token embeddings to the subject tokens' embeddings (N seeded samples). A restoration puts back the
clean value of one site at one token: the block output (`resid`, = `hook_resid_post`), the attention
output (`hook_attn_out`) or the MLP output (`hook_mlp_out`); `attn_window` / `mlp_window` restore that
module at ROME's window of k layers around the layer instead of the layer alone.

For every site we keep P_pt(r) and LD_pt = logit(r) - logit(r'), averaged over noise samples; the
effects are `prob - p_corrupt` and the normalized LD (LD_pt - LD_*) / (LD_clean - LD_*).

Two implementations compute the same numbers:
- `trace_fact_loop`: one hooked TransformerBridge forward per site (the obvious reference);
- `trace_fact`: does less work (see `_Runs`). Restoring a module at (layer l, token t) changes only
  position t of layer l's output, so a site's rows enter the layer stack at l + 1 from the cached
  corrupted run; every site restoring token t shares one pass over positions t.. only (keys/values of
  earlier positions come from the corrupted run), only the last position is unembedded, and tokens
  before the subject (where a restoration is a no-op) get the corrupted baseline.

The answer's first token is traced (a multi-token answer is traced on its first token); r' defaults to
the corrupted run's most probable token other than r, i.e. the wrong answer the noise pushes the model to.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from intattn_tl.core.store import _atomic, read_json, write_json, write_once
from intattn_tl.data.records import nfc
from intattn_tl.errors import IntattnError
from intattn_tl.model.forward import KV, Forward, Patch
from intattn_tl.model.spec import LoadedModel
from intattn_tl.model.tokens import TokenError, answer_ids, prompt_ids, subject_span

KINDS = ("resid", "attn", "mlp", "attn_window", "mlp_window")
HOOKS = {"resid": "hook_resid_post", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}


class TraceError(IntattnError, ValueError):
    """Bad tracing input: the message names the argument or fact."""


@dataclass
class TraceResult:
    """One fact's tracing grid. `prob` / `logit_diff` are [kind, layer, token] over `kinds`."""

    prompt: str
    subject: str
    answer: str
    tokens: list[str]
    subject_span: tuple[int, int]
    answer_token: int  # the first token of the answer (multi-token answers are traced on it)
    contrast_token: int  # r' in LD = logit(r) - logit(r')
    known: bool  # the clean run's greedy next token is the answer token
    kinds: tuple[str, ...]
    window: int
    p_clean: float
    p_corrupt: float
    ld_clean: float
    ld_corrupt: float
    prob: np.ndarray = field(repr=False)
    logit_diff: np.ndarray = field(repr=False)

    @property
    def prob_effect(self) -> np.ndarray:
        """P_pt(r) - P_*(r) per [kind, layer, token]."""
        return self.prob - self.p_corrupt

    @property
    def ld_effect(self) -> np.ndarray:
        """(LD_pt - LD_*) / (LD_clean - LD_*); NaN where the corruption did not lower LD (no signal)."""
        gap = self.ld_clean - self.ld_corrupt
        if gap <= 1e-6:
            return np.full_like(self.logit_diff, np.nan)
        return (self.logit_diff - self.ld_corrupt) / gap

    def kind(self, name: str) -> int:
        return self.kinds.index(name)

    def save(self, path: Path) -> None:
        """One .npz (arrays + JSON metadata), written atomically so a killed run never leaves half a file."""
        meta = {k: v for k, v in self.__dict__.items() if k not in ("prob", "logit_diff")}
        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:
                np.savez(f, prob=self.prob, logit_diff=self.logit_diff, meta=np.array(json.dumps(meta)))
        _atomic(path, write)

    @classmethod
    def load(cls, path: Path) -> "TraceResult":
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            meta.update(subject_span=tuple(meta["subject_span"]), kinds=tuple(meta["kinds"]))
            return cls(**meta, prob=z["prob"], logit_diff=z["logit_diff"])


# ----------------------------------------------------------------------------- inputs


def embedding_std(model: LoadedModel, chunk: int = 16384) -> float:
    """Std of the embedding layer's outputs over the whole vocabulary (Gemma's scaling included)."""
    embed = model.spec.family.embed
    n = embed.weight.shape[0]
    s = ss = 0.0
    with torch.no_grad():
        for ids in torch.arange(n, device=model.device).split(chunk):
            e = embed(ids).double()
            s, ss = s + e.sum().item(), ss + (e * e).sum().item()
    count = n * embed.weight.shape[1]
    return float(np.sqrt(ss / count - (s / count) ** 2))


def subject_noise(
    n_samples: int, n_subject: int, d_model: int, std: float, seed: int
) -> Float[Tensor, "n subj d"]:
    """Seeded Gaussian noise, drawn on the CPU so every device gets the same numbers."""
    if n_samples < 1:
        raise TraceError(f"n_samples must be >= 1, got {n_samples}")
    if not math.isfinite(std) or std <= 0:  # NaN noise would run the whole trace and fail at the end
        raise TraceError(f"noise std must be a finite number > 0 (noise_scale x embedding std), got {std}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n_samples, n_subject, d_model, generator=gen) * std


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """ROME's window: `window` layers centred on `layer` ([l - k//2, l + ceil(k/2))), clipped to the model."""
    if window < 1:
        raise TraceError(f"window must be >= 1, got {window}")
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


MIN_LD_GAP = 1.0  # as locate.balance (main moved it here)


def key_positions(span: tuple[int, int], n_tokens: int) -> list[int]:
    """The last subject token and the last token (one position when the subject ends the prompt)."""
    return sorted({span[1] - 1, n_tokens - 1})


def site_layers(kind: str, layer: int, window: int, n_layers: int) -> range:
    if kind not in KINDS:
        raise TraceError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return window_layers(layer, window, n_layers) if kind.endswith("_window") else range(layer, layer + 1)


@dataclass
class _Fact:
    ids: list[int]
    span: tuple[int, int]
    answer_token: int


def prepare_fact(model: LoadedModel, prompt: str, subject: str, answer: str) -> _Fact:
    tok = model.tokenizer
    prompt, subject, answer = nfc(prompt), nfc(subject), nfc(answer)  # as every record is
    span = subject_span(tok, prompt, subject)  # raises TokenError naming subject and prompt
    ids = prompt_ids(tok, prompt)
    first = answer_ids(tok, prompt, answer)
    if not first:
        raise TokenError(f"answer {answer!r} has no tokens after prompt {prompt!r}")
    return _Fact(ids, span, first[0])


# ----------------------------------------------------------------------------- the layer stack, run directly


class Stack:
    """Tracing's use of the partial-forward engine (model/forward.py): whole runs from the embeddings, with
    per-layer records, and P(r) / LD of last positions."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self.forward = Forward(model)
        self.layers = self.forward.layers
        self.embed = self.forward.embed

    def scores(self, h: Float[Tensor, "r d"], r: int, r2: int, chunk: int = 256) -> tuple[Tensor, Tensor]:
        """P(r) and logit(r) - logit(r') per row, unembedding `chunk` rows at a time (vocabularies are large)."""
        parts = [score_rows(self.forward.logits(c), r, r2) for c in h.split(chunk)]
        return torch.cat([p for p, _ in parts]), torch.cat([d for _, d in parts])

    def run(self, x: Float[Tensor, "r p d"], start_layer: int, start_pos: int,
            prefix: dict[int, tuple[Tensor, Tensor]] | None, patch: Patch, record: bool = False):
        """Layers start_layer.. on positions start_pos.. (x holds those positions); last-position logits.

        With record=True (full runs only) also returns per-layer inputs, attn/mlp outputs and keys/values.
        """
        fw = self.forward
        cache = KV(prefix)
        out = fw.run(x, range(start_layer, fw.n_layers), fw.window(x, start_pos, start_pos + x.shape[1]), cache,
                     patch, record)
        if not record:
            return fw.logits(out[:, -1])
        x, rec = out
        return fw.logits(x[:, -1]), rec.resid, rec.attn, rec.mlp, cache.recorded


# ----------------------------------------------------------------------------- scores


def _scores(logits: Float[Tensor, "s n vocab"], r: int, r2: int) -> tuple[Tensor, Tensor]:
    """Mean over noise samples of P(r) and of logit(r) - logit(r')."""
    logits = logits.float()
    prob = torch.softmax(logits, -1)[..., r].mean(-1)
    ld = (logits[..., r] - logits[..., r2]).mean(-1)
    return prob, ld


def pick_contrast(corrupt_logits: Float[Tensor, "n vocab"], r: int, contrast: int | str | None, model) -> int:
    """r': an explicit token/string (its first token), else the corrupted run's most probable token != r."""
    if contrast is None:
        probs = torch.softmax(corrupt_logits.float(), -1).mean(0)
        probs[r] = -1
        return int(probs.argmax())
    if isinstance(contrast, str):
        ids = model.tokenizer(" " + contrast.strip(), add_special_tokens=False)["input_ids"]
        if not ids:
            raise TraceError(f"contrast {contrast!r} has no tokens")
        contrast = ids[0]
    if contrast == r:
        raise TraceError(f"contrast token {contrast} is the answer token itself")
    return int(contrast)


def _check(n_samples: int, window: int, kinds) -> tuple[str, ...]:
    if n_samples < 1:
        raise TraceError(f"n_samples must be >= 1, got {n_samples}")
    if window < 1:
        raise TraceError(f"window must be >= 1, got {window}")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise TraceError(f"kinds must be a non-empty subset of {KINDS}, got {tuple(kinds)}")
    return tuple(kinds)


def _result(model, prompt, subject, answer, fact: _Fact, r2, kinds, window, clean_logits, corrupt_logits, prob, ld):
    p_clean, ld_clean = _scores(clean_logits[None], fact.answer_token, r2)
    p_corrupt, ld_corrupt = _scores(corrupt_logits[None], fact.answer_token, r2)
    tok = model.tokenizer
    return TraceResult(
        prompt=prompt, subject=subject, answer=answer,
        tokens=[tok.decode([i]) for i in fact.ids], subject_span=fact.span,
        answer_token=fact.answer_token, contrast_token=r2,
        known=int(clean_logits[0].argmax()) == fact.answer_token, kinds=kinds, window=window,
        p_clean=float(p_clean), p_corrupt=float(p_corrupt), ld_clean=float(ld_clean), ld_corrupt=float(ld_corrupt),
        prob=prob.cpu().numpy(), logit_diff=ld.cpu().numpy(),
    )


# ----------------------------------------------------------------------------- fast, exact


@torch.no_grad()
def trace_fact(
    model: LoadedModel, prompt: str, subject: str, answer: str, *, n_samples: int = 10, noise_scale: float = 3.0,
    embed_std: float | None = None, window: int = 10, kinds=KINDS, seed: int = 0, contrast: int | str | None = None,
    max_rows: int = 32768, key_tokens: bool = False,
) -> TraceResult:
    """The full restoration grid for one fact (see module docstring). `answer`'s first token is traced.

    `key_tokens` restores only at the last subject token and the last token (where α and the critical layers
    are read, and the attribute-extraction stage); the other subject and later tokens are NaN. Same numbers
    at those two tokens, a fraction of the work.

    `embed_std` (the embedding std; noise std = noise_scale x it) is computed when not given; pass it when tracing many facts.
    `max_rows` bounds one pass (rows x positions); sites beyond it go to further passes. Numbers do not depend on it.
    A family that runs no blocks itself (families/generic.py) is traced by `trace_fact_loop` instead.
    """
    if not model.spec.family.runs_blocks:  # the generic adapter runs no blocks itself: the hooked loop
        return trace_fact_loop(model, prompt, subject, answer, n_samples=n_samples, noise_scale=noise_scale,
                               embed_std=embed_std, window=window, kinds=kinds, seed=seed, contrast=contrast,
                               key_tokens=key_tokens)
    kinds = _check(n_samples, window, kinds)
    fact = prepare_fact(model, prompt, subject, answer)
    stack, dev = Stack(model), model.device
    n_layers, n_tok, r = len(stack.layers), len(fact.ids), fact.answer_token
    std = noise_scale * (embedding_std(model) if embed_std is None else embed_std)
    s0, s1 = fact.span

    emb = stack.embed(torch.tensor([fact.ids], device=dev))
    clean_logits, clean_resid, clean_attn, clean_mlp, _ = stack.run(emb, 0, 0, None, Patch(), record=True)
    noise = subject_noise(n_samples, s1 - s0, emb.shape[-1], std, seed).to(dev, emb.dtype)
    noisy = emb.repeat(n_samples, 1, 1)
    noisy[:, s0:s1] += noise
    corrupt_logits, corrupt_resid, corrupt_attn, _, kv = stack.run(noisy, 0, 0, None, Patch(), record=True)
    r2 = pick_contrast(corrupt_logits, r, contrast, model)
    p_star, ld_star = _scores(corrupt_logits[None], r, r2)
    runs = _Runs(stack, clean_resid[0], clean_attn[0], clean_mlp[0], corrupt_resid, corrupt_attn, kv, r, r2)

    prob = torch.full((len(kinds), n_layers, n_tok), float("nan"), device=dev)
    ld = torch.full_like(prob, float("nan"))
    prob[:, :, :s0], ld[:, :, :s0] = p_star, ld_star  # restoring a token the noise never touched is a no-op
    sites = sorted(((kinds[k], layer, k) for k in range(len(kinds)) for layer in range(n_layers)),
                   key=lambda site: site_layers(site[0], site[1], window, n_layers).start)
    for t in key_positions(fact.span, n_tok) if key_tokens else range(s0, n_tok):
        per_pass = max(1, max_rows // (n_samples * (n_tok - t)))
        for i in range(0, len(sites), per_pass):
            group = sites[i:i + per_pass]
            p, d = runs.restore(t, [(kind, site_layers(kind, layer, window, n_layers)) for kind, layer, _ in group])
            for (_, layer, k), pk, dk in zip(group, p.view(len(group), n_samples).mean(1), d.view(len(group), n_samples).mean(1)):
                prob[k, layer, t], ld[k, layer, t] = pk, dk
    return _result(model, prompt, subject, answer, fact, r2, kinds, window, clean_logits, corrupt_logits, prob, ld)


class _Runs:
    """Restoration passes for one fact, built from its clean and corrupted runs.

    Restoring a module at (layer l, token t) changes only position t of layer l's output: positions > t
    attend over layer l's (corrupted, unchanged) inputs, and positions < t never see t. So a site's rows
    enter the stack at layer l + 1 with the corrupted output of layer l, position t rebuilt; rows of
    every site restoring token t share one pass that computes positions t.. only, the batch growing as
    sites enter. Window kinds also patch position t at their later layers.
    """

    def __init__(self, stack: Stack, clean_resid, clean_attn, clean_mlp, corrupt_resid, corrupt_attn, kv, r: int, r2: int):
        self.stack, self.kv, self.r, self.r2 = stack, kv, r, r2
        self.clean = {"resid": clean_resid[1:], "attn": clean_attn, "mlp": clean_mlp}  # [layer, tok, d]: outputs
        self.corrupt_in, self.corrupt_attn = corrupt_resid, corrupt_attn  # [n, layer+1, tok, d], [n, layer, tok, d]
        self.n = corrupt_resid.shape[0]

    def entry(self, kind: str, layer: int, t: int) -> Float[Tensor, "n p d"]:
        """Layer `layer`'s output at positions t.. with the restoration of token t applied there."""
        module = kind.split("_")[0]
        x = self.corrupt_in[:, layer + 1, t:].clone()
        if module == "resid":
            x[:, 0] = self.clean["resid"][layer, t]
            return x
        mid = self.corrupt_in[:, layer, t] + (self.clean["attn"][layer, t] if module == "attn" else self.corrupt_attn[:, layer, t])
        m = self.clean["mlp"][layer, t].expand_as(mid) if module == "mlp" else self.stack.forward.mlp_out(layer, mid[:, None])[:, 0]
        x[:, 0] = mid + m
        return x

    def restore(self, t: int, sites: list[tuple[str, range]]) -> tuple[Float[Tensor, "rows"], Float[Tensor, "rows"]]:
        """P(r) and logit(r) - logit(r') per row (site-major, then noise sample), for sites restoring token t."""
        fw, n, n_layers = self.stack.forward, self.n, self.stack.forward.n_layers
        entering: dict[int, list[int]] = {}
        for i, (_, layers) in enumerate(sites):
            entering.setdefault(layers.start + 1, []).append(i)
        total = self.corrupt_in.shape[2]
        x0 = self.corrupt_in[:1, 0, t:]
        window = fw.window(x0, t, total)
        cache = KV({j: (k[:, :, :t], v[:, :, :t]) for j, (k, v) in self.kv.items()})  # corrupted keys/values before t
        order: list[int] = []
        x = x0[:0]
        for j in range(n_layers + 1):
            new = entering.get(j, [])
            if new:
                x = torch.cat([x, *(self.entry(sites[i][0], sites[i][1].start, t) for i in new)])
                order += new
            if j == n_layers or not order:
                continue
            samples = torch.arange(n, device=x.device).repeat(len(order))
            cache.rows = samples  # each row's own noise sample
            patch = Patch()
            for module in ("attn", "mlp"):
                hit = torch.tensor([sites[i][0] == module + "_window" and j in sites[i][1] for i in order], device=x.device)
                if hit.any():
                    rows = hit.repeat_interleave(n)
                    value = self.clean[module][j, t].expand(len(rows), -1)
                    getattr(patch, module)[j] = (rows, torch.zeros_like(samples), value)
            x = fw.block(j, x, window, cache, patch)[0]
        p, d = self.stack.scores(x[:, -1], self.r, self.r2)
        rank = torch.empty(len(order), dtype=torch.long)
        rank[torch.tensor(order)] = torch.arange(len(order))
        rows = (rank[:, None] * n + torch.arange(n)).flatten().to(p.device)
        return p[rows], d[rows]


def score_rows(logits: Float[Tensor, "r vocab"], r: int, r2: int) -> tuple[Tensor, Tensor]:
    logits = logits.float()
    return torch.softmax(logits, -1)[:, r], logits[:, r] - logits[:, r2]


# ----------------------------------------------------------------------------- reference: one forward per site


@torch.no_grad()
def trace_fact_loop(
    model: LoadedModel, prompt: str, subject: str, answer: str, *, n_samples: int = 10, noise_scale: float = 3.0,
    embed_std: float | None = None, window: int = 10, kinds=KINDS, seed: int = 0, contrast: int | str | None = None,
    sites: list[tuple[str, int, int]] | None = None, key_tokens: bool = False,
) -> TraceResult:
    """Same numbers as `trace_fact`, by one hooked bridge forward per (kind, layer, token).

    `sites` limits the loop to those (kind, layer, token) triples (the rest is NaN), for timing samples;
    `key_tokens` to the last subject token and the last token, as in `trace_fact`.
    """
    kinds = _check(n_samples, window, kinds)
    fact = prepare_fact(model, prompt, subject, answer)
    bridge, dev = model.bridge, model.device
    n_layers, n_tok, r = model.spec.n_layers, len(fact.ids), fact.answer_token
    std = noise_scale * (embedding_std(model) if embed_std is None else embed_std)
    s0, s1 = fact.span
    ids = torch.tensor([fact.ids], device=dev)

    names = [f"blocks.{j}.{h}" for j in range(n_layers) for h in HOOKS.values()]
    clean_logits, cache = bridge.run_with_cache(ids, names_filter=lambda name: name in names)
    clean_logits = clean_logits[:, -1]
    noise = subject_noise(n_samples, s1 - s0, model.spec.d_model, std, seed).to(dev)

    def add_noise(act, hook):
        act = act.clone()
        act[:, s0:s1] += noise.to(act.dtype)
        return act

    def restore(value, t):
        def hook(act, hook):
            act = act.clone()
            act[:, t] = value
            return act
        return hook

    batch = ids.repeat(n_samples, 1)
    corrupt_logits = bridge.run_with_hooks(batch, fwd_hooks=[("hook_embed", add_noise)])[:, -1]
    r2 = pick_contrast(corrupt_logits, r, contrast, model)
    prob = torch.full((len(kinds), n_layers, n_tok), float("nan"), device=dev)
    ld = torch.full_like(prob, float("nan"))
    wanted = None if sites is None else set(sites)
    if key_tokens:
        wanted = {(kind, layer, t) for kind in kinds for layer in range(n_layers) for t in key_positions(fact.span, n_tok)
                  if wanted is None or (kind, layer, t) in wanted}
    for k, kind in enumerate(kinds):
        hook_name = HOOKS[kind.split("_")[0]]
        for layer in range(n_layers):
            for t in range(n_tok):
                if wanted is not None and (kind, layer, t) not in wanted:
                    continue
                hooks = [("hook_embed", add_noise)] + [
                    (f"blocks.{j}.{hook_name}", restore(cache[f"blocks.{j}.{hook_name}"][0, t], t))
                    for j in site_layers(kind, layer, window, n_layers)
                ]
                logits = bridge.run_with_hooks(batch, fwd_hooks=hooks)[:, -1]
                prob[k, layer, t], ld[k, layer, t] = (x[0] for x in _scores(logits[None], r, r2))
    return _result(model, prompt, subject, answer, fact, r2, kinds, window, clean_logits, corrupt_logits, prob, ld)


# ----------------------------------------------------------------------------- many facts


@torch.no_grad()
def greedy_token(model: LoadedModel, prompt: str) -> int:
    ids = torch.tensor([prompt_ids(model.tokenizer, prompt)], device=model.device)
    return int(model.bridge(ids)[0, -1].argmax())


@dataclass
class DatasetTrace:
    """Traced facts plus what was left out and why (nothing is dropped silently)."""

    results: list[TraceResult]
    seen: int
    skipped: list[tuple[str, str]]  # (fact id, reason)


def trace_dataset(
    model: LoadedModel, facts, n_facts: int | None = None, *, known_only: bool = True, progress: bool = True,
    store: str | Path | None = None, settings: dict | None = None, shard: tuple[int, int] = (0, 1), **kwargs,
) -> DatasetTrace:
    """Trace `facts` (KnownFact-like: id, prompt, subject, attribute) until `n_facts` are traced.

    With known_only, a fact is traced only if the model's greedy next token is the attribute's first token.
    With `store`, each traced fact is written there as `<id>.npz` the moment it is done and read back on a
    later call, so a killed run resumes; `settings` (plus kwargs) are kept in `settings.json` there and a
    store made with other settings is refused, and the chosen facts in `selection.json` (see `read_store`).
    `shard=(i, n)` traces only the i-th of every n chosen facts (i = 0..n-1): n shards, on any machines
    sharing the store, together trace exactly the facts of the unsharded run. kwargs go to `trace_fact`.
    """

    if n_facts is not None and n_facts < 1:
        raise TraceError(f"n_facts must be >= 1, got {n_facts}")
    i, n = shard
    if not 0 <= i < n:
        raise TraceError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
    kwargs.setdefault("embed_std", embedding_std(model))
    folder = open_store(store, {**(settings or {}), **{k: v for k, v in kwargs.items() if k != "embed_std"}})
    chosen, seen, skipped = select_facts(model, facts, n_facts, known_only, folder, progress)
    if folder is not None:
        write_selection(folder, [f.id for f in chosen], seen, skipped, n_facts, known_only)
    results = []
    for fact in tqdm(chosen[i::n], disable=not progress, desc="tracing" + (f" shard {i}/{n}" if n > 1 else ""),
                     unit="fact"):
        done = folder / f"{fact.id}.npz" if folder else None
        if done is not None and done.exists():
            try:
                results.append(TraceResult.load(done))
                continue
            except Exception as err:  # a damaged file is traced again, not trusted
                print(f"re-tracing fact {fact.id}: unreadable {done.name} ({err})")
        results.append(trace_fact(model, fact.prompt, fact.subject, fact.attribute, **kwargs))
        if done is not None:
            results[-1].save(done)
    return DatasetTrace(results, seen, skipped)


def select_facts(model: LoadedModel, facts, n_facts: int | None, known_only: bool, folder: Path | None = None,
                 progress: bool = True) -> tuple[list, int, list[tuple[str, str]]]:
    """The facts to trace, in order: those whose answer and subject tokenize (and, with known_only, that the
    model knows), until `n_facts`. A fact already in `folder` was chosen by this rule before: no forward.
    Returns (chosen facts, facts read, [(id, why skipped)])."""

    chosen, skipped, seen = [], [], 0
    bar = tqdm(total=n_facts or len(facts), disable=not progress, desc="choosing facts", unit="fact", leave=False)
    for fact in facts:
        if n_facts is not None and len(chosen) >= n_facts:
            break
        seen += 1
        if folder is None or not (folder / f"{fact.id}.npz").exists():
            try:
                r = answer_ids(model.tokenizer, fact.prompt, fact.attribute)[0]
                subject_span(model.tokenizer, fact.prompt, fact.subject)
            except TokenError as err:
                skipped.append((fact.id, f"token error: {err}"))
                continue
            if known_only and (g := greedy_token(model, fact.prompt)) != r:
                skipped.append((fact.id, f"not known: greedy {model.tokenizer.decode([g])!r} != {fact.attribute!r}"))
                continue
        chosen.append(fact)
        bar.update(1)
    bar.close()
    return chosen, seen, skipped


def write_selection(folder: Path, ids: list[str], seen: int, skipped: list, n_facts: int | None,
                    known_only: bool) -> None:
    """The store's `selection.json`: the chosen fact ids in order, how many facts were read, why others were not."""
    write_json(folder / "selection.json", {"ids": ids, "seen": seen, "skipped": skipped, "n_facts": n_facts},
               {"n_facts": n_facts, "known_only": known_only})


def read_store(store: str | Path) -> tuple[DatasetTrace, list[str], dict]:
    """What the shards wrote into `store`: (the traced facts of the selection, in order; the ids of those
    not there (yet); the settings). With nothing missing, the DatasetTrace equals the unsharded run's."""
    folder = Path(store)
    if not (folder / "selection.json").exists() or not (folder / "settings.json").exists():
        raise TraceError(f"{folder} holds no traced facts (no selection.json / settings.json): run `intattn trace` first")
    sel = read_json(folder / "selection.json", check_key=False)
    results, missing = [], []
    for fid in sel["ids"]:
        try:
            results.append(TraceResult.load(folder / f"{fid}.npz"))
        except Exception:  # not written yet, or damaged: the shard that owns it traces it again
            missing.append(fid)
    skipped = [tuple(x) for x in sel["skipped"]]
    return DatasetTrace(results, sel["seen"], skipped), missing, json.loads((folder / "settings.json").read_text())


def open_store(store: str | Path | None, settings: dict) -> Path | None:
    if store is None:
        return None
    folder = Path(store)
    folder.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps(settings, default=str))
    path = folder / "settings.json"
    if not write_once(path, json.dumps(settings, indent=1)):  # shards starting together: one writes, all compare
        old = json.loads(path.read_text())
        if old != settings:
            diff = {k: (old.get(k), settings.get(k)) for k in set(old) | set(settings) if old.get(k) != settings.get(k)}
            raise TraceError(f"{folder} holds facts traced with other settings {diff} (stored, now); use another folder")
    return folder
