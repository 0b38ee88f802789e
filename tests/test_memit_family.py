"""MEMIT, AlphaEdit and IntAttn-Edit: the mathematics on tiny models, then a few real SmolLM2 edits."""

import dataclasses

import pytest
import torch

from intattn_tl.data.records import EditRecord
from intattn_tl.edit.transaction import EditError, EditState
from intattn_tl.api import edit
from intattn_tl.config.hparams import HPARAMS_DIR, HparamsError, load_hparams
from intattn_tl.edit.keys import mlp_keys, resid_post
from intattn_tl.edit import chain
from intattn_tl.methods.alphaedit import AlphaEditHparams
from intattn_tl.methods.intattn import IntAttnHparams
from intattn_tl.methods.memit import MEMITHparams
from intattn_tl.edit.chain import target_hparams, to_module_space
from intattn_tl.edit.solve import nullspace_projector

REC = [EditRecord(id="t/0", prompt="The capital of Spain is", subject="Spain", target_new="Rome", ground_truth=("Madrid",)),
       EditRecord(id="t/1", prompt="Ada Lovelace was born in", subject="Ada Lovelace", target_new="Paris", ground_truth=("London",))]
FAST = dict(mom2_n_samples=256, v_num_grad_steps=5, use_prefixes=False)


def _weights(model):
    return [w.clone() for w in model.spec.w_out + model.spec.w_o]


def _same(model, saved):
    return all(torch.equal(a, b) for a, b in zip(model.spec.w_out + model.spec.w_o, saved))


def test_intattn_with_alpha_zero_is_memit_bit_for_bit(tiny_llama):
    before = _weights(tiny_llama)
    m = edit(tiny_llama, REC, "memit", MEMITHparams(layers=[1, 2], mom2_update_weight=10.0, **FAST))
    after_memit = _weights(tiny_llama)
    m.rollback()
    assert _same(tiny_llama, before)  # rollback is bit-exact
    i = edit(tiny_llama, REC, "intattn", IntAttnHparams(layers=[1, 2], attn_layers=[0, 3], alpha=0.0,
                                                        mom2_update_weight=10.0, **FAST))
    assert _same(tiny_llama, after_memit)
    assert not _same(tiny_llama, before) and set(i.deltas) == {"w_out.1", "w_out.2"}
    i.rollback()
    assert _same(tiny_llama, before)


def test_memit_reaches_the_target_residual(tiny_llama):
    hp = MEMITHparams(layers=[1, 2], mom2_update_weight=1e-3, **FAST)
    from intattn_tl.edit.targets import target_deltas

    h0 = resid_post(tiny_llama, REC, 2, [""])
    z = h0 + target_deltas(tiny_llama, REC, 2, target_hparams(hp), prefixes=[""])
    res = edit(tiny_llama, REC, "memit", hp)
    try:
        h1 = resid_post(tiny_llama, REC, 2, [""])
        assert (h1 - z).norm() < 0.2 * (h0 - z).norm()
        # the chain's account: no post-norm on Llama, so the module change is the residual change at l, and
        # at the top layer (= z) nothing lies between l and z; the chain has built most of z - h0
        top = res.stats["steps"][-1]
        assert top["layer"] == 2 and top["module"] == top["resid@l"]
        assert top["resid@z"] == pytest.approx(top["resid@l"], abs=2e-3)
        assert top["chain"] == pytest.approx(chain.cos_ratio(h1 - h0, z - h0), abs=2e-3)
        assert top["chain"][0] > 0.95
    finally:
        res.rollback()


def test_intattn_edits_both_modules_and_alpha_scales_attention(tiny_llama):
    before = _weights(tiny_llama)
    norms = {}
    for alpha in (0.2, 0.8):
        hp = IntAttnHparams(layers=[2], attn_layers=[1], alpha=alpha, mom2_update_weight=1.0, **FAST)
        res = edit(tiny_llama, REC, "intattn", hp)
        assert set(res.deltas) == {"w_o.1", "w_out.2"} and res.stats["z_layer"] == 2
        norms[alpha] = {k: float(v.norm()) for k, v in res.deltas.items()}
        res.rollback()
    assert _same(tiny_llama, before)
    assert norms[0.8]["w_o.1"] > 2 * norms[0.2]["w_o.1"]
    assert norms[0.8]["w_out.2"] < norms[0.2]["w_out.2"]


