"""Edit evaluation as EasyEdit defines it for KnowEdit, batched over many records.

```python
ref = locality_reference(model, records, cfg)          # pre-edit argmax tokens on locality prompts, once
rows = evaluate(model, records, cfg, locality_ref=ref)  # one dict per record: id + every metric (NaN where n/a)
table = summarize(rows)                                 # metric -> mean over records, x100 as in the paper
print(format_table([{"model": "smollm2-135m", **table}]))
```

Definitions (EasyEdit `easyeditor/evaluate/evaluate_utils.py`: `test_prediction_acc`,
`compute_locality_quality`, `test_generation_quality`, `n_gram_entropy`):
- Teacher-forced token accuracy of a (prompt, answer) pair: feed prompt + " " + answer, take the argmax at
  every position that predicts an answer token, score the fraction equal to the answer token.
- Edit Succ. = that accuracy for (prompt, target_new). Generalization = the same on each rephrase prompt.
  Portability = the same on each portability probe, against its first answer.
- Locality = for each locality probe (teacher-forced with its first answer), the fraction of answer
  positions where the model's argmax equals the *unedited* model's argmax (`locality_reference`).
- Fluency = weighted n-gram entropy of text sampled from the edit prompt: mean(2/3·H2, 4/3·H3), H_n the
  entropy (bits) of the n-gram frequency distribution; reported x100 (so ~500-600 for fluent text).
- Exact match (ours, stricter): greedy decoding from the prompt begins with the answer's tokens. Greedy
  decoding emits token t_i iff the argmax after prompt + t_<i is t_i, which is exactly what teacher
  forcing computes, so exact match = "every answer token is the argmax" and costs no generation.

Aliases: EasyEdit's KnowEdit runner keeps `ground_truth[0][0]` for every probe, the first alias of the
first answer; `data.answers` flattens alias lists in order, so that is `probe.answers[0]` here. Probes
whose first answer is empty are skipped, as EasyEdit's newer KnowEdit runner does (`if an.strip() == ""`).

Aggregation, as EasyEdit's KnowEdit runner (which made the paper's tables): a record's score per probe kind
is the mean over its probes of that kind (EasyEdit keeps one list per kind and averages it); a record's
Portability / Locality is the mean over its kinds; the headline is the mean of that over the records that
have any such probe. The per-kind means over records stay as extra columns (`portability.<kind>`).
`summarize(rows, by="kind")` is the other order (mean over records per kind, then over kinds), which
weighs a kind that few records have as much as one that all have; it is not the paper's scale.
Metrics that do not apply are NaN.

Deviations from EasyEdit, on purpose:
1. Word tokenization for fluency is a regex approximation of `nltk.word_tokenize` (words, punctuation,
   "n't" and clitics split off); nltk and its punkt data are not dependencies.
2. Batches are right-padded and unmasked: attention is causal, so pads after a sequence never reach its
   positions. EasyEdit left-pads with a mask; the results agree up to float noise.
3. Answer tokens come from `tokens.answer_ids` (tokens of prompt + " " + answer after the prompt's own).
   EasyEdit slices at len(tok(prompt)), which is the same whenever the prompt's tokens are a prefix.
4. Fluency samples top-k=5 like EasyEdit's `generate_fast` up to `fluency_max_len` tokens *including* the
   prompt (EasyEdit: 100) and scores prompt + continuation, but each prompt's sample is seeded by
   (seed, prompt) (reproducible, independent of batching) and drawn by our own cached decoding loop
   (`generate`; HF `generate` through the bridge needs `kv_cache_fix` and costs ~1.5x more per token).
5. If `locality_ref` is omitted, the model is its own reference (locality = 100, as EasyEdit's pre-edit).
6. Teacher-forced argmaxes apply the unembedding only at answer positions (`_argmax_at`): the same
   logits up to float rounding of a smaller matmul.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformers import DynamicCache

from intattn_tl.data.records import EditRecord, Probe
from intattn_tl.model.spec import LoadedModel, cache_kwarg
from intattn_tl.model.tokens import TokenError, answer_ids, prompt_ids


@dataclass
class EvalConfig:
    batch_size: int = 32  # prompts per forward pass
    fluency: bool = True  # sample text and score n-gram entropy (the slow part)
    fluency_max_len: int = 100  # total tokens, prompt included (EasyEdit's max_out_len)
    fluency_top_k: int = 5
    fluency_batch_size: int = 64  # prompts per generation batch (grouped by length)
    exact_match: bool = True
    seed: int = 0
    progress: bool = True  # tqdm bars
    # Top-k samples seeded per (seed, prompt), independent of batching. Cells scored before this (the
    # committed results/: one generator per batch) sampled other texts; naming the scheme keeps the two
    # from being mixed in one table (repro.results.SCORING).
    fluency_sampling: str = "per-prompt"


@dataclass(frozen=True)
class Query:
    """One teacher-forced (prompt, answer) pair and where its score goes."""

    record: int  # index into the records list
    metric: str  # "edit" | "generalization" | "portability" | "locality"
    kind: str  # probe kind ("" for edit / generalization)
    prompt: str
    answer: str


@dataclass
class LocalityReference:
    """The unedited model's argmax tokens on every locality probe: record id -> kind -> one list per probe."""

    model_name: str
    tokens: dict[str, dict[str, list[list[int]]]] = field(default_factory=dict)


