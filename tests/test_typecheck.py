"""The run-time shape checking switch (`pytest --typecheck` / INTATTN_TYPECHECK=1, tests/conftest.py).

With it on, jaxtyping's import hook has decorated every function of intattn_tl with beartype, so a tensor
whose shape contradicts an annotation is refused at the call; with it off nothing is checked. Both branches
run in whichever mode the suite runs, so each pass proves its own mode.
"""

from __future__ import annotations

import pytest
import torch
from jaxtyping import TypeCheckError

from intattn_tl.edit.chain import cos_ratio
from intattn_tl.methods.rome import rank_one


def test_a_shape_that_contradicts_an_annotation_is_refused_only_when_checking(request):
    # cos_ratio(real: "n d", want: "n d"): n = 3 against n = 1 broadcasts in torch, so only the check can object
    real, want = torch.ones(3, 4), torch.ones(1, 4)
    if request.config.intattn_typecheck:
        assert hasattr(cos_ratio, "__wrapped__"), "the import hook did not decorate intattn_tl"
        with pytest.raises(TypeCheckError, match="want"):
            cos_ratio(real, want)
    else:
        assert not hasattr(cos_ratio, "__wrapped__")
        assert cos_ratio(real, want) == (1.0, 1.0)


def test_dimension_names_bind_across_arguments_and_return(request):
    # rank_one(W: "d_out d_in", k: "d_in", v: "d_out"): a v of the wrong length fails the annotation, not torch
    W, k = torch.eye(3), torch.tensor([1.0, 0.0, 0.0])
    assert rank_one(W, k, torch.tensor([2.0, 0.0, 0.0]), None)[0, 0] == 1.0  # a right call passes either way
    if request.config.intattn_typecheck:
        with pytest.raises(TypeCheckError, match="d_out"):
            rank_one(W, k, torch.tensor([2.0]), None)
    else:
        assert rank_one(W, k, torch.tensor([2.0]), None).shape == (3, 3)  # broadcast silently


def test_unchecked_switches_checking_off_inside_only(request, unchecked):
    # a test reaches a function's own error for bad input (what a user, who runs unchecked, sees) this way
    with unchecked():
        assert cos_ratio(torch.ones(3, 4), torch.ones(1, 4)) == (1.0, 1.0)
    if request.config.intattn_typecheck:
        with pytest.raises(TypeCheckError):
            cos_ratio(torch.ones(3, 4), torch.ones(1, 4))
