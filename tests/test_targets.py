"""Target values: optimisation reaches the target, disk cache, post-norm map (partial forwards: test_conformance)."""

from __future__ import annotations

import pytest
import torch

from intattn_tl.data.records import EditRecord
from intattn_tl.model.families.gemma3 import norm_gain, prenorm_target
from intattn_tl.edit.targets import (
    TargetError, TargetHparams, _batch, _cache_path, _length_groups, injected_accuracy, logits_from, module_outputs, optimize_deltas, residual_at, residual_deltas, step_scale, target_deltas,
)
from intattn_tl.model.tokens import answer_ids, prompt_ids, subject_span

FACT = EditRecord(id="made-up", prompt="The capital of Zorbania is", subject="Zorbania", target_new="Quix",
                  ground_truth=("Zorb",))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTATTN_CACHE", str(tmp_path))
    return tmp_path


# partial forward == full forward, for every family: tests/test_conformance.py


def test_length_groups_cover_every_length_once():
    lengths = [2, 3, 3, 3, 4, 4, 5, 7, 7, 9, 10, 11, 13, 24]
    groups = _length_groups(lengths)
    assert [n for n in lengths if sum(lo <= n <= hi for lo, hi in groups) != 1] == []
    assert (24, 24) in groups  # one long row is not padded into a group of short ones
    assert _length_groups([8] * 6 + [3]) == [(3, 8)]  # one short row joins rather than costing a pass
    assert _length_groups([1, 5], waste=0) == [(5, 5), (1, 1)]


def _target_nll(model, record, layer, delta) -> list[float]:
    """Per-token NLL of target_new after the bare prompt with `delta` added at the last subject token."""
    tok = model.tokenizer
    head, ans = prompt_ids(tok, record.prompt), answer_ids(tok, record.prompt, record.target_new)
    s = len(prompt_ids(tok, record.prompt[: record.prompt.index(record.subject) + len(record.subject)])) - 1
    with torch.no_grad():
        resid = residual_at(model, torch.tensor([head + ans[:-1]]), layer).clone()
        resid[0, s] += delta
        logp = torch.log_softmax(logits_from(model, resid, layer)[0, len(head) - 1:], -1)
    return [-float(logp[i, a]) for i, a in enumerate(ans)]


def test_optimisation_lowers_target_loss_tiny(tiny_llama):
    # A random byte-level model: the first target token (" ") is read at the subject position itself and
    # must get much likelier (the final norm bounds the logits); later tokens only see the delta through random attention, so they only
    # have to improve.
    record = EditRecord(id="z", prompt="Tell me of Zorbania", subject="Zorbania", target_new="Q", ground_truth=("x",))
    hp = TargetHparams(v_lr=0.5, v_lr_units="absolute", v_num_grad_steps=30, clamp_norm_factor=20.0)
    delta, stats = optimize_deltas(tiny_llama, [record], 0, hp, ["", "Hi. "])
    before = _target_nll(tiny_llama, record, 0, torch.zeros(tiny_llama.spec.d_model))
    after = _target_nll(tiny_llama, record, 0, delta[0])
    assert after[0] < 0.5 * before[0]
    assert sum(after) < 0.8 * sum(before)
    assert stats["steps"] == 30


@pytest.mark.real_model
def test_optimisation_reaches_made_up_target_smollm(smollm):
    hp = TargetHparams()
    delta, stats = optimize_deltas(smollm, [FACT], 7, hp, ["", "I like tea. "])
    assert float(stats["loss"][0]) < 0.3
    after = _target_nll(smollm, FACT, 7, delta[0])
    assert sum(after) / len(after) < 0.3
    assert sum(_target_nll(smollm, FACT, 7, torch.zeros_like(delta[0]))) > 5


def test_batched_equals_one_by_one(tiny_llama):
    other = EditRecord(id="b", prompt="Bobo plays the", subject="Bobo", target_new="oboe", ground_truth=("x",))
    hp = TargetHparams(v_num_grad_steps=6)
    both, _ = optimize_deltas(tiny_llama, [FACT, other], 2, hp, [""])
    one, _ = optimize_deltas(tiny_llama, [other], 2, hp, [""])
    torch.testing.assert_close(both[1], one[0], atol=1e-4, rtol=1e-4)


