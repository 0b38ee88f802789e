"""Context prefixes ("context templates"): short model-generated texts put before an edit prompt.

MEMIT averages keys and optimises target values over several random contexts so an edit does not hinge
on the prompt starting the text. We generate them once per model (greedy-free sampling, seeded) and keep
them on disk keyed by the model's weights (key and sha256 inside the file, store.py) — never in a
process-wide cache.

`lengths` is EasyEdit's `context_template_length_params`: [[n_tokens, count], ...], `count` texts of
`n_tokens` tokens each, spread over the start words. MEMIT uses [[10, 5]] (5 prefixes), ROME
[[5, 10], [10, 10]] (20 prefixes).
"""

from __future__ import annotations

import torch

from intattn_tl.core.paths import cache_dir
from intattn_tl.core.store import cached, read_json, write_json
from intattn_tl.model.spec import LoadedModel, weights_fingerprint

# MEMIT's recipe: 5 prefixes of ~10 tokens, each starting from a common word.
STARTS = ("The", "Therefore", "Because", "I", "You")


MEMIT_LENGTHS = ((10, 5),)
ROME_LENGTHS = ((5, 10), (10, 10))


def generate_prefixes(model: LoadedModel, n_tokens: int = 10, seed: int = 0, count: int = len(STARTS)) -> list[str]:
    """`count` prefixes of `n_tokens` sampled tokens, count // len(STARTS) from each start word in turn."""
    if count < 1 or count % len(STARTS):
        raise ValueError(f"count must be a positive multiple of {len(STARTS)} (one share per start word), got {count}")
    tok = model.tokenizer
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in [s for s in STARTS for _ in range(count // len(STARTS))]:
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


def context_prefixes(model: LoadedModel, lengths=MEMIT_LENGTHS, seed: int = 0,
                     fingerprint: str | None = None) -> list[str]:
    """The empty prefix, then for each (n_tokens, count) of `lengths` `count` generated ones (group i seeded
    with seed + i), cached on disk per model weights.

    `fingerprint`: the caller's `weights_fingerprint(model)`, if it has one (saves recomputing it).
    """
    lengths = [tuple(int(x) for x in pair) for pair in lengths]
    if not lengths or any(len(pair) != 2 or min(pair) < 1 for pair in lengths):
        raise ValueError(f"lengths must be a non-empty list of [n_tokens, count] pairs, got {lengths}")
    fingerprint = fingerprint or weights_fingerprint(model)
    name = model.name.replace('/', '_')
    tag = "_".join(f"{n}x{c}" for n, c in lengths)
    path = cache_dir() / "prefixes-v3" / f"{name}-{fingerprint}-{tag}-{seed}.json"
    key = {"model": model.name, "weights": fingerprint, "lengths": [list(p) for p in lengths], "seed": seed,
           "starts": list(STARTS)}
    got = cached(path, key, "prefix", reader=read_json)
    if got is not None and isinstance(got.get("prefixes"), list) and all(isinstance(p, str) for p in got["prefixes"]):
        return got["prefixes"]
    prefixes = [""] + [p for i, (n, c) in enumerate(lengths) for p in generate_prefixes(model, n, seed + i, c)]
    write_json(path, {"prefixes": prefixes}, key)
    return prefixes