# ----------------------------------------------------------------------------- teacher forcing


def scored(probes: tuple[Probe, ...]) -> list[Probe]:
    """The probes that have an answer to score (a few KnowEdit probes have an empty ground truth)."""
    return [p for p in probes if p.answers and p.answers[0].strip()]


def queries(records: list[EditRecord], metrics: tuple[str, ...]) -> list[Query]:
    out = []
    for i, r in enumerate(records):
        if "edit" in metrics:
            out.append(Query(i, "edit", "", r.prompt, r.target_new))
        if "generalization" in metrics:
            out += [Query(i, "generalization", "", p, r.target_new) for p in r.rephrase]
        if "portability" in metrics:
            out += [Query(i, "portability", k, p.prompt, p.answers[0]) for k, ps in r.portability.items() for p in scored(ps)]
        if "locality" in metrics:
            out += [Query(i, "locality", k, p.prompt, p.answers[0]) for k, ps in r.locality.items() for p in scored(ps)]
    return out


def _right_pad(seqs: list[list[int]], pad_id: int) -> Int[Tensor, "b t"]:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs])


def _argmax_at(model: LoadedModel, ids: Int[Tensor, "b t"], rows: Int[Tensor, "n"],
               cols: Int[Tensor, "n"]) -> Int[Tensor, "n"]:
    """Argmax token at (row, col) pairs: the backbone runs on every position, the unembedding only on the
    n positions asked for (about a fifth of SmolLM2's FLOPs, and no [b, t, vocab] logits tensor)."""
    # the backbone (`model` in Llama-style models, `transformer` in GPT-2, ...) ends on its final norm's device
    hidden = model.hf_model.base_model(input_ids=ids).last_hidden_state
    return model.hf_model.get_output_embeddings()(hidden[rows.to(hidden.device), cols.to(hidden.device)]).argmax(-1)


@torch.no_grad()
def answer_argmax(model: LoadedModel, pairs: list[tuple[list[int], list[int]]], batch_size: int = 32,
                  desc: str | None = None) -> list[list[int]]:
    """For each (prompt ids, answer ids): the argmax token at each position that predicts an answer token."""
    pad = model.tokenizer.pad_token_id
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))  # less padding
    out: list[list[int]] = [[] for _ in pairs]
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc=desc, disable=desc is None, leave=False):
        idx = order[s: s + batch_size]
        ids = _right_pad([pairs[i][0] + pairs[i][1] for i in idx], pad).to(model.device)
        n_prompt = torch.tensor([len(pairs[i][0]) for i in idx])
        n_ans = torch.tensor([len(pairs[i][1]) for i in idx])
        rows = torch.arange(len(idx)).repeat_interleave(n_ans)
        # logits at position p predict token p + 1: answer token j of a row is predicted at n_prompt - 1 + j
        first = torch.cumsum(n_ans, 0) - n_ans
        cols = n_prompt[rows] - 1 + torch.arange(len(rows)) - first[rows]
        pred = _argmax_at(model, ids, rows.to(model.device), cols.to(model.device)).cpu()
        for i, p in zip(idx, pred.split(n_ans.tolist())):
            out[i] = p.tolist()
    return out