def test_cache_hit_identical_and_corrupt_file_recomputed(tiny_llama, cache):
    hp = TargetHparams(v_num_grad_steps=5)
    first = target_deltas(tiny_llama, [FACT], 1, hp, prefixes=[""])
    files = list((cache / "targets-v2").rglob("*.pt"))
    assert len(files) == 1
    assert torch.equal(target_deltas(tiny_llama, [FACT], 1, hp, prefixes=[""]), first)  # hit: identical
    blob = torch.load(files[0], weights_only=True)
    torch.save({**blob, "data": torch.full_like(first[0], 7.0)}, files[0])  # altered content: not trusted
    assert torch.equal(target_deltas(tiny_llama, [FACT], 1, hp, prefixes=[""]), first)
    files[0].write_bytes(b"not a torch file")  # corrupt: recomputed and rewritten
    again = target_deltas(tiny_llama, [FACT], 1, hp, prefixes=[""])
    assert torch.equal(again, first)
    assert torch.equal(torch.load(files[0], weights_only=True)["data"], first[0])
    # the key covers hyperparameters and layer
    assert _cache_path("f", FACT, 1, hp, [""]) != _cache_path("f", FACT, 1, TargetHparams(v_num_grad_steps=6), [""])
    assert _cache_path("f", FACT, 1, hp, [""]) != _cache_path("f", FACT, 2, hp, [""])


def test_bad_arguments(tiny_llama):
    with pytest.raises(TargetError, match="layer 9"):
        target_deltas(tiny_llama, [FACT], 9, TargetHparams(), prefixes=[""], use_cache=False)
    with pytest.raises(TargetError, match="prefixes"):
        target_deltas(tiny_llama, [FACT], 1, TargetHparams(), prefixes=[], use_cache=False)
    with pytest.raises(TargetError, match="v_num_grad_steps"):
        TargetHparams(v_num_grad_steps=0)


def test_prenorm_target_inverts_gemma_post_norm(tiny_gemma):
    norm = tiny_gemma.spec.family.post_norm("w_out", 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, tiny_gemma.spec.d_model, generator=g)
    with torch.no_grad():
        y = norm(x)
        torch.testing.assert_close(prenorm_target(norm, x, y), x, atol=1e-5, rtol=1e-5)  # identity at the current output
        want = y + 0.5 * torch.randn(y.shape, generator=g)
        got = norm(prenorm_target(norm, x, want))
    # the closest output the norm can emit: no other input's output is nearer to want
    for _ in range(20):
        other = norm(prenorm_target(norm, x, want) + 0.05 * torch.randn(x.shape, generator=g))
        assert ((got - want).norm(dim=-1) <= (other - want).norm(dim=-1) + 1e-4).all()


def test_prenorm_target_damps_small_gains(tiny_gemma):
    """Dividing by the gain (the naive inverse) blows up small-gain channels; least squares does not."""
    norm = tiny_gemma.spec.family.post_norm("w_out", 1)
    saved = norm.weight.detach().clone()
    g = torch.Generator().manual_seed(1)
    try:
        with torch.no_grad():
            norm.weight[:4] = -0.999  # Gemma's gain is 1 + weight: four channels with gain 0.001
            x = torch.randn(3, tiny_gemma.spec.d_model, generator=g)
            want = norm(x) + torch.randn(3, x.shape[-1], generator=g)
            got = norm(prenorm_target(norm, x, want))
            gain = 1 + norm.weight
            naive = norm(want / gain)  # the direction of want / g, scale left to the norm
    finally:
        with torch.no_grad():
            norm.weight.copy_(saved)
    err, naive_err = (got - want).norm(dim=-1), (naive - want).norm(dim=-1)
    assert (err < 0.5 * naive_err).all() and (err < want.norm(dim=-1)).all()


def test_subject_at_position_zero(tiny_llama):
    # no position precedes the subject in any row: nothing to keep, the suffix is the whole prompt
    record = EditRecord(id="z0", prompt="Z is", subject="Z", target_new="Q", ground_truth=("x",))
    delta, stats = optimize_deltas(tiny_llama, [record], 1, TargetHparams(v_num_grad_steps=3), [""])
    assert torch.isfinite(delta).all() and float(delta.norm()) > 0


