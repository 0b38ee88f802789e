"""Context prefixes ("context templates"): short model-generated texts put before an edit prompt.

MEMIT averages keys and optimises target values over several random contexts so an edit does not hinge
on the prompt starting the text. We generate them once per model (greedy-free sampling, seeded) and keep
them on disk keyed by the model's weights — never in a process-wide cache.
"""

from __future__ import annotations

import json

import torch

from .models import LoadedModel, weights_fingerprint
from .paths import cache_dir

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
    path = cache_dir() / "prefixes" / f"{model.name.replace('/', '_')}-{fingerprint}-{n_tokens}-{seed}.json"
    if path.exists():
        try:
            cached = json.loads(path.read_text())
            if isinstance(cached, list) and all(isinstance(p, str) for p in cached):
                return cached
        except json.JSONDecodeError:
            pass  # corrupt cache: regenerate below
    prefixes = [""] + generate_prefixes(model, n_tokens, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(prefixes))
    tmp.replace(path)
    return prefixes
