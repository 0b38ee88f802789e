"""intattn: locate and edit factual knowledge in language models (IntAttn-Edit and baselines).

Each subcommand lives in `intattn_tl.commands.<name>` and exposes
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when their command runs."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "models": "list the known models, or load one and print its shapes",
    "eval": "evaluate a model (unedited) on an edit benchmark and print the metrics table",
    "trace": "causal tracing of attention/MLP/residual sites; writes arrays, CSV, figures and alpha",
    "edit": "apply a batch of edits with one method and print pre/post metrics",
    "reproduce": "reproduce the paper's tables and figures",
    "demo": "the method in miniature: trace a fact, read alpha, edit with MEMIT and IntAttn-Edit, evaluate, roll back",
}


def _module(name: str):
    return importlib.import_module(f"intattn_tl.commands.{name}")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intattn", description=__doc__.splitlines()[0].split(": ", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = next((a for a in (argv or []) if a in COMMANDS), None)
    for name, help_text in COMMANDS.items():
        try:
            mod = _module(name)
        except ModuleNotFoundError as err:
            if err.name != f"intattn_tl.commands.{name}":
                raise
            continue  # a command not built yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        if wanted in (None, name):
            mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    from .data import DataError
    from .models import ModelLoadError
    from .reproduce import ReproduceError
    from .tokens import TokenError

    try:
        return int(args._run(args) or 0)
    except (ModelLoadError, DataError, TokenError, ReproduceError) as err:
        print(f"intattn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
