"""`intattn generate --model M|DIR [--apply EDIT.pt] "prompt"`: greedy continuations, before and after an
edit, for a quick look at what an edit (or an exported model) says."""

from __future__ import annotations


def add_arguments(p) -> None:
    from intattn_tl.cli.common import add_dtype_argument
    from intattn_tl.core.checks import integer
    from intattn_tl.model.registry import DEFAULT_MODEL

    p.add_argument("prompts", nargs="+", help="one or more prompts")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"known model, HF id or local model folder, e.g. an export (default {DEFAULT_MODEL})")
    p.add_argument("--apply", metavar="EDIT.pt", help="also continue each prompt with this saved edit applied")
    p.add_argument("--tokens", type=integer(lo=1), default=20, help="new tokens per continuation (default 20)")
    add_dtype_argument(p)


def run(args) -> int:
    from pathlib import Path

    from intattn_tl.edit.result import apply_saved
    from intattn_tl.edit.transaction import EditError
    from intattn_tl.evaluation.metrics import greedy_continuation
    from intattn_tl.model.load import load_model

    if args.apply and not Path(args.apply).is_file():
        raise EditError(f"edit file {args.apply} not found")
    model = load_model(args.model, dtype=args.dtype)
    before = [greedy_continuation(model, p, args.tokens) for p in args.prompts]
    after = None
    if args.apply:
        tx = apply_saved(model, args.apply)
        try:
            after = [greedy_continuation(model, p, args.tokens) for p in args.prompts]
        finally:
            tx.rollback()
    for i, prompt in enumerate(args.prompts):
        print(prompt)
        print(f"  {'before' if after else model.name}: {before[i]!r}")
        if after:
            print(f"  after:  {after[i]!r}")
    return 0
