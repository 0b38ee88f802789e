"""Context prefixes ("context templates"): short model-generated texts put before an edit prompt.

MEMIT averages keys and optimises target values over several random contexts so an edit does not hinge
on the prompt starting the text. We generate them once per model (greedy-free sampling, seeded) and keep
them on disk keyed by the model's weights (key and sha256 inside the file, store.py) — never in a
process-wide cache.
"""

from __future__ import annotations

import torch

from .models import LoadedModel, weights_fingerprint
from .paths import cache_dir
from .store import cached, read_json, write_json

# MEMIT's recipe: 5 prefixes of ~10 tokens, each starting from a common word.
STARTS = ("The", "Therefore", "Because", "I", "You")


def generate_prefixes(model: LoadedModel, n_tokens: int = 10, seed: int = 0) -> list[str]:
    tok = model.tokenizer
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in STARTS:
        ids = tok(start)["input_ids"]
        for _ in range(n_tokens):
            with torch.no_grad():
                logits = model.bridge(torch.tensor([ids], device=model.device))[0, -1].float().cpu()
            probs = torch.softmax(logits, -1)
            top = torch.topk(probs, 20)  # top-k sampling keeps the text on-distribution
            choice = top.indices[torch.multinomial(top.values / top.values.sum(), 1, generator=gen)].item()
            ids.append(choice)
        text = tok.decode(ids, skip_special_tokens=True).replace("{", " ").replace("}", " ")
        out.append(text.strip() + ". ")
    return out


def context_prefixes(model: LoadedModel, n_tokens: int = 10, seed: int = 0, fingerprint: str | None = None) -> list[str]:
    """The empty prefix plus len(STARTS) generated ones, cached on disk per model weights.

    `fingerprint`: the caller's `weights_fingerprint(model)`, if it has one (saves recomputing it).
    """
    fingerprint = fingerprint or weights_fingerprint(model)
    name = model.name.replace('/', '_')
    path = cache_dir() / "prefixes-v2" / f"{name}-{fingerprint}-{n_tokens}-{seed}.json"
    key = {"model": model.name, "weights": fingerprint, "n_tokens": n_tokens, "seed": seed, "starts": list(STARTS)}
    got = cached(path, key, "prefix", reader=read_json)
    if got is not None and isinstance(got.get("prefixes"), list) and all(isinstance(p, str) for p in got["prefixes"]):
        return got["prefixes"]
    prefixes = [""] + generate_prefixes(model, n_tokens, seed)
    write_json(path, {"prefixes": prefixes}, key)
    return prefixes
