"""Shared fixtures: tiny random models (fast, every test) and the real SmolLM2 model (cached per session)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

import jaxtyping
import pytest
import torch

if not os.environ.get("OMP_NUM_THREADS"):  # an explicit thread count (a loaded machine) is kept
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TYPECHECK_ENV = "INTATTN_TYPECHECK"


def pytest_addoption(parser):
    group = parser.getgroup("intattn")
    group.addoption("--typecheck", action="store_true", default=None, dest="typecheck",
                    help=f"check every jaxtyping / type annotation of intattn_tl at run time (beartype; also {TYPECHECK_ENV}=1)")
    group.addoption("--no-typecheck", action="store_false", dest="typecheck", help=f"don't (also {TYPECHECK_ENV}=0)")


def typecheck_wanted(config) -> bool:
    """The command line wins over the environment; neither given: off."""
    if config.getoption("typecheck") is not None:
        return config.getoption("typecheck")
    value = os.environ.get(TYPECHECK_ENV, "").strip().lower()
    if value in ("", "0", "no", "false", "off"):
        return False
    if value in ("1", "yes", "true", "on"):
        return True
    raise pytest.UsageError(f"{TYPECHECK_ENV}={value!r}: use 1 or 0")


def pytest_configure(config):
    # Test modules are imported at collection, after this hook; the import hook only instruments modules imported
    # after it is installed, so nothing may have imported intattn_tl before (this file imports it inside fixtures).
    config.intattn_typecheck = typecheck_wanted(config)
    if not config.intattn_typecheck:
        return
    early = sorted(m for m in sys.modules if m == "intattn_tl" or m.startswith("intattn_tl."))
    if early:
        raise pytest.UsageError(f"--typecheck: intattn_tl was imported before the import hook: {', '.join(early)}")
    if importlib.util.find_spec("beartype") is None:
        raise pytest.UsageError("--typecheck needs beartype: pip install -e '.[dev]'")
    # PEP 484's numeric tower: an int is a valid `float` (beartype is stricter by default). Subprocesses the
    # tests start (CLI runs, worker processes) import intattn_tl afresh and run unchecked.
    jaxtyping.install_import_hook("intattn_tl", "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))")


def pytest_report_header(config):
    return f"typecheck: {'on (jaxtyping + beartype import hook on intattn_tl)' if config.intattn_typecheck else 'off'}"


def _load(name):
    from intattn_tl.model.load import load_model

    return load_model(name)


@pytest.fixture(scope="session")
def tiny_llama():
    return _load("tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen2():
    return _load("tiny-qwen2")


@pytest.fixture(scope="session")
def tiny_mistral():
    return _load("tiny-mistral")


@pytest.fixture(scope="session")
def tiny_gemma():
    return _load("tiny-gemma3")


@pytest.fixture(scope="session")
def smollm():
    """The real SmolLM2-135M-Instruct. Tests that edit it must roll their edits back."""
    return _load("smollm2-135m")


@pytest.fixture(scope="session")
def wiki_records():
    from intattn_tl.data.records import load_edits

    return load_edits("wiki_counterfact")


@pytest.fixture(autouse=True)
def wandb_off(tmp_path, monkeypatch):
    """Commands log to W&B by default. In tests nothing is logged unless a test sets WANDB_MODE=offline (then
    into its tmp_path): never online, never into the working tree, and no W&B start-up in every command test."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of this test's own ($INTATTN_CACHE)."""
    monkeypatch.setenv("INTATTN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the input must be refused before."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")
    for where in ("intattn_tl.model.load.load_model", "intattn_tl.repro.tables.load_model", "intattn_tl.repro.sweep.load_model"):
        monkeypatch.setattr(where, refuse)



@contextlib.contextmanager
def _checks_off():
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


@pytest.fixture
def unchecked():
    """`with unchecked(): ...` runs its body without the run-time type check (--typecheck): for a call that
    asserts a function's own refusal of bad input, what users (who run unchecked) get, which an annotation
    would otherwise pre-empt. Keep the body to that call, so the rest of the test stays checked."""
    return _checks_off