def test_intattn_per_chain_targets_sit_at_each_chains_top(tiny_gemma):
    """target_site=per_chain: each chain's own target at its own top module (attention above the MLPs here,
    as traced on Gemma-3); shared: one target at the top, shaped for the module there."""
    base = dict(layers=[1], attn_layers=[2], alpha=0.5, mom2_update_weight=1.0, attn_mom2_update_weight=1.0, **FAST)
    before = _weights(tiny_gemma)
    got = {}
    for site in ("shared", "per_chain"):
        res = edit(tiny_gemma, REC, "intattn", IntAttnHparams(target_site=site, **base))
        got[site] = ([(t["chain"], t["layer"], t["kind"]) for t in res.stats["targets"]],
                     {k: v.clone() for k, v in res.deltas.items()})
        assert set(res.deltas) == {"w_o.2", "w_out.1"}
        res.rollback()
        assert _same(tiny_gemma, before)
    assert got["shared"][0] == [("w_o", 2, "w_o"), ("w_out", 2, "w_o")]
    assert got["per_chain"][0] == [("w_o", 2, "w_o"), ("w_out", 1, "w_out")]
    # the attention chain runs first with the same target either way; the MLP chain's differs
    assert torch.equal(got["shared"][1]["w_o.2"], got["per_chain"][1]["w_o.2"])
    assert not torch.allclose(got["shared"][1]["w_out.1"], got["per_chain"][1]["w_out.1"])
    with pytest.raises(EditError, match="target_site"):
        edit(tiny_gemma, REC, "intattn", IntAttnHparams(target_site="nowhere", **base))
    assert _same(tiny_gemma, before)


def test_nan_update_leaves_weights_untouched(tiny_llama, monkeypatch):
    before = _weights(tiny_llama)
    real = chain.solve_delta
    calls = []

    def poisoned(R, K, C, lam):
        calls.append(1)
        out = real(R, K, C, lam)
        return out * float("nan") if len(calls) == 2 else out  # the first layer was already applied

    monkeypatch.setattr(chain, "solve_delta", poisoned)
    with pytest.raises(EditError, match="not finite"):
        edit(tiny_llama, REC, "memit", MEMITHparams(layers=[1, 2], **FAST))
    assert len(calls) == 2 and _same(tiny_llama, before)


def test_gemma_post_norm_target_is_mapped_through_the_norm(tiny_gemma):
    layer, s = 1, tiny_gemma.spec
    K = mlp_keys(tiny_gemma, REC, layer, [""])
    norm, W = s.family.post_norm("w_out", layer), s.w_out[layer]
    with torch.no_grad():
        o = norm(K @ W.T)
        R = 0.2 * o.norm(dim=-1, keepdim=True) * torch.randn_like(o) / o.shape[-1] ** 0.5
        R_mod = to_module_space(tiny_gemma, "w_out", layer, K, R)
        o_new = norm(K @ W.T + R_mod)
        naive = norm(K @ W.T + R)  # R added before the norm, unmapped
        g = norm(torch.full((1, o.shape[-1]), 1e3))
    want = o + R
    # RMSNorm emits only vectors with rms(y/g) = 1: the mapped update reaches o + R rescaled onto that set.
    assert torch.allclose(o_new, want / (want / g).pow(2).mean(-1, keepdim=True).sqrt(), atol=2e-3)
    assert (torch.nn.functional.cosine_similarity(o_new, want, dim=-1) > 0.9999).all()  # direction exact
    err, err_naive = (o_new - want).norm(dim=-1), (naive - want).norm(dim=-1)
    assert (err < R.norm(dim=-1)).all() and (err < 0.5 * err_naive).all()
    before = _weights(tiny_gemma)
    hp = MEMITHparams(layers=[1, 2], mom2_update_weight=1e-3, **FAST)
    from intattn_tl.edit.chain import targets_at

    h0, delta = targets_at(tiny_gemma, REC, 2, hp, [""])  # MEMIT's own target: emitted through layer 2's norm
    z = h0 + delta
    res = edit(tiny_gemma, REC, "memit", hp)
    h1 = resid_post(tiny_gemma, REC, 2, [""])
    res.rollback()
    assert _same(tiny_gemma, before)
    assert (h1 - z).norm() < 0.5 * (h0 - z).norm()


def test_alphaedit_update_lies_in_the_null_space_and_keeps_preserved_keys(tiny_llama):
    before = _weights(tiny_llama)
    hp = AlphaEditHparams(layers=[2], nullspace_threshold=0.5, L2=1.0, **FAST)
    state = EditState()
    first = edit(tiny_llama, REC[:1], "alphaedit", hp, state)
    C = state.data["second_moments"][("w_out", 2, hp.mom2_n_samples, None, hp.mom2_text)]
    P, dim = nullspace_projector(C, hp.nullspace_threshold)
    assert 0 < dim < C.shape[0] and first.stats["nullspace_dims"] == {2: dim}
    D = first.deltas["w_out.2"].double()
    # D = D P: every corpus direction outside the null space (what P removes) maps to 0.
    assert (D - D @ P).norm() < 1e-4 * D.norm()
    assert set(state.data["alphaedit_preserved"]) == {2}
    k1 = mlp_keys(tiny_llama, REC[:1], 2, [""]).double()
    second = edit(tiny_llama, REC[1:], "alphaedit", hp, state)  # sequential: batch 1's keys are preserved
    moved_kept = (second.deltas["w_out.2"].double() @ k1.T).norm()
    second.rollback()
    fresh = edit(tiny_llama, REC[1:], "alphaedit", hp, EditState(data={"second_moments": state.data["second_moments"]}))
    moved_free = (fresh.deltas["w_out.2"].double() @ k1.T).norm()
    fresh.rollback()
    first.rollback()
    assert _same(tiny_llama, before)
    assert moved_kept < 0.5 * moved_free


