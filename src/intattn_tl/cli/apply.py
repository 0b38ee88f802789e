"""`intattn apply EDIT.pt --model M --export DIR`: apply a saved edit (`intattn edit --save`) to its model
and write the edited model as a Hugging Face checkpoint that plain transformers loads."""

from __future__ import annotations


def add_arguments(p) -> None:
    from intattn_tl.cli.common import add_dtype_argument
    from intattn_tl.model.registry import DEFAULT_MODEL

    p.add_argument("edit_file", help="an edit file written by `intattn edit --save` (EditResult.save)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"the model the edit was made on (default {DEFAULT_MODEL})")
    p.add_argument("--export", required=True, metavar="DIR", help="write the edited model here (a new folder)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    add_dtype_argument(p)


def run(args) -> int:
    from pathlib import Path

    from intattn_tl.edit.export import card_from_saved, export_model
    from intattn_tl.edit.result import apply_saved, saved_meta
    from intattn_tl.edit.transaction import EditError
    from intattn_tl.model.load import load_model

    path = Path(args.edit_file)
    if not path.is_file():
        raise EditError(f"edit file {path} not found")
    if Path(args.export).exists() and not args.overwrite:
        raise EditError(f"{args.export} exists; choose a new folder or pass --overwrite")
    model = load_model(args.model, dtype=args.dtype)
    meta = saved_meta(model, path)
    tx = apply_saved(model, path)
    try:
        folder = export_model(model, args.export, [card_from_saved(meta)], overwrite=args.overwrite)
    finally:
        tx.rollback()
    print(f"applied {path} ({meta.get('method')}, {meta.get('n_records')} records, weights "
          f"{', '.join(sorted(meta.get('after', {})))}) to {model.name} and exported it to {folder}")
    return 0
