"""intattn: locate and edit factual knowledge in language models (IntAttn-Edit and baselines).

Each subcommand lives in `intattn_tl.cli.<name>` and exposes
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
    "check": "check that the toolkit's hooks, matrices and edits work on a model before trusting its numbers",
    "demo": "the method in miniature: trace a fact, read alpha, edit with MEMIT and IntAttn-Edit, evaluate, roll back",
    "apply": "apply a saved edit to its model and export the edited model as a Hugging Face checkpoint",
    "generate": "greedy continuations of prompts, before and after a saved edit",
}


class _Version(argparse.Action):
    """`intattn --version`: the installed package version and the commit of the checkout the code runs from."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_string())
        parser.exit()


def version_string() -> str:
    """`intattn-tl 0.2.0 (commit 1234abcd5678)`: the version from the installed package's metadata, the commit
    from `git rev-parse` of the package's checkout ("+changes" if src/ differs from it), "unknown" outside git."""
    from importlib.metadata import PackageNotFoundError, version

    from intattn_tl import __version__
    from intattn_tl.core.settings import code_version

    try:
        installed = version("intattn-tl")
    except PackageNotFoundError:
        installed = __version__
    text = f"intattn-tl {installed} (commit {code_version()['git'] or 'unknown'})"
    if installed != __version__:
        text += f"; the imported code is {__version__}: reinstall (make setup) to update the metadata"
    return text


def _module(name: str):
    return importlib.import_module(f"intattn_tl.cli.{name}")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intattn", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--version", action=_Version, help="print the version and the code's git commit, then exit")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = next((a for a in (argv or []) if a in COMMANDS), None)
    for name, help_text in COMMANDS.items():
        try:
            mod = _module(name)
        except ModuleNotFoundError as err:
            if err.name != f"intattn_tl.cli.{name}":
                raise
            continue  # a command not built yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        if wanted in (None, name):
            mod.add_arguments(p)
            p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
        p.set_defaults(_run=mod.run)
    return parser


def run_folders(args) -> dict:
    """The folders a command writes (name -> path), to name the right one in an environment error."""
    from intattn_tl.core.paths import cache_dir

    folders = {}
    for name in ("out", "save"):
        if getattr(args, name, None) is not None:
            folders[name] = getattr(args, name)
    try:
        folders["cache"] = cache_dir()
    except OSError:
        pass
    return folders


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as done:  # argparse: --help (0) or a bad value (one `error:` line, 2)
        return int(done.code or 0)
    try:
        from intattn_tl.cli.common import preflight
        from intattn_tl.core.settings import code_version

        code_version()  # read once, before any work: results record the code this process runs
        preflight(args)
        return int(args._run(args) or 0)
    except Exception as err:
        if getattr(args, "debug", False):
            raise
        from intattn_tl.errors import IntattnError, environment_problem

        problem = err if isinstance(err, IntattnError) else environment_problem(err, run_folders(args))
        if problem is not None:  # the input or the machine, which the user can fix: one line, exit code 2
            print(f"intattn {args.command}: error: {problem}", file=sys.stderr)
            return 2
        print(f"intattn {args.command}: internal error: {type(err).__name__}: {err} (--debug shows the traceback)",
              file=sys.stderr)
        return 1