def test_bad_inputs_give_clear_errors(tiny_llama, tmp_path):
    before = _weights(tiny_llama)
    with pytest.raises(EditError, match="layers"):
        edit(tiny_llama, REC, "memit", MEMITHparams(layers=[1, 9], **FAST))
    with pytest.raises(EditError, match="attn_layers"):
        edit(tiny_llama, REC, "intattn", IntAttnHparams(layers=[1], attn_layers=[-1], alpha=0.5, **FAST))
    with pytest.raises(EditError, match="alpha"):
        edit(tiny_llama, REC, "intattn", IntAttnHparams(layers=[1], attn_layers=[0], alpha=1.5, **FAST))
    with pytest.raises(EditError, match="order"):
        edit(tiny_llama, REC, "intattn", IntAttnHparams(layers=[1], attn_layers=[0], alpha=0.5, order="up", **FAST))
    with pytest.raises(EditError, match="nullspace_threshold"):
        edit(tiny_llama, REC, "alphaedit", AlphaEditHparams(layers=[1], nullspace_threshold=0, **FAST))
    with pytest.raises(EditError, match="null space is empty"):
        edit(tiny_llama, REC, "alphaedit", AlphaEditHparams(layers=[1], nullspace_threshold=1e-30, **FAST))
    with pytest.raises(HparamsError, match="smollm2-135m"):
        load_hparams("intattn", "tiny-llama", path=HPARAMS_DIR / "intattn" / "smollm2-135m.yaml")
    with pytest.raises(HparamsError, match="unknown"):
        load_hparams("memit", "tiny-llama", {"mom2_update_wieght": 1.0})
    assert _same(tiny_llama, before)


def test_shipped_yaml_files_load_and_validate(smollm_spec_models=("smollm2-135m", "gemma3-270m")):
    for model in smollm_spec_models:
        for method, cls in (("memit", MEMITHparams), ("alphaedit", AlphaEditHparams), ("intattn", IntAttnHparams)):
            hp = load_hparams(method, model)
            assert isinstance(hp, cls) and dataclasses.asdict(hp)["mom2_n_samples"] == 100_000


# ----------------------------------------------------------------------------- real model


def _metrics(model, records, ref):
    from intattn_tl.evaluation.metrics import EvalConfig, evaluate, summarize

    return summarize(evaluate(model, records, EvalConfig(fluency=False, progress=False), locality_ref=ref))


@pytest.mark.real_model
@pytest.mark.parametrize("method", ["memit", "intattn", "alphaedit"])
def test_real_edits_succeed_and_roll_back(smollm, wiki_records, method):
    from intattn_tl.evaluation.metrics import EvalConfig, locality_reference

    records = wiki_records[:5]
    before = _weights(smollm)
    ref = locality_reference(smollm, records, EvalConfig(progress=False))
    pre = _metrics(smollm, records, ref)
    # Small statistics sample (cached after one run); layers and alpha pinned so a new tracing result
    # (model_results/) cannot change what this test measures.
    pinned = {"mom2_n_samples": 20_000, "layers": [3, 4, 5, 6, 7]}
    if method == "intattn":
        pinned.update(attn_layers=[1, 2, 3, 4], alpha=0.3)
    hp = load_hparams(method, smollm.name, pinned)
    res = edit(smollm, records, method, hp)
    try:
        post = _metrics(smollm, records, ref)
    finally:
        res.rollback()
    assert _same(smollm, before)
    print(method, {k: round(post[k], 1) for k in ("edit_succ", "locality")}, "pre", round(pre["edit_succ"], 1))
    assert pre["edit_succ"] < 30
    # measured: memit 86.0 / 49.8, intattn 62.7 / 69.6, alphaedit 96.7 / 34.8 (Edit Succ. / Locality)
    assert post["edit_succ"] > 55
    assert post["locality"] > (25 if method == "alphaedit" else 40)


def test_gemma_dead_norm_channel_is_left_alone(tiny_gemma):
    s = tiny_gemma.spec
    norm, W = s.family.post_norm("w_out", 1), s.w_out[1]
    K = mlp_keys(tiny_gemma, REC, 1, [""])
    saved = norm.weight.detach().clone()
    try:
        with torch.no_grad():
            norm.weight[3] = -1.0  # Gemma's gain is 1 + weight: channel 3 is dead, as in the real weights
            o = norm(K @ W.T)
            R = torch.ones_like(o)
            o_new = norm(K @ W.T + to_module_space(tiny_gemma, "w_out", 1, K, R))
    finally:
        with torch.no_grad():
            norm.weight.copy_(saved)
    assert torch.isfinite(o_new).all() and (o_new[:, 3] == 0).all()
    live = torch.arange(o.shape[-1]) != 3
    assert torch.nn.functional.cosine_similarity(o_new[:, live], (o + R)[:, live], dim=-1).min() > 0.999
