"""Causal tracing: the fast grid equals the per-site loop, inputs are checked, alpha arithmetic is right."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from intattn_tl.locate.balance import CLASSES, aggregate, balance_factor, critical_layers, summarize, token_classes
from intattn_tl.model.tokens import TokenError, answer_ids
from intattn_tl.locate.tracing import (
    KINDS, TraceError, embedding_std, subject_noise, trace_dataset, trace_fact, trace_fact_loop, window_layers,
)

FACT = ("I Paris is", "Paris", "France")  # byte tokens: subject at 2..7, not at the start; answer multi-token


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gemma"])
def tiny(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def both(tiny):
    kw = dict(n_samples=3, window=3, seed=1)
    return trace_fact(tiny, *FACT, **kw), trace_fact_loop(tiny, *FACT, **kw)


def test_fast_grid_equals_per_site_loop(both):
    fast, loop = both
    assert fast.prob.shape == (len(KINDS), 4, len(fast.tokens)) == loop.prob.shape
    np.testing.assert_allclose(fast.prob, loop.prob, atol=1e-6)
    np.testing.assert_allclose(fast.logit_diff, loop.logit_diff, atol=2e-5)
    assert fast.contrast_token == loop.contrast_token
    assert fast.ld_corrupt == pytest.approx(loop.ld_corrupt, abs=1e-5)
    # the grid is not trivially constant: restorations move the answer
    assert np.ptp(fast.logit_diff) > 1e-2


def test_token_batching_does_not_change_numbers(tiny, both):
    one_token_per_batch = trace_fact(tiny, *FACT, n_samples=3, window=3, seed=1, max_rows=1)
    np.testing.assert_allclose(one_token_per_batch.logit_diff, both[0].logit_diff, atol=2e-5)


def test_key_tokens_restore_only_the_last_subject_token_and_the_last_token(tiny, both):
    kw = dict(n_samples=3, window=3, seed=1, key_tokens=True)
    for full, key in zip(both, (trace_fact(tiny, *FACT, **kw), trace_fact_loop(tiny, *FACT, **kw))):
        s0, s1 = key.subject_span
        keep = [s1 - 1, len(key.tokens) - 1]
        np.testing.assert_allclose(key.logit_diff[:, :, keep], full.logit_diff[:, :, keep], atol=2e-5)
        others = [t for t in range(s0, len(key.tokens)) if t not in keep]
        assert others and np.isnan(key.logit_diff[:, :, others]).all()
        at = [CLASSES.index("last subject"), CLASSES.index("last")]  # what α and the layer choice read
        np.testing.assert_allclose(aggregate([key], "prob")["mean"][..., at], aggregate([full], "prob")["mean"][..., at],
                                   atol=1e-6)


def test_restorations_before_subject_are_noops_and_resid_at_last_token_is_clean(both):
    fast, loop = both
    s0 = fast.subject_span[0]
    np.testing.assert_allclose(loop.logit_diff[:, :, :s0], fast.ld_corrupt, atol=2e-5)
    # restoring the whole residual stream at the last token of the last layer gives the clean logits
    assert fast.logit_diff[fast.kind("resid"), -1, -1] == pytest.approx(fast.ld_clean, abs=1e-5)
    if fast.ld_clean > fast.ld_corrupt + 1e-3:
        assert fast.ld_effect[fast.kind("resid"), -1, -1] == pytest.approx(1.0, abs=1e-3)
    else:  # the noise did not lower LD: the normalized effect is undefined, and says so
        assert np.isnan(fast.ld_effect).all()


def test_noise_is_seeded_and_scaled(tiny_llama):
    a, b = subject_noise(4, 2, 8, 2.0, seed=3), subject_noise(4, 2, 8, 2.0, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, subject_noise(4, 2, 8, 2.0, seed=4))
    big = subject_noise(2000, 1, 64, 2.0, seed=0)
    assert big.std().item() == pytest.approx(2.0, rel=0.02)
    w = tiny_llama.hf_model.get_input_embeddings().weight
    assert embedding_std(tiny_llama) == pytest.approx(w.double().std(unbiased=False).item(), rel=1e-6)


def test_same_seed_same_result_other_seed_differs(tiny_llama):
    kw = dict(n_samples=2, window=2, kinds=("mlp",))
    a, b, c = (trace_fact(tiny_llama, *FACT, seed=s, **kw) for s in (0, 0, 1))
    assert np.array_equal(a.logit_diff, b.logit_diff)
    assert not np.allclose(a.logit_diff, c.logit_diff)


def test_window_edges():
    assert list(window_layers(0, 10, 30)) == list(range(0, 5))
    assert list(window_layers(12, 10, 30)) == list(range(7, 17))
    assert list(window_layers(29, 10, 30)) == list(range(24, 30))
    assert list(window_layers(3, 1, 30)) == [3]
    assert list(window_layers(3, 3, 30)) == [2, 3, 4]
    with pytest.raises(TraceError, match="window"):
        window_layers(0, 0, 30)


def test_bad_input_is_named(tiny_llama):
    with pytest.raises(TokenError, match="Berlin"):
        trace_fact(tiny_llama, "Paris is in", "Berlin", "France", n_samples=1)
    with pytest.raises(TraceError, match="n_samples"):
        trace_fact(tiny_llama, *FACT, n_samples=0)
    with pytest.raises(TraceError, match="kinds"):
        trace_fact(tiny_llama, *FACT, kinds=("heads",))
    with pytest.raises(TraceError, match="answer token itself"):
        r = trace_fact(tiny_llama, *FACT, n_samples=1, kinds=("resid",))
        trace_fact(tiny_llama, *FACT, n_samples=1, kinds=("resid",), contrast=r.answer_token)


def test_multi_token_answer_traces_first_token_and_reports_unknown(tiny_llama):
    r = trace_fact(tiny_llama, *FACT, n_samples=1, kinds=("resid",))
    ids = answer_ids(tiny_llama.tokenizer, FACT[0], FACT[2])
    assert len(ids) > 1 and r.answer_token == ids[0]
    # a random tiny model does not "know" the fact; the result says so instead of failing
    assert r.known == (r.answer_token == int(tiny_llama.bridge(torch.tensor([tiny_llama.tokenizer(FACT[0])["input_ids"]]))[0, -1].argmax()))


def test_token_classes_follow_rome():
    c = token_classes((2, 5), 9)
    assert c == {"first subject": [2], "middle subject": [3], "last subject": [4], "first subsequent": [5],
                 "further": [6, 7], "last": [8]}
    single = token_classes((0, 1), 3)
    assert single["first subject"] == single["last subject"] == [0] and single["middle subject"] == []


def test_alpha_arithmetic_and_layer_choice():
    attn = np.array([0.1, 0.5, 0.4, 0.0, 0.0, 0.0])
    mlp = np.array([0.0, 0.0, 0.2, 0.6, 0.6, 0.1])
    assert critical_layers(attn, 2) == [1, 2]
    assert critical_layers(mlp, 3) == [2, 3, 4]
    assert balance_factor(attn, mlp, [1, 2], [3, 4]) == pytest.approx(0.9 / (0.9 + 1.2))
    assert balance_factor(-attn, mlp, [1, 2], [3, 4]) == 0.0  # a harmful module gets no share
    with pytest.raises(TraceError, match="attn_layers"):
        balance_factor(attn, mlp, [7], [3])
    with pytest.raises(TraceError, match="width"):
        critical_layers(attn, 7)


def test_aggregate_and_summary(both, tiny):
    fast, _ = both
    agg = aggregate([fast, fast], min_ld_gap=-np.inf)  # keep it even if the noise did not lower LD (NaN effects)
    assert agg["mean"].shape == (len(KINDS), 4, len(CLASSES))
    last = CLASSES.index("last")
    np.testing.assert_allclose(agg["mean"][:, :, last], fast.ld_effect[:, :, -1], atol=1e-6)
    signal = not np.isnan(fast.ld_effect).all()  # a random model's noise may not lower LD at all
    assert agg["count"][0, 0, CLASSES.index("middle subject")] == (2 * 3 if signal else 0)  # 3 middle bytes, twice
    try:
        s = summarize([fast], attn_width=2, mlp_width=1, attn_layers=[0], min_ld_gap=-np.inf)
    except TraceError as err:
        assert "undefined" in str(err)
        return
    assert s["attn_layers"] == [0] and len(s["mlp_layers"]) == 1 and 0.0 <= s["alpha"] <= 1.0


def test_ld_average_leaves_out_facts_the_noise_barely_moves(both):
    import dataclasses

    fast, _ = both
    strong = dataclasses.replace(fast, ld_clean=fast.ld_corrupt + 4.0)
    weak = dataclasses.replace(fast, ld_clean=fast.ld_corrupt + 0.05)  # normalized LD x80: would swamp the mean
    ld = aggregate([strong, weak], "ld", min_ld_gap=1.0)
    assert ld["n_facts"] == 1
    np.testing.assert_allclose(ld["mean"], aggregate([strong], "ld")["mean"], equal_nan=True)
    assert aggregate([strong, weak], "prob")["n_facts"] == 2  # probabilities keep every fact
    with pytest.raises(TraceError, match="min_ld_gap"):
        aggregate([weak], "ld", min_ld_gap=1.0)


def test_trace_dataset_reports_skips(tiny_llama):
    from intattn_tl.data.records import KnownFact

    facts = [KnownFact("a", FACT[0], FACT[1], FACT[2], "P1"), KnownFact("b", "Rome is", "Milan", "Italy", "P1")]
    out = trace_dataset(tiny_llama, facts, known_only=False, progress=False, n_samples=1, kinds=("resid",))
    assert len(out.results) == 1 and out.seen == 2
    assert out.skipped[0][0] == "b" and "Milan" in out.skipped[0][1]
    known = trace_dataset(tiny_llama, facts[:1], known_only=True, progress=False, n_samples=1, kinds=("resid",))
    assert len(known.results) + len(known.skipped) == 1


@pytest.mark.real_model
def test_real_model_traces_a_known_fact(smollm, tmp_path):
    r = trace_fact(smollm, "The Eiffel Tower is located in the city of", "Eiffel Tower", "Paris",
                   n_samples=3, kinds=("resid", "mlp_window"))
    assert r.known and r.p_clean > r.p_corrupt and r.subject_span[0] == 1
    # the whole clean residual at the last token after the last layer is the clean run
    assert r.logit_diff[r.kind("resid"), -1, -1] == pytest.approx(r.ld_clean, abs=1e-4)
    assert np.isfinite(r.ld_effect).all() and np.ptp(r.ld_effect[r.kind("mlp_window")]) > 0.05
    assert np.allclose(r.logit_diff[:, :, 0], r.ld_corrupt, atol=1e-4)  # "The" precedes the subject: no-op
    assert r.ld_effect[r.kind("resid"), -1, -1] == pytest.approx(1.0, abs=1e-3)


def test_trace_command_writes_outputs(tmp_path, monkeypatch):
    from intattn_tl.cli import main
    from intattn_tl.data.records import KnownFact
    import intattn_tl.data.records as data

    monkeypatch.setattr(data, "load_known_facts", lambda: [KnownFact("0", *FACT, "P1")] * 2)
    monkeypatch.setattr("intattn_tl.locate.tracing.greedy_token", lambda model, prompt: answer_ids(model.tokenizer, FACT[0], FACT[2])[0])
    result = tmp_path / "r.json"
    rc = main(["trace", "--model", "tiny-llama", "--facts", "2", "--out", str(tmp_path), "--samples", "2",
               "--window", "2", "--seed", "2", "--attn-width", "1", "--mlp-width", "2", "--result-file", str(result),
               "--min-ld-gap=-inf"])
    assert rc == 0
    rec = json.loads(result.read_text())
    assert rec["model"] == "tiny-llama" and rec["n_facts"] == 2 and len(rec["mlp_layers"]) == 2
    assert 0 <= rec["alpha"] <= 1
    for name in ("trace.npz", "effects.csv", "fig1_heatmaps.png", "fig2_last_subject.png", "facts.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert np.load(tmp_path / "trace.npz")["ld_mean"].shape == (len(KINDS), 4, len(CLASSES))
    assert (tmp_path / "facts" / "0.npz").exists() and (tmp_path / "facts" / "settings.json").exists()
    # a rerun with other settings into the same folder is refused, not mixed in
    assert main(["trace", "--model", "tiny-llama", "--facts", "2", "--out", str(tmp_path), "--samples", "3",
                 "--no-result-file"]) == 2


def test_store_resumes_and_refuses_other_settings(tiny_llama, tmp_path, monkeypatch):
    from intattn_tl.locate import tracing
    from intattn_tl.data.records import KnownFact

    facts = [KnownFact("a", *FACT, "P1"), KnownFact("b", "I Rome is", "Rome", "Italy", "P1")]
    kw = dict(known_only=False, progress=False, n_samples=2, kinds=("mlp", "attn_window"), window=2, store=tmp_path)
    first = trace_dataset(tiny_llama, facts, **kw)
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["a.npz", "b.npz"]
    (tmp_path / "b.npz").write_bytes(b"not a zip")  # a damaged file is traced again

    calls = []
    real = tracing.trace_fact
    monkeypatch.setattr(tracing, "trace_fact", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    again = trace_dataset(tiny_llama, facts, **kw)
    assert calls == ["I Rome is"]  # only the damaged fact was recomputed
    for x, y in zip(first.results, again.results):
        assert x.kinds == y.kinds and x.subject_span == y.subject_span and x.tokens == y.tokens
        np.testing.assert_array_equal(x.logit_diff, y.logit_diff)
    with pytest.raises(TraceError, match="other settings"):
        trace_dataset(tiny_llama, facts, **{**kw, "n_samples": 3})


def test_kind_subsets_equal_the_full_grid(tiny_llama):
    part = trace_fact(tiny_llama, *FACT, n_samples=3, window=3, seed=1, kinds=("mlp_window", "resid"))
    full = trace_fact(tiny_llama, *FACT, n_samples=3, window=3, seed=1)
    for kind in part.kinds:
        np.testing.assert_allclose(part.logit_diff[part.kind(kind)], full.logit_diff[full.kind(kind)], atol=2e-5)


def test_trace_command_on_your_own_facts(tmp_path, capsys):
    from intattn_tl.cli import main

    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps({"prompt": "Bobo plays the", "subject": "Bobo", "attribute": "oboe"}) + "\n")
    rc = main(["trace", "--model", "tiny-llama", "--fact", FACT[0], FACT[1], "--facts-file", str(facts),
               "--out", str(tmp_path / "out"), "--samples", "2", "--window", "2", "--kinds", "attn,mlp",
               "--attn-width", "1", "--mlp-width", "1", "--min-ld-gap=-inf"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "fact fact-0:" in out and "'oboe'" in out  # the first fact's answer is the model's own; the file's is kept
    assert sorted(p.name for p in (tmp_path / "out" / "facts").glob("*.npz")) == ["fact-0.npz", "fact-1.npz"]
    # a fact whose subject is not in its prompt, and own facts with --install-defaults, are refused before work
    import intattn_tl.model.load as models

    real_load = models.load_model
    models.load_model = lambda *a, **k: pytest.fail("the model loaded before the facts were checked")
    try:
        assert main(["trace", "--model", "tiny-llama", "--fact", "Some prompt", "Nobody", "--out", str(tmp_path / "x")]) == 2
    finally:
        models.load_model = real_load
    assert "does not occur in prompt" in capsys.readouterr().err
    assert main(["trace", "--model", "tiny-llama", "--fact", FACT[0], FACT[1], "--install-defaults",
                 "--out", str(tmp_path / "y")]) == 2
