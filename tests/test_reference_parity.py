"""Parity with the reference library (EasyEdit, unmodified) on the real Qwen2.5-Coder-0.5B.

The reference's inputs and outputs are in tests/fixtures/reference/ (README in each folder): its context
templates (injected here, since its sampled ones cannot be regenerated), its statistics text rule (our
"documents" cut over WikiText-2 with mom2_n_samples=50000 reproduces its 337 paragraphs), ΔW of each edited
matrix projected on a fixed probe P, ROME's rank-one factors, and its per-record KnowEdit metrics.
`pytest tests/test_reference_parity.py -s` prints the measured differences.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from intattn_tl.edit.covariance import document_tokens, documents, second_moments
from intattn_tl.data.records import load_corpus, load_edits
from intattn_tl.edit.transaction import EditState
from intattn_tl.api import edit
from intattn_tl.evaluation.metrics import EvalConfig, evaluate, locality_reference
from intattn_tl.edit.keys import mlp_keys
from intattn_tl.methods.memit import MEMITHparams
from intattn_tl.methods.rome import ROMEHparams, rome_update

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
MODEL = "qwen2.5-coder-0.5b"
STATS_TOKENS = 50_000  # the reference's rule: paragraphs in order until 50000 tokens
TOLERANCE = 1e-3  # relative, per layer / per factor
# MEMIT's target values agree with the reference's to 0.7-2.7e-4 per record (float noise of the 25 Adam steps:
# another torch build, the batched suffix-only forward); layers 1, 2, 4, 5 then agree to 2-4e-4, but layer 3's
# solve amplifies it to 3.7e-3 (cosine 0.99999), measured on 2026-12-06. Its bound is that, with room.
MEMIT_TOLERANCE = 5e-3
# ROME's targets all sit on the clamp (|delta| = 4 |W k_bare| to 1e-6), where projected Adam with the reference's
# absolute step (0.5 per coordinate, ~15 in norm against a radius of 25-34) turns float noise into direction:
# records 0 and 2 agree to 1e-4, record 1's target to cosine 0.99925 (3.9e-2 relative), measured on 2026-12-06.
ROME_TOLERANCE = 5e-2


def _fixture(name: str) -> tuple[dict, dict]:
    folder = FIXTURES / f"easyedit-{name}-qwen2.5-coder-0.5b"
    npz = np.load(folder / "reference.npz")
    return json.loads((folder / "reference.json").read_text()), {k: torch.from_numpy(npz[k]).double() for k in npz}


def _probe() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).standard_normal((4864, 32)).astype(np.float32)).double()


def _prefixes(templates: list[str]) -> list[str]:
    assert all(t.endswith("{}") for t in templates)
    return [t[:-2] for t in templates]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _common_hparams(ref: dict) -> dict:
    h = ref["hparams"]
    return dict(v_lr=h["v_lr"], v_lr_units="absolute", v_num_grad_steps=h["v_num_grad_steps"],
                v_weight_decay=h["v_weight_decay"], clamp_norm_factor=float(h["clamp_norm_factor"]),
                kl_factor=h["kl_factor"], mom2_n_samples=STATS_TOKENS, mom2_text="documents")


def _kind_means(result: dict, group: str) -> dict[str, float]:
    return {k.removesuffix("_acc"): float(np.mean(v)) for k, v in result.get(group, {}).items() if v}


def _check_metrics(rows: list[dict], reference: list[dict], stage: str) -> None:
    """Every per-record metric the reference reports equals ours (token accuracies are fractions of a few
    answer tokens: one different argmax would show)."""
    for row, case in zip(rows, reference):
        got = case[stage]
        assert math.isclose(row["edit_succ"], float(np.mean(got["rewrite_acc"])), abs_tol=1e-9), (row["id"], stage)
        for group in ("portability", "locality"):
            ours = {k.split(".", 1)[1].lower(): v for k, v in row.items() if k.startswith(group + ".")}
            theirs = {k.lower(): v for k, v in _kind_means(got, group).items()}  # the runner writes "reasoning"
            assert set(theirs) <= set(ours), (row["id"], stage, group, sorted(theirs), sorted(ours))
            for kind, value in theirs.items():
                assert math.isclose(ours[kind], value, abs_tol=1e-9), (row["id"], stage, group, kind, ours[kind], value)


@pytest.fixture(scope="module")
def qwen():
    from intattn_tl.model.load import load_model

    return load_model(MODEL)


@pytest.fixture(scope="module")
def records():
    return load_edits("wiki_counterfact", limit=10)


def test_statistics_text_is_the_references(qwen):
    ref, _ = _fixture("memit")
    rule = ref["statistics_text"]
    seqs = document_tokens(qwen.tokenizer, [load_corpus()], STATS_TOKENS)
    docs = documents([load_corpus()])[: len(seqs)]
    assert len(seqs) == rule["paragraphs"]
    assert hashlib.sha256("\n".join(docs).encode()).hexdigest() == rule["sha256_of_joined_paragraphs"]


def test_memit_matches_the_reference(qwen, records):
    ref, arrays = _fixture("memit")
    layers = ref["hparams"]["layers"]
    hp = MEMITHparams(layers=layers, mom2_update_weight=ref["hparams"]["mom2_update_weight"], **_common_hparams(ref))
    C = second_moments(qwen, [("w_out", layer) for layer in layers], STATS_TOKENS, text="documents")
    for layer in layers:
        diag, want = C[("w_out", layer)].diagonal(), arrays[f"cov_diag_layer{layer}"]
        print(f"statistics layer {layer}: diagonal relative difference {_rel(diag, want):.2e}")
        assert _rel(diag, want) < 1e-4

    state = EditState(data={"prefixes": [p for group in ref["context_templates"] for p in _prefixes(group)]})
    loc_ref = locality_reference(qwen, records)
    cfg = EvalConfig(fluency=False, progress=False)
    pre = evaluate(qwen, records, cfg, locality_ref=loc_ref)
    result = edit(qwen, records, "memit", hp, state)
    try:
        post = evaluate(qwen, records, cfg, locality_ref=loc_ref)
        P = _probe()
        rel, cos = {}, {}
        for layer in layers:
            ours = result.deltas[f"w_out.{layer}"].double() @ P
            want = arrays[f"dW_P_layer{layer}"]
            rel[layer], cos[layer] = _rel(ours, want), float(torch.nn.functional.cosine_similarity(
                ours.flatten(), want.flatten(), dim=0))
            print(f"MEMIT layer {layer}: |dW P - ref| / |ref| = {rel[layer]:.2e}, cosine {cos[layer]:.7f}")
        assert all(r < MEMIT_TOLERANCE for r in rel.values()) and all(c > 0.9999 for c in cos.values())
        assert sorted(rel.values())[len(rel) // 2] < TOLERANCE  # the median layer within 1e-3
    finally:
        result.rollback()
    _check_metrics(pre, ref["metrics_per_record"], "pre")
    _check_metrics(post, ref["metrics_per_record"], "post")


def test_rome_matches_the_reference(qwen, records):
    ref, arrays = _fixture("rome")
    (layer,) = ref["hparams"]["layers"]
    hp = ROMEHparams(layers=[layer], mom2_adjustment=True, **_common_hparams(ref))
    prefixes = _prefixes(ref["context_templates"])
    P = _probe()
    cases = records[:3]
    cfg = EvalConfig(fluency=False, progress=False)
    loc_ref = locality_reference(qwen, cases)
    pre, post, rel = evaluate(qwen, cases, cfg, locality_ref=loc_ref), [], []
    for i, record in enumerate(cases):
        state = EditState(data={"prefixes": prefixes})  # each record a single edit of the unedited model
        _, D, _ = rome_update(qwen, record, hp, state, consistent=False)
        k_bare = mlp_keys(qwen, [record], layer, [""])[0].double()
        assert _rel(k_bare, arrays[f"k_bare_record{i}"]) < 1e-5  # the same key up to float noise
        assert _rel(qwen.spec.w_out[layer].double() @ k_bare, arrays[f"wk_bare_record{i}"]) < 1e-5
        left, right = arrays[f"left_record{i}"], arrays[f"right_record{i}"]  # ΔW = outer(right, left), |left| = 1
        our_right = D @ left  # D = outer(r, u) with u parallel to left: D left = the reference's right
        our_left = D.T @ our_right / our_right.norm() ** 2
        print(f"ROME record {i}: left {_rel(our_left, left):.2e}, right {_rel(our_right, right):.2e}, "
              f"dW P {_rel(D @ P, arrays[f'dW_P_record{i}']):.2e}")
        assert _rel(our_left, left) < TOLERANCE  # the update's direction in key space: C^-1 of the averaged key
        rel.append(max(_rel(our_right, right), _rel(D @ P, arrays[f"dW_P_record{i}"])))
        result = edit(qwen, [record], "rome", hp, EditState(data={"prefixes": prefixes}))  # targets: cache hits
        try:
            post += evaluate(qwen, [record], cfg, locality_ref=loc_ref)
        finally:
            result.rollback()
    assert max(rel) < ROME_TOLERANCE and sorted(rel)[len(rel) // 2] < TOLERANCE
    _check_metrics(pre, ref["metrics_per_record"], "pre")
    _check_metrics(post, ref["metrics_per_record"], "post")