def test_resid_rms_step_is_absolute_step_scaled_by_the_residual(tiny_gemma):
    # Adam moves u = delta / rms(h) by ~lr, so "resid_rms" with lr c is "absolute" with lr c * rms(h): the same
    # trajectory, which is what makes one relative step size fit models whose residual norms differ 20x.
    record = EditRecord(id="z", prompt="Tell me of Zorbania", subject="Zorbania", target_new="Q", ground_truth=("x",))
    b = _batch(tiny_gemma, [record], [""])
    h0 = residual_at(tiny_gemma, b.ids, 1)[0, b.subject[0]]
    rms = float(step_scale(TargetHparams(v_lr_units="resid_rms"), h0[None]))
    assert rms > 2  # a Gemma residual (sqrt(d)-scaled embeddings): the two parameterisations really differ
    rel, _ = optimize_deltas(tiny_gemma, [record], 1, TargetHparams(v_lr=0.05, v_lr_units="resid_rms",
                                                                      v_num_grad_steps=8), [""])
    absolute = dict(v_lr_units="absolute", v_num_grad_steps=8)
    ab, _ = optimize_deltas(tiny_gemma, [record], 1, TargetHparams(v_lr=0.05 * rms, **absolute), [""])
    small, _ = optimize_deltas(tiny_gemma, [record], 1, TargetHparams(v_lr=0.05, **absolute), [""])
    torch.testing.assert_close(rel, ab, atol=1e-4 * rms, rtol=1e-3)
    assert float(small.norm()) < 0.5 * float(rel.norm())
    with pytest.raises(TargetError, match="v_lr_units"):
        TargetHparams(v_lr_units="percent")


def test_injected_accuracy_measures_the_targets(tiny_llama):
    records = [EditRecord(id="z", prompt="Tell me of Zorbania", subject="Zorbania", target_new="Q", ground_truth=("x",)),
               EditRecord(id="b", prompt="Bobo plays the", subject="Bobo", target_new="oboe", ground_truth=("x",))]
    zero = injected_accuracy(tiny_llama, records, 1, torch.zeros(2, tiny_llama.spec.d_model))
    delta, _ = optimize_deltas(tiny_llama, records, 1, TargetHparams(v_num_grad_steps=40, clamp_norm_factor=20.0), [""])
    hit = injected_accuracy(tiny_llama, records, 1, delta)
    assert zero.shape == hit.shape == (2,)
    assert float(hit.mean()) > float(zero.mean())
    for r, d, got in zip(records, delta, hit):  # the same number through the partial forward
        tok = tiny_llama.tokenizer
        head, ans = prompt_ids(tok, r.prompt), answer_ids(tok, r.prompt, r.target_new)
        s = len(prompt_ids(tok, r.prompt[: r.prompt.index(r.subject) + len(r.subject)])) - 1
        with torch.no_grad():
            resid = residual_at(tiny_llama, torch.tensor([head + ans[:-1]]), 1).clone()
            resid[0, s] += d
            pred = logits_from(tiny_llama, resid, 1)[0, len(head) - 1:].argmax(-1).tolist()
        assert float(got) == sum(p == a for p, a in zip(pred, ans)) / len(ans)


def test_targets_on_a_bfloat16_model():
    # bfloat16 weights and residuals, float32 master delta: the optimisation runs and the target works
    from intattn_tl.model.load import load_model

    model = load_model("tiny-llama", dtype="bfloat16")
    record = EditRecord(id="z", prompt="Tell me of Zorbania", subject="Zorbania", target_new="Q", ground_truth=("x",))
    hp = TargetHparams(v_lr=0.5, v_lr_units="absolute", v_num_grad_steps=30, clamp_norm_factor=20.0)
    delta, _ = optimize_deltas(model, [record], 0, hp, ["", "Hi. "])
    assert delta.dtype == torch.float32 and torch.isfinite(delta).all()
    zero = injected_accuracy(model, [record], 0, torch.zeros_like(delta))
    assert float(injected_accuracy(model, [record], 0, delta)[0]) > float(zero[0])


def test_output_space_targets_go_through_the_post_norm(tiny_gemma, cache):
    """On Gemma-3 the optimised variable is the change dv of W_out's pre-norm output: its residual change
    is emitted through the norm (so bounded by it), it reaches the target like a residual delta does, and it
    is cached apart from residual targets."""
    record = EditRecord(id="z", prompt="Tell me of Zorbania", subject="Zorbania", target_new="Q", ground_truth=("x",))
    hp = TargetHparams(v_lr=0.5, v_num_grad_steps=30)
    dv = target_deltas(tiny_gemma, [record], 1, hp, prefixes=["", "Hi. "], kind="w_out")
    resid = target_deltas(tiny_gemma, [record], 1, hp, prefixes=["", "Hi. "])
    assert not torch.equal(dv, resid) and len(list((cache / "targets-v2").rglob("*.pt"))) == 2
    d = residual_deltas(tiny_gemma, [record], 1, "w_out", dv)
    b = _batch(tiny_gemma, [record], [""])
    (v,) = module_outputs(tiny_gemma, b.ids[b.first], b.subject[b.first], "w_out", 1)
    with torch.no_grad():
        y = tiny_gemma.spec.family.post_norm("w_out", 1)(v)
        torch.testing.assert_close(d, tiny_gemma.spec.family.post_norm("w_out", 1)(v + dv) - y)
    assert float(d.norm()) <= 2 * float(norm_gain(tiny_gemma.spec.family.post_norm("w_out", 1), v).abs().max()) * v.shape[-1] ** 0.5
    zero = injected_accuracy(tiny_gemma, [record], 1, torch.zeros_like(d))
    assert float(injected_accuracy(tiny_gemma, [record], 1, d)[0]) > float(zero[0])


