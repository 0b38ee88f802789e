"""The public API at the top of the package: the README's Python lines, on a tiny model and on SmolLM2."""

from __future__ import annotations

import pytest
import torch

import intattn_tl
from intattn_tl import edit, load_hparams, summarize_trace, trace
from tiny_edit import FAST

FACT = ("The Eiffel Tower is located in the city of", "Eiffel Tower", "Rome")


def test_every_public_name_resolves():
    assert all(getattr(intattn_tl, name, None) is not None for name in intattn_tl.__all__)


def test_trace_then_edit_then_rollback_on_own_facts(tiny_llama):
    results = trace(tiny_llama, [FACT[:2], {"prompt": "Paris is the capital of", "subject": "Paris", "answer": " X"}],
                    n_samples=2, kinds=("attn_window", "mlp_window"), window=2)
    assert [r.subject for r in results] == ["Eiffel Tower", "Paris"]
    assert results[0].answer and results[1].answer == " X"  # the model's own answer, and the given one
    assert all(r.kinds == ("attn_window", "mlp_window") and r.prob.shape[0] == 2 for r in results)
    before = [w.clone() for w in tiny_llama.spec.w_out]
    result = edit(tiny_llama, [FACT], "memit", load_hparams("memit", "tiny-llama", FAST))
    assert set(result.deltas) == {"w_out.1", "w_out.2"}
    assert not torch.equal(tiny_llama.spec.w_out[1], before[1])
    result.rollback()
    assert all(torch.equal(a, b) for a, b in zip(tiny_llama.spec.w_out, before))


@pytest.mark.real_model
def test_readme_python_lines_on_smollm(smollm):
    results = trace(smollm, [FACT[:2]], n_samples=3)  # the README's line, with fewer noise samples
    assert results[0].answer.strip() == "Paris" and results[0].kinds == ("attn_window", "mlp_window")
    alpha = summarize_trace(results)["alpha"]
    assert 0.0 <= alpha <= 1.0