def tokenize(model: LoadedModel, qs: list[Query], records: list[EditRecord]) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for q in qs:
        try:
            pairs.append((prompt_ids(model.tokenizer, q.prompt), answer_ids(model.tokenizer, q.prompt, q.answer)))
        except TokenError as err:
            raise TokenError(f"record {records[q.record].id} ({q.metric} {q.kind}): {err}") from err
    return pairs


def token_accuracy(pred: list[int], target: list[int]) -> float:
    """EasyEdit's per-prompt score: mean(pred == target) over the answer tokens."""
    if len(pred) != len(target) or not target:
        raise ValueError(f"prediction has {len(pred)} tokens, answer {len(target)}")
    return sum(p == t for p, t in zip(pred, target)) / len(target)


# ----------------------------------------------------------------------------- fluency


_WORD = re.compile(r"\w+(?=n't\b)|n't\b|'\w+|\w+(?:[-.]\w+)*|[^\w\s]")


def words(text: str) -> list[str]:
    """Approximates `nltk.word_tokenize`: words (with inner - and .), "n't", clitics ('s), single punctuation."""
    return _WORD.findall(text)


def ngram_entropy(tokens: list[str], n: int) -> float:
    """Entropy in bits of the frequency distribution of the n-grams of `tokens` (0 if there are none)."""
    counts = Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def fluency(text: str, ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """EasyEdit's `compute_n_gram_entropy`: the arithmetic mean of weight_n * H_n (not yet x100)."""
    toks = words(text)
    return sum(w * ngram_entropy(toks, n) for n, w in zip(ns, weights)) / len(ns)


@contextmanager
def kv_cache_fix(model: LoadedModel):
    """Make HF `generate` use its KV cache through the bridge.

    transformers 5 hands the attention modules the cache as `cache=`, TransformerLens 4.3's attention
    bridges read only `past_key_values=`, so cached decoding silently attends to the new token alone. We
    pass the cache under the old name too, for the duration of one `generate` call.
    """
    def pre_hook(module, args, kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
        return args, kwargs

    handles = [block.attn.register_forward_pre_hook(pre_hook, with_kwargs=True) for block in model.bridge.blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def row_uniforms(prompts: list[str], n: int, seed: int) -> Float[Tensor, "b n"]:
    """n uniform draws per prompt from a generator seeded by (seed, prompt): a prompt's sample does not
    depend on which other prompts share its batch, their order, or the batch size."""
    def row(prompt: str) -> Tensor:
        key = int.from_bytes(hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()[:8], "little")
        return torch.rand(n, generator=torch.Generator().manual_seed(key), dtype=torch.float64)
    return torch.stack([row(p) for p in prompts]) if prompts else torch.zeros(0, n, dtype=torch.float64)


def pick_next(logits: Float[Tensor, "b vocab"], top_k: int | None, u: Float[Tensor, "b"] | None) -> Int[Tensor, "b"]:
    """Greedy (top_k None) or top-k sampling by inverse CDF of u: the k largest logits, softmax over them
    (what HF's TopKLogitsWarper + multinomial sample from), token = first whose cumulative prob exceeds u."""
    if top_k is None:
        return logits.argmax(-1)
    vals, idx = logits.double().topk(top_k, dim=-1)
    cdf = vals.softmax(-1).cumsum(-1)
    choice = (cdf < u[:, None].to(cdf)).sum(-1).clamp(max=top_k - 1)
    return idx.gather(1, choice[:, None])[:, 0]


@torch.no_grad()
def generate(model: LoadedModel, prompts: list[list[int]], n_new: int, top_k: int | None = None,
             uniforms: Float[Tensor, "b n"] | None = None) -> Int[Tensor, "b n_new"]:
    """Continue each prompt by n_new tokens in one batch with a KV cache: left padding with a mask and
    explicit positions (each row's real tokens at 0..len-1), greedy or top-k sampling (`uniforms[:, i]`
    drives step i)."""
    dev, pad = model.device, model.tokenizer.pad_token_id or 0
    width = max(len(x) for x in prompts)
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in prompts], device=dev)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompts], device=dev)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.hf_model.config)
    kw = {cache_kwarg(model.hf_model): cache}
    out = []
    with kv_cache_fix(model):
        for i in range(n_new):
            logits = model.hf_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                    logits_to_keep=1, **kw).logits[:, -1]
            nxt = pick_next(logits, top_k, None if uniforms is None else uniforms[:, i])
            out.append(nxt)
            ids, pos = nxt[:, None], pos[:, -1:] + 1
            mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], 1)
    return torch.stack(out, 1) if out else torch.zeros(len(prompts), 0, dtype=torch.long, device=dev)


