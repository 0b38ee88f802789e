"""Per-head tracing: the batched grid equals a one-head-at-a-time hook loop, all heads of a layer equal the
module-level attention restoration, it runs on generic architectures, and the CLI writes its files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from intattn_tl.locate.heads import (
    POSITIONS, HeadTrace, aggregate_heads, concentration, head_outputs, restore_heads, summarize_heads, trace_heads,
    trace_heads_dataset, trace_heads_loop,
)
from intattn_tl.locate.tracing import TraceError, trace_fact
from intattn_tl.model.load import load_model
from intattn_tl.model.tokens import answer_ids

FACT = ("I Paris is", "Paris", "France")  # byte tokens: the subject is 2..7, then three more tokens
KW = dict(n_samples=3, seed=1)


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gemma"])
def tiny(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def loop(tiny):
    return trace_heads_loop(tiny, *FACT, **KW)


def _close(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    return torch.allclose(torch.from_numpy(a), torch.from_numpy(b), rtol=0, atol=atol)


@pytest.mark.parametrize("engine", ["stack", "hooks"])
def test_batched_grid_equals_one_head_at_a_time_loop(tiny, loop, engine):
    got = trace_heads(tiny, *FACT, engine=engine, max_rows=40, **KW)  # several passes per position
    assert got.prob.shape == (len(POSITIONS), tiny.spec.n_layers, tiny.spec.n_heads)
    assert got.positions == loop.positions == (6, 9)  # last subject token, last token
    assert np.ptp(got.logit_diff) > 1e-3  # the heads do differ: equality below is not trivial
    assert _close(got.logit_diff, loop.logit_diff, 2e-6) and _close(got.prob, loop.prob, 1e-7)
    assert _close(got.attn_logit_diff, loop.attn_logit_diff, 2e-6)
    assert (got.ld_clean, got.ld_corrupt, got.contrast_token) == pytest.approx(
        (loop.ld_clean, loop.ld_corrupt, loop.contrast_token), abs=1e-6)


def test_all_heads_of_a_layer_equal_the_module_attention_restoration(tiny):
    ours = trace_heads(tiny, *FACT, **KW)
    module = trace_fact(tiny, *FACT, kinds=("attn",), **KW)
    want = module.logit_diff[0][:, list(ours.positions)].T  # [position, layer]
    assert _close(ours.attn_logit_diff, want, 2e-6)
    # normalized: divided by this fact's small LD drop, so compared relatively
    np.testing.assert_allclose(ours.attn_ld_effect, module.ld_effect[0][:, list(ours.positions)].T, rtol=1e-3, atol=1e-4)
    assert (ours.ld_clean, ours.ld_corrupt) == pytest.approx((module.ld_clean, module.ld_corrupt), abs=1e-6)
    # restore_heads with explicit head sets gives the same, and a half set lies elsewhere
    n = tiny.spec.n_heads
    t = ours.positions[0]
    prob, ld, base = restore_heads(tiny, *FACT, [(t, 1, range(n)), (t, 1, range(n // 2))], **KW)
    assert ld[0] == pytest.approx(want[0, 1], abs=2e-6) and abs(ld[1] - ld[0]) > 1e-4
    assert base["ld_corrupt"] == pytest.approx(module.ld_corrupt, abs=1e-6)


def test_grouped_query_models_still_have_a_hook_z_head_per_query_head(tiny_llama):
    cfg = tiny_llama.hf_model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads == tiny_llama.spec.n_heads
    res = trace_heads(tiny_llama, *FACT, **KW)
    assert res.logit_diff.shape[-1] == cfg.num_attention_heads


def test_head_outputs_sum_to_the_attention_output(tiny_llama):
    """hook_z's head axis is the one W_O splits into heads (einops): the heads' outputs add up to hook_attn_out."""
    ids = torch.tensor([tiny_llama.tokenizer(FACT[0])["input_ids"]])
    _, cache = tiny_llama.bridge.run_with_cache(ids)
    z, out = cache["blocks.2.attn.hook_z"], cache["blocks.2.hook_attn_out"]
    w_o, bias = tiny_llama.spec.family.weight("w_o", 2), tiny_llama.spec.family.bias("w_o", 2)
    per_head = head_outputs(z, w_o)
    assert per_head.shape == (*z.shape[:-1], tiny_llama.spec.d_model)
    total = per_head.sum(-2) + (0 if bias is None else bias)
    torch.testing.assert_close(total, out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(per_head[..., 0, :], per_head[..., 1, :])


@pytest.fixture(scope="module")
def gpt2():
    return load_model("tiny-gpt2")


def test_generic_architecture_traces_heads_through_hooks(gpt2):
    assert not gpt2.spec.family.runs_blocks
    got = trace_heads(gpt2, *FACT, **KW)
    ref = trace_heads_loop(gpt2, *FACT, **KW)
    assert np.ptp(got.logit_diff) > 1e-4
    assert _close(got.logit_diff, ref.logit_diff, 2e-6) and _close(got.prob, ref.prob, 1e-7)
    module = trace_fact(gpt2, *FACT, kinds=("attn",), **KW)
    assert _close(got.attn_logit_diff, module.logit_diff[0][:, list(got.positions)].T, 2e-6)
    with pytest.raises(TraceError, match="engine 'stack'"):
        trace_heads(gpt2, *FACT, engine="stack", **KW)


def test_save_load_and_summaries(tiny_llama, tmp_path):
    res = trace_heads(tiny_llama, *FACT, **KW)
    res.save(tmp_path / "f.npz")
    back = HeadTrace.load(tmp_path / "f.npz")
    assert back.positions == res.positions and back.subject_span == res.subject_span and back.tokens == res.tokens
    for name in HeadTrace.ARRAYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    agg = aggregate_heads([res, back], min_ld_gap=float("-inf"))
    np.testing.assert_allclose(agg["ld_mean"], res.ld_effect)
    summary = summarize_heads([res, back], min_ld_gap=float("-inf"), attn_window_curve=np.ones(4),
                              attn_layers=[1, 2], window=2)
    c = summary["concentration_per_fact"]
    assert 0 < c["top1"]["mean"] <= c["top5"]["mean"] <= c["top10"]["mean"] <= 1 + 1e-9
    share = summary["alpha_attention_sum"]
    assert share["window_sum"] == 2.0 and share["heads_share"] == pytest.approx(share["heads_sum"] / 2, abs=1e-3)
    # windows of 2 around layers 1 and 2 cover layers 0, 1, 1, 2 (with repeats, as the window sum counts them)
    want = sum(res.ld_effect[0][j].sum() for j in (0, 1, 1, 2))
    assert share["heads_sum"] == pytest.approx(want, abs=1e-3)


def test_concentration_arithmetic():
    grid = np.zeros((3, 4))
    grid[0, 0], grid[1, 2], grid[2, 3], grid[2, 1] = 6.0, 3.0, 1.0, -5.0  # negative effects count as 0
    c = concentration(grid)
    assert c == pytest.approx({"top1": 0.6, "top5": 1.0, "top10": 1.0})
    assert np.isnan(concentration(-np.ones((2, 2)))["top1"])


def test_bad_input_is_refused(tiny_llama, monkeypatch, unchecked):
    from intattn_tl.locate import heads

    with monkeypatch.context() as m:  # refused before any forward
        m.setattr(heads, "_state", lambda *a, **k: pytest.fail("the model ran before the sites were checked"))
        with pytest.raises(TraceError, match="outside the model"):
            restore_heads(tiny_llama, *FACT, [(10, 0, [0])], n_samples=1)  # the prompt has 10 tokens
    with pytest.raises(TraceError, match="n_samples"):
        trace_heads(tiny_llama, *FACT, n_samples=0)
    with unchecked(), pytest.raises(TraceError, match="engine must be"):  # the annotation would refuse it first
        trace_heads(tiny_llama, *FACT, engine="fast")
    with pytest.raises(TraceError, match="outside the model"):
        restore_heads(tiny_llama, *FACT, [(6, 4, [0])], n_samples=1)
    with pytest.raises(TraceError, match="outside the model"):
        restore_heads(tiny_llama, *FACT, [(6, 0, [])], n_samples=1)
    with pytest.raises(TraceError, match="n_facts"):
        trace_heads_dataset(tiny_llama, [], 0)


def _known(monkeypatch):
    from intattn_tl.data.records import KnownFact
    import intattn_tl.data.records as data

    monkeypatch.setattr(data, "load_known_facts", lambda: [KnownFact("0", *FACT, "P1"), KnownFact("1", *FACT, "P1")])
    monkeypatch.setattr("intattn_tl.locate.tracing.greedy_token",
                        lambda model, prompt: answer_ids(model.tokenizer, FACT[0], FACT[2])[0])


def test_trace_command_writes_head_files(tmp_path, monkeypatch, capsys):
    from intattn_tl.cli import main

    _known(monkeypatch)
    out = tmp_path / "both"
    rc = main(["trace", "--model", "tiny-llama", "--facts", "2", "--out", str(out), "--samples", "2", "--window", "2",
               "--seed", "2", "--kinds", "head,attn_window,mlp_window", "--attn-width", "1", "--mlp-width", "2", "--min-ld-gap=-inf"])
    assert rc == 0, capsys.readouterr().err
    for name in ("heads.npz", "heads.json", "heads_heatmap.png", "trace.npz", "fig1_heatmaps.png", "tiny-llama.json"):
        assert (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in (out / "heads").glob("*.npz")) == ["0.npz", "1.npz"]
    z = np.load(out / "heads.npz")
    assert z["ld_effect"].shape == (2, 2, 4, 4) and z["ld_mean"].shape == (2, 4, 4) and z["attn_ld_mean"].shape == (2, 4)
    record = json.loads((out / "heads.json").read_text())
    alpha = json.loads((out / "tiny-llama.json").read_text())
    assert record["alpha_attention_sum"]["attn_layers"] == alpha["attn_layers"]
    assert record["alpha_attention_sum"]["alpha"] == alpha["alpha"]
    assert set(record["concentration_per_fact"]) == {"top1", "top5", "top10"}
    assert len(record["top_heads"]["last subject"]) == 10
    # the stored facts equal a direct trace (same facts, same settings)
    direct = trace_heads(load_model("tiny-llama"), *FACT, n_samples=2, seed=2)
    np.testing.assert_allclose(HeadTrace.load(out / "heads" / "0.npz").logit_diff, direct.logit_diff, atol=1e-6)

    alone = tmp_path / "alone"
    assert main(["trace", "--model", "tiny-llama", "--facts", "1", "--out", str(alone), "--samples", "2",
                 "--kinds", "head", "--min-ld-gap=-inf"]) == 0
    assert (alone / "heads.json").exists() and not (alone / "trace.npz").exists() and not (alone / "facts").exists()
    assert "alpha_attention_sum" not in json.loads((alone / "heads.json").read_text())


def test_trace_command_refuses_bad_head_input(tmp_path, capsys, no_model):
    from intattn_tl.cli import main

    assert main(["trace", "--model", "tiny-llama", "--kinds", "head,bogus", "--out", str(tmp_path / "a")]) == 2
    assert "unknown 'bogus'" in capsys.readouterr().err
    assert main(["trace", "--model", "tiny-llama", "--kinds", "head", "--shard", "0/2", "--out", str(tmp_path / "b")]) == 2
    assert "--kinds head is not sharded" in capsys.readouterr().err
    assert main(["trace", "--collect", "--kinds", "head", "--out", str(tmp_path / "c")]) == 2
    assert "not sharded" in capsys.readouterr().err
    assert main(["trace", "--model", "tiny-llama", "--facts", "100", "--kinds", "head", "--install-defaults",
                 "--out", str(tmp_path / "d")]) == 2
    assert "--kinds head alone writes no alpha" in capsys.readouterr().err
