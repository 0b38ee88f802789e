"""`intattn --version`: the package version and the code's commit."""

import re
from importlib.metadata import version
from pathlib import Path

import intattn_tl
from intattn_tl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_version_prints_version_and_commit(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"intattn-tl {version('intattn-tl')} (commit ")
    assert re.search(r"\(commit ([0-9a-f]{12}(\+changes)?|unknown)\)", out), out


def test_pyproject_and_package_agree():
    """One version: pyproject.toml's (what the installed metadata says) is the package's __version__."""
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert declared == intattn_tl.__version__