def sample_texts(model: LoadedModel, prompts: list[str], max_len: int = 100, top_k: int = 5, seed: int = 0,
                 batch_size: int = 64, do_sample: bool = True, progress: bool = False) -> list[str]:
    """Prompt + continuation, `max_len` tokens in all per prompt (EasyEdit's `generate_fast`): top-k
    samples seeded per prompt (`row_uniforms`), or greedy. Prompts are batched by length so rows of a
    batch need about the same number of new tokens."""
    tok = model.tokenizer
    ids = [prompt_ids(tok, p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    texts = [""] * len(prompts)
    for s in tqdm(range(0, len(order), batch_size), desc="fluency", disable=not progress, leave=False):
        idx = order[s: s + batch_size]
        batch = [ids[i] for i in idx]
        new = max(0, max(max_len - len(x) for x in batch))  # as many as the shortest prompt needs
        u = row_uniforms([prompts[i] for i in idx], new, seed) if do_sample else None
        out = generate(model, batch, new, top_k if do_sample else None, u).cpu()
        for row, i in enumerate(idx):
            keep = out[row, : max(max_len - len(ids[i]), 0)].tolist()
            texts[i] = tok.decode(ids[i] + keep, skip_special_tokens=True)
    return texts


def greedy_continuation(model: LoadedModel, prompt: str, n_new: int) -> str:
    """The greedy continuation of `prompt`, `n_new` tokens, without the prompt."""
    n_prompt = len(prompt_ids(model.tokenizer, prompt))
    text = sample_texts(model, [prompt], max_len=n_prompt + n_new, do_sample=False)[0]
    return text[len(prompt):] if text.startswith(prompt) else text


# ----------------------------------------------------------------------------- records -> rows


def locality_reference(model: LoadedModel, records: list[EditRecord], cfg: EvalConfig | None = None) -> LocalityReference:
    """The (unedited) model's argmax tokens on every locality probe; compute once, before editing."""
    cfg = cfg or EvalConfig()
    qs = queries(records, ("locality",))
    preds = answer_argmax(model, tokenize(model, qs, records), cfg.batch_size,
                          desc="locality reference" if cfg.progress else None)
    ref = LocalityReference(model.name)
    for q, p in zip(qs, preds):
        ref.tokens.setdefault(records[q.record].id, {}).setdefault(q.kind, []).append(p)
    return ref


def _reference_for(ref: LocalityReference, record: EditRecord, kind: str) -> list[list[int]]:
    got = ref.tokens.get(record.id, {}).get(kind)
    want = len(scored(record.locality[kind]))
    if got is None or len(got) != want:
        raise ValueError(f"locality_ref has {0 if got is None else len(got)} {kind} probe(s) for record "
                         f"{record.id}, the record has {want}; build it with locality_reference on these records")
    return got


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def evaluate(model: LoadedModel, records: list[EditRecord], cfg: EvalConfig | None = None,
             locality_ref: LocalityReference | None = None) -> list[dict]:
    """One row per record: id + every metric in [0, 1] (fluency in bits), NaN where the record has no probe."""
    cfg = cfg or EvalConfig()
    if not records:
        raise ValueError("evaluate: records is empty")
    if len({r.id for r in records}) != len(records):
        raise ValueError("evaluate: record ids are not unique")
    if cfg.fluency_sampling != "per-prompt":
        raise ValueError(f"evaluate: fluency_sampling {cfg.fluency_sampling!r} is not implemented; only 'per-prompt'")
    qs = queries(records, ("edit", "generalization", "portability", "locality"))
    pairs = tokenize(model, qs, records)
    preds = answer_argmax(model, pairs, cfg.batch_size, desc="teacher-forced eval" if cfg.progress else None)

    acc: list[dict[str, list[float]]] = [{} for _ in records]
    em: list[dict[str, list[float]]] = [{} for _ in records]
    loc_preds: list[dict[str, list[list[int]]]] = [{} for _ in records]
    for q, (_, target), p in zip(qs, pairs, preds):
        key = f"{q.metric}.{q.kind}" if q.kind else q.metric
        if q.metric == "locality":
            loc_preds[q.record].setdefault(q.kind, []).append(p)
            continue
        acc[q.record].setdefault(key, []).append(token_accuracy(p, target))
        em[q.record].setdefault(key, []).append(float(p == target))

    texts = [""] * len(records)
    if cfg.fluency:
        texts = sample_texts(model, [r.prompt for r in records], cfg.fluency_max_len, cfg.fluency_top_k, cfg.seed,
                             cfg.fluency_batch_size, progress=cfg.progress)

    rows = []
    for i, r in enumerate(records):
        row: dict = {"id": r.id}
        row["edit_succ"] = _mean(acc[i]["edit"])
        row["generalization"] = _mean(acc[i].get("generalization", []))
        port = {k: _mean(v) for k, v in acc[i].items() if k.startswith("portability.")}
        row["portability"] = _mean(list(port.values()))
        loc = {}
        for kind, ps in loc_preds[i].items():
            ref = _reference_for(locality_ref, r, kind) if locality_ref is not None else ps
            loc[f"locality.{kind}"] = _mean([token_accuracy(p, q) for p, q in zip(ps, ref)])
        row["locality"] = _mean(list(loc.values()))
        row["fluency"] = fluency(texts[i]) if cfg.fluency else math.nan
        if cfg.exact_match:
            row["edit_em"] = _mean(em[i]["edit"])
            row["generalization_em"] = _mean(em[i].get("generalization", []))
            port_em = [_mean(v) for k, v in em[i].items() if k.startswith("portability.")]
            row["portability_em"] = _mean(port_em)
        row.update(port)
        row.update(loc)
        if cfg.fluency:
            row["text"] = texts[i]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- rows -> table

HEADLINE = ("edit_succ", "generalization", "portability", "locality", "fluency", "edit_em", "generalization_em",
            "portability_em")
NAMES = {"edit_succ": "Edit Succ.", "generalization": "Generalization", "portability": "Portability",
         "locality": "Locality", "fluency": "Fluency", "edit_em": "Edit EM", "generalization_em": "Gen. EM",
         "portability_em": "Port. EM"}


AGGREGATIONS = ("record", "kind")


def summarize(rows: list[dict], by: str = "record") -> dict[str, float]:
    """Mean over records (NaN skipped) x100 of every metric and of each probe kind. Portability / Locality:
    `by="record"` the mean of each record's mean over its kinds (the KnowEdit runner's, the paper's);
    `by="kind"` the mean over kinds of the per-kind means (module docstring)."""
    if by not in AGGREGATIONS:
        raise ValueError(f"by must be one of {AGGREGATIONS}, got {by!r}")
    numeric = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("id", "text")]
    out: dict[str, float] = {}
    for k in numeric:
        vals = [r[k] for r in rows if k in r and r[k] is not None and not math.isnan(r[k])]
        out[k] = 100 * _mean(vals)
    for group in ("portability", "locality") if by == "kind" else ():
        kinds = [v for k, v in out.items() if k.startswith(group + ".") and not math.isnan(v)]
        if kinds:
            out[group] = _mean(kinds)
    out["n_records"] = len(rows)
    return out


def _cell(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.2f}"
    return str(v)


def format_table(summary_rows: list[dict] | dict, columns: list[str] | None = None) -> str:
    """A Markdown table: string-valued keys (model, method, ...) first, then the metrics in `columns`
    (default: the headline metrics any row has), with the paper's column names."""
    summary_rows = [summary_rows] if isinstance(summary_rows, dict) else summary_rows
    keys = list(dict.fromkeys(k for r in summary_rows for k in r))
    labels = [k for k in keys if all(isinstance(r.get(k, ""), str) for r in summary_rows)]
    metrics = columns or [k for k in HEADLINE if k in keys]
    header = [k for k in labels] + [NAMES.get(k, k) for k in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in summary_rows:
        cells = [_cell(r.get(k, "")) for k in labels] + [_cell(r.get(k, math.nan)) for k in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