def test_output_space_targets_are_residual_targets_without_a_post_norm(tiny_llama, cache):
    """Llama-style families: kind= changes nothing (same deltas, same cache file): their numbers stay put."""
    hp = TargetHparams(v_num_grad_steps=5)
    plain = target_deltas(tiny_llama, [FACT], 1, hp, prefixes=[""])
    assert torch.equal(target_deltas(tiny_llama, [FACT], 1, hp, prefixes=[""], kind="w_out"), plain)
    assert len(list((cache / "targets-v2").rglob("*.pt"))) == 1
    assert torch.equal(residual_deltas(tiny_llama, [FACT], 1, "w_out", plain), plain)


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gemma"])
def test_step_and_clamp_can_be_sized_by_the_unedited_weight(family, cache, request):
    """reference=W0: the clamp (and relative step) follow W0's output, not the current W's; with W0 equal
    to the current weight nothing changes. Post-norm (Gemma-3: the module output) and plain residual alike."""
    model = request.getfixturevalue(family)
    record = EditRecord(id="z", prompt="Tell me of Zorbania", subject="Zorbania", target_new="Q", ground_truth=("x",))
    hp = TargetHparams(v_lr=0.5, v_num_grad_steps=20, clamp_norm_factor=0.25, early_stop_loss=1e-9)
    W = model.spec.family.weight("w_out", 1)
    W0 = W.detach().float().clone()
    plain = target_deltas(model, [record], 1, hp, prefixes=[""], kind="w_out")
    same = target_deltas(model, [record], 1, hp, prefixes=[""], kind="w_out", reference=W0)
    assert torch.equal(plain, same)  # a reference equal to the current weight: the same target (a new cache entry)
    with pytest.raises(TargetError, match="kind"):
        target_deltas(model, [record], 1, hp, prefixes=[""], reference=W0)
    b = _batch(model, [record], [""])
    _, v0 = module_outputs(model, b.ids[b.first], b.subject[b.first], "w_out", 1, (W0,))
    # the clamp's size: the module output (post-norm families) or the residual after the block
    size0 = v0 if model.spec.family.output_emitter("w_out", 1) is not None else residual_at(model, b.ids, 1)[b.first, b.subject[b.first]]
    try:
        with torch.no_grad():
            W.mul_(4)  # as if earlier edits had grown the weight
        grown = target_deltas(model, [record], 1, hp, prefixes=[""], kind="w_out")
        kept = target_deltas(model, [record], 1, hp, prefixes=[""], kind="w_out", reference=W0)
        size_now = (residual_at(model, b.ids, 1)[b.first, b.subject[b.first]]
                    if model.spec.family.output_emitter("w_out", 1) is None else 4 * v0)
    finally:
        with torch.no_grad():
            W.copy_(W0.to(W.dtype))
    assert float(kept.norm()) <= 0.25 * float(size0.norm()) * (1 + 1e-4)  # clamped by the unedited size
    assert float(grown.norm()) <= 0.25 * float(size_now.norm()) * (1 + 1e-4)
    assert float(grown.norm()) > 1.5 * float(kept.norm())  # the grown weight's clamp is larger


def test_kl_term_sits_at_the_last_subject_token_of_subject_is_a(tiny_llama):
    record = EditRecord(id="kl", prompt="The capital of Zorbania is", subject="Zorbania", target_new="Quix",
                        ground_truth=("Zorb",))
    tok = tiny_llama.tokenizer
    b = _batch(tiny_llama, [record], ["", "Hi. "])
    (kl_row,) = torch.nonzero(b.kl >= 0)[:, 0].tolist()
    subject_end = subject_span(tok, "Zorbania is a", "Zorbania")[1] - 1
    assert b.kl[kl_row] == b.subject[kl_row] == subject_end  # ROME's / MEMIT's lookup index
    end = _batch(tiny_llama, [record], ["", "Hi. "], kl_position="prompt_end")
    assert end.kl[kl_row] == end.length[kl_row] - 1 > subject_end  # after "is a"
    assert (b.kl[b.kl < 0] == -1).all() and int((b.kl >= 0).sum()) == 1
    with pytest.raises(TargetError, match="kl_position"):
        TargetHparams(kl_position="after")
