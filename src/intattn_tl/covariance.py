"""Key second moments C = E[k k^T] over a text corpus: what an edit must leave alone.

MEMIT's lam*C term keeps W k unchanged for the keys the model usually sees. We run the corpus through
the model in fixed-length chunks, one forward per batch of chunks with hooks on every requested layer,
and accumulate sum k k^T in float64 (each batch's product in float32, which is exact enough for 1k-token
batches and twice as fast on CPU) on the device the layer runs on; the finished E[k k^T] is kept on the CPU. Each (kind, layer) is stored as its own file keyed by the model's
weights, the corpus and the token count, so a method needing a few layers loads only those.
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

from .data import FILES
from .errors import IntattnError
from .keys import _flat, key_site
from .models import LoadedModel, weights_fingerprint
from .paths import cache_dir
from .store import cached, write_torch

Kind = Literal["w_out", "w_o"]
CHUNK = 128  # tokens per text chunk (plus BOS where the tokenizer adds one)
BATCH = 8  # chunks per forward
FORMAT = 2  # bump when the file layout changes


class CovarianceError(IntattnError, RuntimeError):
    pass


def corpus_source(corpus=None) -> tuple[str, list[str]]:
    """(cache key, texts) for WikiText-2 (None or "wikitext2"), a text file path, or a `datasets.Dataset`
    with a text column."""
    if corpus is None or corpus == "wikitext2":
        from .data import load_corpus

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


def token_chunks(tokenizer, texts: list[str], n_tokens: int) -> Tensor:
    """[n_chunks, CHUNK] token ids cut from the concatenated texts, at least n_tokens in all if available."""
    need = -(-n_tokens // CHUNK)
    chunks: list[Tensor] = []
    for text in texts:
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
        chunks.extend(ids[: len(ids) // CHUNK * CHUNK].view(-1, CHUNK))
        if len(chunks) >= need:
            break
    if not chunks:
        raise CovarianceError(f"corpus holds fewer than {CHUNK} tokens")
    return torch.stack(chunks[:need])


def _path(model: LoadedModel, fingerprint: str, corpus_key: str, n_tokens: int, kind: Kind, layer: int) -> Path:
    name = model.name.replace("/", "_")
    return (cache_dir() / "second_moments" / f"{name}-{fingerprint}"
            / f"{corpus_key}-n{n_tokens}-c{CHUNK}-{kind}-{layer}.v{FORMAT}.pt")


def _meta(model, fingerprint, corpus_key, n_tokens, kind, layer) -> dict:
    return {"format": FORMAT, "model": model.name, "weights": fingerprint, "corpus": corpus_key,
            "n_tokens": n_tokens, "chunk": CHUNK, "kind": kind, "layer": layer}


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


def _accumulate(model: LoadedModel, sites: list[tuple[Kind, int]], chunks: Tensor,
                progress: bool) -> tuple[dict, int]:
    """sum_k k k^T (float64) per site and the token count, all sites in one pass over the chunks."""
    from tqdm.auto import tqdm

    tok = model.tokenizer
    bos = [tok.bos_token_id] if tok.bos_token_id is not None and tok("a")["input_ids"][0] == tok.bos_token_id else []
    names = {key_site(kind, layer): (kind, layer) for kind, layer in sites}
    sums: dict = {}  # on each layer's device (a split model's GPUs), to the CPU at the end
    stop = max(layer for _, layer in sites) + 1
    count = 0
    for b0 in tqdm(range(0, len(chunks), BATCH), desc="second moments", disable=not progress, unit="batch"):
        batch = chunks[b0:b0 + BATCH]
        ids = torch.cat([torch.tensor(bos, dtype=batch.dtype).expand(len(batch), -1), batch], 1).to(model.device)

        def grab(x, hook, name):
            k = _flat(name, x.detach())[:, len(bos):].reshape(-1, _dim(model, names[name][0])).float()
            kk = (k.T @ k).double()  # BOS keys are attention-sink outliers: skipped
            site = names[name]
            sums[site] = sums[site].add_(kk) if site in sums else kk

        hooks = [(name, lambda x, hook, name=name: grab(x, hook, name)) for name in names]
        with torch.no_grad():
            model.bridge.run_with_hooks(ids, fwd_hooks=hooks, stop_at_layer=min(stop, model.spec.n_layers))
        count += batch.numel()
    return {site: total.cpu() for site, total in sums.items()}, count


def second_moments(model: LoadedModel, sites: list[tuple[Kind, int]], n_tokens: int = 100_000, corpus=None,
                   progress: bool = False) -> dict[tuple[Kind, int], Float[Tensor, "d_in d_in"]]:
    """E[k k^T] (float64, CPU) for each (kind, layer) in `sites`; missing ones computed in one pass, cached."""
    if n_tokens < CHUNK:
        raise CovarianceError(f"n_tokens must be at least {CHUNK}, got {n_tokens}")
    for kind, layer in sites:
        if kind not in ("w_out", "w_o") or not 0 <= layer < model.spec.n_layers:
            raise CovarianceError(f"bad site ({kind!r}, {layer}) for {model.name} ({model.spec.n_layers} layers)")
    corpus_key, texts = corpus_source(corpus)
    fp = weights_fingerprint(model)
    out, missing = {}, []
    for kind, layer in dict.fromkeys(sites):
        meta = _meta(model, fp, corpus_key, n_tokens, kind, layer)
        mom2 = _load(_path(model, fp, corpus_key, n_tokens, kind, layer), meta, _dim(model, kind))
        if mom2 is None:
            missing.append((kind, layer))
        else:
            out[(kind, layer)] = mom2
    if missing:
        t0 = time.time()
        sums, count = _accumulate(model, missing, token_chunks(model.tokenizer, texts, n_tokens), progress)
        for site, total in sums.items():
            mom2 = total / count
            write_torch(_path(model, fp, corpus_key, n_tokens, *site),
                        {"mom2": mom2, "count": count, "seconds": time.time() - t0},
                        _meta(model, fp, corpus_key, n_tokens, *site))
            out[site] = mom2
    return {site: out[site] for site in sites}


def second_moment(model: LoadedModel, kind: Kind, layer: int, n_tokens: int = 100_000,
                  corpus=None) -> Float[Tensor, "d_in d_in"]:
    return second_moments(model, [(kind, layer)], n_tokens, corpus)[(kind, layer)]
