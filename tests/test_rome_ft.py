"""ROME / R-ROME rank-one math, FT-L's constraint and fast path, exact rollback; one real SmolLM2 edit."""

from __future__ import annotations

import pytest
import torch

from intattn_tl.data.records import EditRecord
from intattn_tl.edit.transaction import EditError, EditState, WeightTransaction
from intattn_tl.api import edit
from intattn_tl.edit.keys import mlp_keys
from intattn_tl.methods.ft import FTHparams, _below, _inputs, mlp_change
from intattn_tl.edit.chain import target_hparams
from intattn_tl.methods.r_rome import RROMEHparams
from intattn_tl.methods.rome import ROMEHparams, rank_one, rome_update, value_target
from intattn_tl.edit.targets import logits_from, residual_deltas, target_deltas

FACT = EditRecord(id="made-up", prompt="The capital of Zorbania is", subject="Zorbania", target_new="Quix",
                  ground_truth=("Zorb",))
PREFIXES = ["", "Hi there. "]
TINY = dict(layers=[1], mom2_n_samples=256, v_num_grad_steps=5)


def _params(model) -> dict[str, torch.Tensor]:
    return {n.replace("._original_component", "").replace("_original_component.", ""): p.detach().clone()
            for n, p in model.hf_model.named_parameters()}


def test_rank_one_maps_key_to_value_and_spares_c_orthogonal_keys():
    g = torch.Generator().manual_seed(0)
    W, k, v = torch.randn(6, 9, generator=g), torch.randn(9, generator=g), torch.randn(6, generator=g)
    A = torch.randn(9, 9, generator=g)
    C = A @ A.T + 0.1 * torch.eye(9)
    D = rank_one(W, k, v, C)
    torch.testing.assert_close((W.double() + D) @ k.double(), v.double())
    x = torch.randn(9, generator=g).double()
    u = torch.linalg.solve(C.double(), k.double())
    x = x - (u @ x) / (u @ u) * u  # u^T x = 0: a key the update must leave alone
    torch.testing.assert_close(D @ x, torch.zeros(6, dtype=torch.float64), atol=1e-10, rtol=0)
    with pytest.raises(EditError, match="degenerate"):
        rank_one(W, torch.zeros(9), v, C)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
@pytest.mark.parametrize("consistent", [False, True])
def test_rome_update_hits_value(request, name, consistent):
    model = request.getfixturevalue(name)
    hp = (RROMEHparams if consistent else ROMEHparams)(**TINY)
    state = EditState(data={"prefixes": PREFIXES})
    layer, D, _ = rome_update(model, FACT, hp, state, consistent=consistent)
    delta = target_deltas(model, [FACT], layer, target_hparams(hp), prefixes=PREFIXES, kind="w_out")[0]  # cache hit
    k_bare = mlp_keys(model, [FACT], layer, [""])[0]
    v = value_target(model, layer, k_bare, delta)
    W = model.spec.w_out[layer].double()
    # both solve W k_bare = v*; ROME along C^-1 of the prefix-averaged key, R-ROME along C^-1 k_bare
    torch.testing.assert_close((W + D) @ k_bare.double(), v.double(), atol=1e-4, rtol=1e-4)
    k_dir = k_bare if consistent else mlp_keys(model, [FACT], layer, PREFIXES, "uniform")[0]
    C = state.data["second_moments"][("w_out", layer, hp.mom2_n_samples, None, hp.mom2_text)]
    u = torch.linalg.solve(C, k_dir.double())
    row = D.norm(dim=1).argmax()  # D = r u^T / (u^T k_bare): every row is a multiple of u
    torch.testing.assert_close(D[row] / D[row].norm(), u * torch.sign(D[row] @ u) / u.norm(), atol=1e-6, rtol=1e-5)
    if consistent:  # the block moves the residual by exactly the change the target was optimised as
        norm = model.spec.family.post_norm("w_out", layer) or (lambda x: x)
        with torch.no_grad():
            got = norm(((W + D) @ k_bare.double()).float()) - norm(W.float() @ k_bare)
        want = residual_deltas(model, [FACT], layer, "w_out", delta[None])[0]
        torch.testing.assert_close(got, want, atol=1e-4 * float(want.norm()), rtol=1e-4)


