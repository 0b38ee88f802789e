"""Key second moments C = E[k k^T] over a text corpus: what an edit must leave alone.

MEMIT's lam*C term keeps W k unchanged for the keys the model usually sees. Two ways to cut the corpus
into model inputs (`text`):
- "documents" (the default, as the reference implementation): each non-empty corpus line that is not a
  WikiText heading ("= Title =") is one sequence, taken in file order until the requested token count is
  reached, truncated at `MAX_DOC_TOKENS`; sequences are batched with padding, and padded positions are
  left out of the sums;
- "windows": the lines joined and cut into fixed 128-token windows (the toolkit's earlier choice).
One forward per batch with hooks on every requested layer accumulates sum k k^T in float64 (each batch's
product in float32, exact enough for these batch sizes and twice as fast on CPU) on the device the layer
runs on; the finished E[k k^T] is kept on the CPU. Each (kind, layer) is stored as its own file keyed by
the model's weights, the corpus, the cut and the token count, so a method needing a few layers loads only
those. A corpus with fewer tokens than asked for, or fewer than the key dimension (C would be singular),
is refused before any forward pass.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from intattn_tl.core.paths import cache_dir
from intattn_tl.core.store import cached, write_torch
from intattn_tl.data.records import FILES, load_corpus
from intattn_tl.edit.keys import flat_heads, key_site
from intattn_tl.errors import IntattnError
from intattn_tl.model.spec import LoadedModel, weights_fingerprint

Kind = Literal["w_out", "w_o"]
TextMode = Literal["documents", "windows"]
TEXT_MODES = ("documents", "windows")
CHUNK = 128  # tokens per window (plus BOS where the tokenizer adds one); also the smallest n_tokens
BATCH = 8  # windows per forward
BATCH_TOKENS = 2048  # padded tokens per forward in "documents" mode
MAX_DOC_TOKENS = 4096  # longer documents are truncated (none of WikiText-2's lines is)
FORMAT = 2  # bump when the file layout changes


class CovarianceError(IntattnError, RuntimeError):
    pass


def corpus_source(corpus=None) -> tuple[str, list[str]]:
    """(cache key, texts) for WikiText-2 (None or "wikitext2"), a text file path, or a `datasets.Dataset`
    with a text column."""
    if corpus is None or corpus == "wikitext2":
        return "wikitext2", [load_corpus()]
    if isinstance(corpus, (str, Path)):
        path = Path(corpus)
        if not path.is_file():
            raise CovarianceError(f"corpus file {path} not found")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest == FILES["wikitext2"].sha256:  # the benchmark corpus wherever it lives (--data-dir): one key
            return "wikitext2", [data.decode("utf-8")]
        return f"file-{digest[:16]}", [data.decode("utf-8", errors="replace")]
    if hasattr(corpus, "column_names") and hasattr(corpus, "_fingerprint"):
        column = "text" if "text" in corpus.column_names else None
        if column is None:
            raise CovarianceError(f"corpus dataset has no 'text' column (columns: {corpus.column_names})")
        return f"ds-{corpus._fingerprint}", [t for t in corpus[column] if t and t.strip()]
    raise CovarianceError(f"corpus must be None (WikiText-2), a text file path or a datasets.Dataset, got {type(corpus).__name__}")


def token_chunks(tokenizer, texts: list[str], n_tokens: int) -> list[list[int]]:
    """CHUNK-token windows cut from the texts, at least n_tokens in all if available ("windows")."""
    need = -(-n_tokens // CHUNK)
    chunks: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        chunks.extend(ids[i:i + CHUNK] for i in range(0, len(ids) // CHUNK * CHUNK, CHUNK))
        if len(chunks) >= need:
            break
    return chunks[:need]


def documents(texts: list[str]) -> list[str]:
    """The corpus lines that are text: stripped, neither empty nor a WikiText heading ("= ... =")."""
    return [line for text in texts for line in (raw.strip() for raw in text.split("\n"))
            if line and not line.startswith("=")]


def doc_limit(model: LoadedModel) -> int:
    """Tokens kept per document: MAX_DOC_TOKENS, or fewer where the model has a hard context (learned
    position embeddings: GPT-2's 1024; families/generic.py's `max_tokens`)."""
    return min(MAX_DOC_TOKENS, getattr(model.spec.family, "max_tokens", None) or MAX_DOC_TOKENS)


def document_tokens(tokenizer, texts: list[str], n_tokens: int, limit: int = MAX_DOC_TOKENS) -> list[list[int]]:
    """One token list per document, in order, until the token count reaches n_tokens ("documents")."""
    out, count = [], 0
    for doc in documents(texts):
        if count >= n_tokens:
            break
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"][:limit]
        out.append(ids)
        count += len(ids)
    return out


def sequences(tokenizer, texts: list[str], n_tokens: int, text: TextMode,
              limit: int = MAX_DOC_TOKENS) -> list[list[int]]:
    if text not in TEXT_MODES:
        raise CovarianceError(f"text must be one of {TEXT_MODES}, got {text!r}")
    if text == "documents":
        return document_tokens(tokenizer, texts, n_tokens, limit)
    return token_chunks(tokenizer, texts, n_tokens)


def check_enough(seqs: list[list[int]], n_tokens: int, dims: dict, corpus_key: str) -> int:
    """The token count of `seqs`; refused if below n_tokens or below a key dimension (C singular)."""
    count = sum(len(x) for x in seqs)
    if count < n_tokens:
        raise CovarianceError(f"corpus {corpus_key} gives {count} tokens for the key statistics, fewer than the "
                              f"{n_tokens} asked for (mom2_n_samples); use a larger corpus or "
                              f"mom2_n_samples <= {count}")
    small = {site: d for site, d in dims.items() if count < d}
    if small:
        raise CovarianceError(f"corpus {corpus_key} gives {count} tokens, fewer than the key dimension "
                              f"{max(small.values())} of {sorted(small)}: E[k k^T] would be singular")
    return count


def _cut(text: TextMode, limit: int = MAX_DOC_TOKENS) -> str:
    return f"c{CHUNK}" if text == "windows" else f"docs{limit}"


def _path(model: LoadedModel, fingerprint: str, corpus_key: str, n_tokens: int, kind: Kind, layer: int,
          text: TextMode) -> Path:
    name = model.name.replace("/", "_")
    return (cache_dir() / "second_moments" / f"{name}-{fingerprint}"
            / f"{corpus_key}-n{n_tokens}-{_cut(text, doc_limit(model))}-{kind}-{layer}.v{FORMAT}.pt")


def _meta(model, fingerprint, corpus_key, n_tokens, kind, layer, text: TextMode) -> dict:
    meta = {"format": FORMAT, "model": model.name, "weights": fingerprint, "corpus": corpus_key,
            "n_tokens": n_tokens, "chunk": CHUNK, "kind": kind, "layer": layer}
    return meta if text == "windows" else {**meta, "chunk": None, "text": _cut(text, doc_limit(model))}


def _load(path: Path, meta: dict, d: int) -> Tensor | None:
    """The cached E[k k^T], or None (with a note) if the file is missing, corrupt or for something else."""
    blob = cached(path, meta, "second-moment")
    if blob is None:
        return None
    mom2 = blob.get("mom2") if isinstance(blob, dict) else None
    if not (isinstance(mom2, Tensor) and mom2.dtype == torch.float64 and mom2.shape == (d, d)
            and bool(torch.isfinite(mom2).all()) and blob.get("count", 0) > 0):
        print(f"[intattn] second-moment cache {path} holds no valid [{d}, {d}] matrix; rebuilding it", file=sys.stderr)
        return None
    return mom2


def _dim(model: LoadedModel, kind: Kind) -> int:
    return getattr(model.spec, kind)[0].shape[1]


def _batches(seqs: list[list[int]], text: TextMode) -> list[list[list[int]]]:
    """Windows BATCH at a time; documents by length (less padding), at most BATCH_TOKENS padded tokens each."""
    if text == "windows":
        return [seqs[i:i + BATCH] for i in range(0, len(seqs), BATCH)]
    out, cur = [], []
    for seq in sorted(seqs, key=len, reverse=True):
        if cur and (len(cur) + 1) * len(cur[0]) > BATCH_TOKENS:
            out.append(cur)
            cur = []
        cur.append(seq)
    return out + [cur] if cur else out


def _accumulate(model: LoadedModel, sites: list[tuple[Kind, int]], seqs: list[list[int]], text: TextMode,
                progress: bool) -> dict:
    """sum_k k k^T (float64) per site over every real (non-pad, non-BOS) position, all sites in one pass."""

    tok = model.tokenizer
    bos = [tok.bos_token_id] if tok.bos_token_id is not None and tok("a")["input_ids"][0] == tok.bos_token_id else []
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    names = {key_site(kind, layer): (kind, layer) for kind, layer in sites}
    sums: dict = {}  # on each layer's device (a split model's GPUs), to the CPU at the end
    stop = max(layer for _, layer in sites) + 1
    for batch in tqdm(_batches(seqs, text), desc="second moments", disable=not progress, unit="batch"):
        t = max(len(x) for x in batch)
        ids = torch.tensor([bos + x + [pad] * (t - len(x)) for x in batch], device=model.device)
        real = torch.tensor([[j < len(x) for j in range(t)] for x in batch])  # BOS keys (attention sinks) skipped

        def grab(x, hook, name):
            k = flat_heads(name, x.detach())[:, len(bos):][real.to(x.device)].float()  # right padding: real rows only
            kk = (k.T @ k).double()
            site = names[name]
            sums[site] = sums[site].add_(kk) if site in sums else kk

        hooks = [(name, lambda x, hook, name=name: grab(x, hook, name)) for name in names]
        with torch.no_grad():
            model.bridge.run_with_hooks(ids, fwd_hooks=hooks, stop_at_layer=min(stop, model.spec.n_layers))
    return {site: total.cpu() for site, total in sums.items()}


def second_moments(model: LoadedModel, sites: list[tuple[Kind, int]], n_tokens: int = 100_000, corpus=None,
                   progress: bool = False, text: TextMode = "documents") -> dict[tuple[Kind, int], Float[Tensor, "_d_in _d_in"]]:
    """E[k k^T] (float64, CPU) for each (kind, layer) in `sites`; missing ones computed in one pass, cached.
    Each cache file records the token count it was made from (`count`)."""
    if n_tokens < CHUNK:
        raise CovarianceError(f"n_tokens must be at least {CHUNK}, got {n_tokens}")
    if text not in TEXT_MODES:
        raise CovarianceError(f"text must be one of {TEXT_MODES}, got {text!r}")
    for kind, layer in sites:
        if kind not in ("w_out", "w_o") or not 0 <= layer < model.spec.n_layers:
            raise CovarianceError(f"bad site ({kind!r}, {layer}) for {model.name} ({model.spec.n_layers} layers)")
    corpus_key, texts = corpus_source(corpus)
    fp = weights_fingerprint(model)
    out, missing = {}, []
    for kind, layer in dict.fromkeys(sites):
        meta = _meta(model, fp, corpus_key, n_tokens, kind, layer, text)
        mom2 = _load(_path(model, fp, corpus_key, n_tokens, kind, layer, text), meta, _dim(model, kind))
        if mom2 is None:
            missing.append((kind, layer))
        else:
            out[(kind, layer)] = mom2
    if missing:
        t0 = time.time()
        seqs = sequences(model.tokenizer, texts, n_tokens, text, doc_limit(model))
        count = check_enough(seqs, n_tokens, {site: _dim(model, site[0]) for site in missing}, corpus_key)
        sums = _accumulate(model, missing, seqs, text, progress)
        for site, total in sums.items():
            mom2 = total / count
            write_torch(_path(model, fp, corpus_key, n_tokens, *site, text),
                        {"mom2": mom2, "count": count, "sequences": len(seqs), "seconds": time.time() - t0},
                        _meta(model, fp, corpus_key, n_tokens, *site, text))
            out[site] = mom2
    return {site: out[site] for site in sites}


def second_moment(model: LoadedModel, kind: Kind, layer: int, n_tokens: int = 100_000,
                  corpus=None, text: TextMode = "documents") -> Float[Tensor, "d_in d_in"]:
    return second_moments(model, [(kind, layer)], n_tokens, corpus, text=text)[(kind, layer)]
