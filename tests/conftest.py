"""Shared fixtures: tiny random models (fast, every test) and the real SmolLM2 model (cached per session)."""

from __future__ import annotations

import os

import pytest
import torch

if not os.environ.get("OMP_NUM_THREADS"):  # an explicit thread count (a loaded machine) is kept
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