def test_rome_edit_rolls_back_bit_exactly(tiny_llama):
    before = _params(tiny_llama)
    result = edit(tiny_llama, [FACT], "rome", ROMEHparams(**TINY), EditState(data={"prefixes": PREFIXES}))
    assert set(result.deltas) == {"w_out.1"}
    assert not torch.equal(tiny_llama.spec.w_out[1], before["model.layers.1.mlp.down_proj.weight"])
    result.rollback()
    after = _params(tiny_llama)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_rome_refuses_bad_layers(tiny_llama):
    with pytest.raises(EditError, match="exactly one layer"):
        edit(tiny_llama, [FACT], "rome", ROMEHparams(layers=[0, 1]))
    with pytest.raises(EditError, match="invalid"):
        edit(tiny_llama, [FACT], "r-rome", RROMEHparams(layers=[7]))
    with pytest.raises(EditError, match="exactly one layer"):
        edit(tiny_llama, [FACT], "ft", FTHparams(layers=[1, 2]))


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_ft_fast_path_equals_edited_model(request, name):
    model = request.getfixturevalue(name)
    ids, _ = _inputs(model, FACT)
    k, h = _below(model, ids, 1)
    dW = 0.05 * torch.randn(model.spec.w_out[1].shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = logits_from(model, h + mlp_change(model, 1, k, dW), 1)
    tx = WeightTransaction(model)
    tx.update("w_out", 1, dW)
    try:
        with torch.no_grad():
            slow = model.bridge(ids)
    finally:
        tx.rollback()
    assert (slow - model.bridge(ids)).abs().max() > 1e-3
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_ft_changes_one_layer_within_constraint(tiny_llama):
    before = _params(tiny_llama)
    hp = FTHparams(layers=[2], lr=1e-2, num_steps=10, norm_constraint=2e-3)
    result = edit(tiny_llama, [FACT], "ft", hp)
    try:
        after = _params(tiny_llama)
        changed = {n for n in before if not torch.equal(before[n], after[n])}
        assert changed == {"model.layers.2.mlp.down_proj.weight"}
        dW = after["model.layers.2.mlp.down_proj.weight"] - before["model.layers.2.mlp.down_proj.weight"]
        assert dW.abs().max() <= 2e-3 * (1 + 1e-5)
        assert dW.abs().max() > 1e-3  # it did move
        assert result.stats["loss_last"] < result.stats["loss_first"]
    finally:
        result.rollback()
    assert all(torch.equal(before[n], p) for n, p in _params(tiny_llama).items())


# ----------------------------------------------------------------------------- real model


def _teacher_forced(model, record) -> tuple[float, list[int], list[int]]:
    """(mean probability of target_new's tokens, argmax tokens, target tokens) after the bare prompt."""
    from intattn_tl.model.tokens import answer_ids, prompt_ids

    tok = model.tokenizer
    head, ans = prompt_ids(tok, record.prompt), answer_ids(tok, record.prompt, record.target_new)
    with torch.no_grad():
        logits = model.bridge(torch.tensor([head + ans[:-1]]))[0, len(head) - 1:]
    probs = torch.softmax(logits.float(), -1)[torch.arange(len(ans)), ans]
    return float(probs.mean()), logits.argmax(-1).tolist(), ans


@pytest.mark.real_model
@pytest.mark.parametrize("method", ["rome", "r-rome"])
def test_real_rome_edit_succeeds_and_rolls_back(smollm, wiki_records, method):
    from intattn_tl.config.hparams import load_hparams

    record = wiki_records[0]
    before = _params(smollm)
    p0, _, _ = _teacher_forced(smollm, record)
    hp = load_hparams(method, "smollm2-135m", {"mom2_n_samples": 20_000})
    result = edit(smollm, [record], method, hp)
    try:
        p1, argmax, ans = _teacher_forced(smollm, record)
        assert argmax == ans and p1 > 0.5 > p0
    finally:
        result.rollback()
    after = _params(smollm)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_bfloat16_edits_round_once_not_once_per_edit():
    # Each update is 0.1 % of the weight, under half a bfloat16 ulp: added to the bf16 weight one by one,
    # every one of them would be rounded away. The transaction keeps the float32 sum (shared across the
    # transactions of one EditState) and writes it rounded once, so 100 of them move the weight by ≈ 10 %.
    from intattn_tl.model.load import load_model

    model = load_model("tiny-llama", dtype=torch.bfloat16)
    w = model.spec.w_out[1]
    original = w.detach().clone()
    step = 1e-3 * original.float()
    assert torch.equal((original.float() + step).to(torch.bfloat16), original)  # one step alone: lost
    exact, expected = {}, original.float()
    first, second = WeightTransaction(model, exact=exact), WeightTransaction(model, exact=exact)
    for tx in (first, second):
        for _ in range(50):
            tx.update("w_out", 1, step)
            expected = expected + step
    assert torch.equal(w, expected.to(torch.bfloat16))
    moved = (w.float() / original.float())[original.abs() > 1e-3]
    assert moved.min() > 1.08 and moved.max() < 1.12
    assert second.deltas[("w_out", 1)].dtype == torch.float32
    second.rollback()
    first.rollback()
    assert torch.equal(w, original)
    # a weight changed outside the transactions: its float32 copy is stale and is not used
    tx = WeightTransaction(model, exact=exact)
    tx.update("w_out", 1, torch.zeros_like(step))
    assert torch.equal(w, original)
    tx.rollback()


def test_assign_sets_a_weight_bit_for_bit_and_carries_the_float32_value():
    # a resumed sequence puts its saved weights back with `assign`: the value exactly (w + (v - w) can be off
    # by an ulp), rolled back exactly, and on bf16 the float32 value the next updates add to
    from intattn_tl.model.load import load_model

    model = load_model("tiny-llama", dtype=torch.bfloat16)
    w = model.spec.w_out[1]
    original = w.detach().clone()
    exact = original.float() * 1.01 + 1e-4
    tx = WeightTransaction(model, exact={})
    tx.assign("w_out", 1, exact.to(torch.bfloat16), exact)
    assert torch.equal(w, exact.to(torch.bfloat16))
    step = 1e-3 * original.float()
    tx.update("w_out", 1, step)
    assert torch.equal(w, (exact + step).to(torch.bfloat16))  # added to the carried float32 value, not to w
    with pytest.raises(EditError, match="cannot replace"):
        tx.assign("w_out", 1, exact)  # float32 onto a bf16 weight: refused, nothing changed
    assert torch.equal(w, (exact + step).to(torch.bfloat16))
    tx.rollback()
    assert torch.equal(w, original)


def test_ft_on_bfloat16_optimises_a_float32_change():
    # FT's dW lives in float32 (Adam's small steps on bfloat16 values would round away); the edit is then
    # written into the bfloat16 weight rounded once, and rolls back exactly
    from intattn_tl.model.load import load_model

    model = load_model("tiny-llama", dtype=torch.bfloat16)
    before = model.spec.w_out[2].detach().clone()
    result = edit(model, [FACT], "ft", FTHparams(layers=[2], lr=1e-2, num_steps=5, norm_constraint=5e-3))
    dW = result.tx.deltas[("w_out", 2)]
    assert dW.dtype == torch.float32 and dW.abs().max() > 0
    assert torch.equal(model.spec.w_out[2], (before.float() + dW).to(torch.bfloat16))
    result.rollback()
    assert torch.equal(model.spec.w_out[2], before)


def test_rome_sequence_can_size_targets_by_the_unedited_weight(tiny_gemma):
    # v_scale_reference="unedited": the EditState keeps W_out as the sequence found it, and every later target's
    # step and clamp are sized by it; the first edit is the same either way; a bad value is refused up front
    other = EditRecord(id="o", prompt="The river of Quomia is", subject="Quomia", target_new="Vel", ground_truth=("x",))
    before = _params(tiny_gemma)
    runs = {}
    for ref in ("current", "unedited"):
        hp = ROMEHparams(**TINY, v_scale_reference=ref)
        state = EditState(data={"prefixes": PREFIXES})
        first = edit(tiny_gemma, [FACT], method="rome", hparams=hp, state=state)
        second = edit(tiny_gemma, [other], method="rome", hparams=hp, state=state)
        runs[ref] = (first.deltas["w_out.1"].clone(), second.stats["target_norm"], state.data.get("unedited_weights"))
        second.rollback()
        first.rollback()
    assert all(torch.equal(p, before[n]) for n, p in _params(tiny_gemma).items())
    assert torch.equal(runs["current"][0], runs["unedited"][0])  # nothing edited yet: the same first edit
    assert runs["current"][2] is None
    kept = runs["unedited"][2][("w_out", 1)]
    assert torch.equal(kept, tiny_gemma.spec.w_out[1].float())  # the weight before the first edit
    assert runs["current"][1] != runs["unedited"][1]  # the second target is sized differently
    with pytest.raises(EditError, match="v_scale_reference"):
        edit(tiny_gemma, [FACT], method="rome", hparams=ROMEHparams(**TINY, v_scale_reference="latest"))
