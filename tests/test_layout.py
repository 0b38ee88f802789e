"""The package's imports point one way, stage by stage (docs/design.md), with no cycles and no imports
hidden inside library functions (an import inside a function is how a cycle hides)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "intattn_tl"
# Lower stages never import higher ones. Modules of one stage may import each other (without cycles).
STAGES = ["errors", "version", "core", "data", "model", "evaluation", "locate", "edit", "methods", "config", "api",
          "repro", "diagnostics", "cli", "__init__"]
# Third-party modules a library function may import when it runs: optional, online-only or slow to import,
# and needed by few calls (W&B logging, the hub download, accelerate's device maps).
LAZY_OK = {"wandb", "datasets", "huggingface_hub", "accelerate"}


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__") or "__init__"
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def stage(module: str) -> int:
    return STAGES.index(module.split(".")[0])


def _target(node: ast.ImportFrom | ast.Import, mods: dict) -> list[str]:
    """The package modules an import statement loads (the module itself, or a submodule named in it)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        assert node.level == 0, f"relative import of {node.module}: write intattn_tl.<stage>.<module>"
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    out = []
    for n in names:
        if n == "intattn_tl":
            out.append("__init__")
        elif n.startswith("intattn_tl."):
            rel = n.removeprefix("intattn_tl.")
            if rel in mods:
                out.append(rel)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {t for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                   for t in _target(node, mods) if t != name}
            for name, tree in mods.items()}


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_imports_point_down_the_stages():
    g = graph()
    up = [f"{m} imports {n}" for m in g for n in g[m] if stage(n) > stage(m)]
    assert not up, "imports against the stage order " + " < ".join(STAGES) + ":\n" + "\n".join(sorted(up))


def test_no_imports_inside_library_functions():
    found = []
    for name, tree in modules().items():
        if name.split(".")[0] == "cli":  # commands import their stage's modules when they run (fast --help)
            continue
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                root = (node.module or "" if isinstance(node, ast.ImportFrom) else node.names[0].name).split(".")[0]
                if root not in LAZY_OK or getattr(node, "level", 0):
                    found.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    assert not found, "imports inside functions:\n" + "\n".join(found)


def test_every_module_has_a_stage():
    assert all(m.split(".")[0] in STAGES for m in modules())
