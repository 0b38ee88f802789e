"""The notebooks run top to bottom on the real model (nbclient, the running interpreter's kernel)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, timeout: int = 1200):
    """Execute a notebook with ipykernel's native `python3` kernel, i.e. this venv's interpreter."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


@pytest.mark.real_model
def test_causal_tracing_notebook_runs():
    nb = run_notebook("01_causal_tracing.ipynb")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "known: True" in text and "alpha =" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5
    # the hand-written run_with_hooks restore gives the toolkit's number for the same site
    number = r"P\(r\) = ([-\d.]+)  LD = ([-\d.]+)"
    hooks, toolkit = re.search(r"^hooks: +" + number, text, re.M), re.search(r"^toolkit: +" + number, text, re.M)
    assert hooks and toolkit
    assert abs(float(hooks[1]) - float(toolkit[1])) < 1e-5 and abs(float(hooks[2]) - float(toolkit[2])) < 2e-5
    assert float(toolkit[1]) > 0 and float(hooks[2]) != 0  # numbers were printed, not blanks


def _outputs(nb):
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    return outputs, text


@pytest.mark.real_model
def test_editing_walkthrough_notebook_runs():
    outputs, text = _outputs(run_notebook("02_editing_walkthrough.ipynb"))
    assert "rolled back bit-for-bit" in text
    assert "w_o." in text and "w_out." in text  # both modules were edited
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 1


@pytest.mark.real_model
def test_alpha_balance_notebook_runs():
    outputs, text = _outputs(run_notebook("03_alpha_balance.ipynb"))
    assert "'alpha': 0.0" in text and "'alpha': 1.0" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 1


def _printed(text: str, prefix: str) -> str:
    """The continuation the notebook printed on the line `prefix 'text'` (prefix: a regex)."""
    found = re.search(rf"^{prefix} +('.*'|\".*\")$", text, re.M)
    assert found, f"no line {prefix!r} in the notebook's output"
    return ast.literal_eval(found[1])


@pytest.mark.real_model
def test_your_fact_notebook_runs():
    nb = run_notebook("04_your_fact.ipynb")
    outputs, text = _outputs(nb)
    assert "NEW_TARGET = 'Rome'" in nb.cells[1].source  # the fact the checks below expect
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # per-token maps and layer curves
    assert "the model answers 'Paris'" in text
    before, edited = _printed(text, "before +prompt"), _printed(text, "IntAttn-Edit +prompt")
    assert "Rome" not in before and "Rome" in edited  # the edit changed the continuation to the new target
    assert _printed(text, "IntAttn-Edit +unrelated") == _printed(text, "before +unrelated")
    # the exported checkpoint, reloaded by plain transformers, continues as the edited model did
    assert _printed(text, "plain transformers") == edited
    assert "Rome" in _printed(text, "MEMIT +prompt")


def _generator():
    """notebooks/make_notebooks.py as a module (the folder is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_notebooks_are_the_generated_ones():
    """A cell edited in the .ipynb but not in make_notebooks.py (or the reverse) would be lost on the next write."""
    nbformat = pytest.importorskip("nbformat")
    gen = _generator()
    assert sorted(gen.NOTEBOOKS) == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    for name, cells in gen.NOTEBOOKS.items():
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert [(c.cell_type, c.source) for c in nb.cells] == [
            ("markdown" if kind == "md" else "code", src) for kind, src in cells], name
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} is committed unexecuted"


def test_scrub_drops_progress_bars_and_machine_paths():
    nbformat = pytest.importorskip("nbformat")
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    gen = _generator()
    root = str(NOTEBOOKS.parent)
    bar = "tracing:   0%|          | 0/2 [00:00<?, ?it/s]\rtracing: 100%|##########| 2/2 [00:06<00:00,  3.0s/it]\n"
    nb = new_notebook(cells=[new_markdown_cell("# title"), new_code_cell("x", outputs=[
        new_output("stream", name="stderr", text=bar),
        new_output("stream", name="stderr", text=f"{root}/src/x.py:3: UserWarning: careful\n" + bar),
        new_output("stream", name="stdout", text=f"wrote {root}/runs/a\n")])])
    gen.scrub(nb)
    nbformat.validate(nb)
    outs = nb.cells[1].outputs
    assert [o.text for o in outs] == ["./src/x.py:3: UserWarning: careful\n", "wrote ./runs/a\n"]
    assert "outputs" not in nb.cells[0]
