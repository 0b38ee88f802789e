"""The notebooks run top to bottom on the real model (nbclient, the running interpreter's kernel)."""

from __future__ import annotations

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
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4


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
