"""Every supported family (a tiny random model each) passes the same checks: spec views reproduce the hooks,
the partial forwards and tracing's fast path equal the full model, every method edits and rolls back exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from einops import rearrange

from intattn_tl.data.records import EditRecord
from intattn_tl.edit.transaction import EditState
from intattn_tl.api import edit
from intattn_tl.methods.registry import get_method
from intattn_tl.model.families import FAMILIES, family_class
from intattn_tl.errors import ModelLoadError
from intattn_tl.model.tiny import FAST_KINDS
from intattn_tl.edit.targets import Suffixes, _batch, _length_groups, hidden_from, logits_from, residual_at
from intattn_tl.model.tokens import answer_ids, prompt_ids
from intattn_tl.locate.tracing import Stack, trace_fact, trace_fact_loop
from intattn_tl.model.forward import KV, Forward, Patch
from test_models import _hook_capture
from test_rome_ft import _params

FIXTURES = {"llama": "tiny_llama", "qwen2": "tiny_qwen2", "mistral": "tiny_mistral", "gemma3": "tiny_gemma"}
LONG = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat"  # > every window
# The subject ends each prompt: target_new's first token is read where the edit puts its change (a random
# model's later target tokens see it only through random attention).
REC = [EditRecord(id="c/0", prompt="Tell me about Spain", subject="Spain", target_new="Rome", ground_truth=("Madrid",)),
       EditRecord(id="c/1", prompt="The one born in Paris is Ada Lovelace", subject="Ada Lovelace", target_new="Bob",
                  ground_truth=("London",))]
# MEMIT's own (absolute) target step, pinned: this suite checks families, not the default step size.
FAST = dict(mom2_n_samples=256, v_num_grad_steps=20, clamp_norm_factor=10.0, use_prefixes=False, v_lr=0.5,
            v_lr_units="absolute")
HPARAMS = {
    "ft": dict(layers=[1], lr=2e-2, num_steps=10, norm_constraint=0.0),
    # A random model's MLP output is tiny beside its residual, so ROME's own clamp (|W k|) would stop the target
    # short; sized by the residual here. The real-model parity test checks ROME's own sizing.
    "rome": dict(layers=[1], target_size="residual", **FAST),
    "r-rome": dict(layers=[1], target_size="residual", **FAST),
    "memit": dict(layers=[1, 2], mom2_update_weight=1.0, **FAST),
    "alphaedit": dict(layers=[1, 2], nullspace_threshold=0.5, L2=1.0, **FAST),
    "intattn": dict(layers=[2], attn_layers=[1], alpha=0.5, mom2_update_weight=1.0, attn_mom2_update_weight=1.0, **FAST),
}


def test_every_family_has_a_tiny_model():
    assert sorted(FIXTURES) == sorted(FAST_KINDS) == sorted(cls.name for cls in FAMILIES.values())


@pytest.fixture(scope="module", params=list(FIXTURES))
def tiny(request):
    return request.getfixturevalue(FIXTURES[request.param])


def _ids(model, text=LONG):
    return torch.tensor([model.tokenizer(text)["input_ids"]])


# ----------------------------------------------------------------------------- the adapter's views


def test_spec_views_reproduce_hook_outputs(tiny):
    """hook_z @ W_O.T and mlp.hook_post @ W_out.T are the modules' outputs: the hook itself without a
    post-norm, its input with one (hook = norm(view output))."""
    s, fam = tiny.spec, tiny.spec.family
    assert type(fam) is family_class(tiny.hf_model.config) and len(s.w_out) == len(s.w_o) == s.n_layers
    assert s.w_out[0].shape == (s.d_model, s.d_mlp) and s.w_o[0].shape == (s.d_model, s.n_heads * s.d_head)
    names = [f"blocks.2.{h}" for h in ("attn.hook_z", "hook_attn_out", "mlp.hook_post", "hook_mlp_out")]
    c = _hook_capture(tiny, names, _ids(tiny))
    for key, kind, W, hook in (("attn.hook_z", "w_o", s.w_o[2], "hook_attn_out"),
                               ("mlp.hook_post", "w_out", s.w_out[2], "hook_mlp_out")):
        x = c[f"blocks.2.{key}"]
        out = rearrange(x, "b t heads d_head -> b t (heads d_head)") @ W.T if key == "attn.hook_z" else x @ W.T
        bias = fam.module(kind, 2).bias
        out = out + bias if bias is not None else out
        norm = fam.post_norm(kind, 2)
        with torch.no_grad():
            torch.testing.assert_close(norm(out) if norm is not None else out, c[f"blocks.2.{hook}"])


def test_views_are_live(tiny):
    saved = tiny.spec.w_o[1].clone()
    try:
        with torch.no_grad():
            before = tiny.bridge(_ids(tiny)).clone()
            tiny.spec.w_o[1].add_(0.3)
            after = tiny.bridge(_ids(tiny))
    finally:
        with torch.no_grad():
            tiny.spec.w_o[1].copy_(saved)
    assert (after - before).abs().max() > 1e-3


def test_residual_change_and_output_change_agree_with_the_model(tiny):
    """residual_change(dW) is what the block adds when W becomes W + dW; output_change(R) moves it by R
    (exactly without a post-norm; with one, onto the closest output the norm can emit: cosine ~ 1)."""
    fam, layer = tiny.spec.family, 1
    g = torch.Generator().manual_seed(0)
    k = torch.randn(3, tiny.spec.d_mlp, generator=g)
    W = tiny.spec.w_out[layer]
    dW = 0.05 * torch.randn(W.shape, generator=g)
    norm = fam.post_norm("w_out", layer) or (lambda x: x)
    with torch.no_grad():
        torch.testing.assert_close(fam.residual_change("w_out", layer, k, dW), norm(k @ (W + dW).T) - norm(k @ W.T))
        out = norm(k @ W.T)
        R = 0.2 * out.norm(dim=-1, keepdim=True) * torch.randn(out.shape, generator=g) / out.shape[-1] ** 0.5
        moved = norm(k @ W.T + fam.output_change("w_out", layer, k, R))
    cos = torch.nn.functional.cosine_similarity(moved, out + R, dim=-1)
    assert cos.min() > 1 - 1e-5
    if fam.post_norm("w_out", layer) is None:
        torch.testing.assert_close(moved, out + R)


def test_output_emitter_is_the_blocks_residual_change(tiny):
    """emit(v, dv) is what the block adds to the residual when W k = v becomes v + dv; None means no norm
    (a residual target is then the output target itself)."""
    fam, layer = tiny.spec.family, 1
    g = torch.Generator().manual_seed(3)
    k = torch.randn(3, tiny.spec.d_mlp, generator=g)
    dW = 0.05 * torch.randn(tiny.spec.w_out[layer].shape, generator=g)
    emit = fam.output_emitter("w_out", layer)
    assert (emit is None) == (fam.post_norm("w_out", layer) is None)
    if emit is not None:
        with torch.no_grad():
            v = k @ tiny.spec.w_out[layer].T
            torch.testing.assert_close(emit(v, k @ dW.T), fam.residual_change("w_out", layer, k, dW))


# ----------------------------------------------------------------------------- partial forwards


@pytest.mark.parametrize("layer", [0, 2])
def test_partial_forward_equals_bridge_with_hook(tiny, layer):
    t = 80  # beyond the tiny Gemma's and Mistral's sliding windows
    g = torch.Generator().manual_seed(layer + t)
    ids = torch.randint(0, 250, (3, t), generator=g)
    delta = torch.randn(3, tiny.spec.d_model, generator=g)
    pos = torch.tensor([1, t // 2, t - 1])

    def add(x, hook):
        x = x.clone()
        x[torch.arange(3), pos] += delta
        return x

    with torch.no_grad():
        full = tiny.bridge.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", add)])
        resid = residual_at(tiny, ids, layer).clone()
        resid[torch.arange(3), pos] += delta
        part = logits_from(tiny, resid, layer)
        plain = tiny.bridge(ids)
    assert (full - plain).abs().max() > 1e-3  # the delta matters, so equality below is a real check
    torch.testing.assert_close(part, full, atol=1e-5, rtol=1e-5)


def test_suffixes_equal_full_forward_for_mixed_lengths(tiny):
    # rows whose suffixes (last subject token .. end) have different lengths run in separate groups
    records = [REC[0], EditRecord(id="b", prompt="Bobo, who was born long ago in a far town, plays the",
                                  subject="Bobo", target_new="oboe", ground_truth=("x",))]
    b = _batch(tiny, records, ["", "A long prefix to shift the positions of everything after it. "])
    layer = 1
    resid = residual_at(tiny, b.ids, layer)
    sf = Suffixes(tiny, resid, b.subject, b.length, layer)
    suffix_len = b.length - b.subject
    assert len(set(suffix_len.tolist())) > 2
    rows = torch.tensor([0, 2, 3, 5])
    assert len(_length_groups(suffix_len[rows].tolist())) > 1
    add = torch.randn(len(rows), tiny.spec.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        part = sf.hidden(rows, add)
        moved = resid[rows].clone()
        moved[torch.arange(len(rows)), b.subject[rows]] += add
        full = hidden_from(tiny, moved, layer)
    for i, r in enumerate(rows.tolist()):
        n, s = int(suffix_len[r]), int(b.subject[r])
        torch.testing.assert_close(part[i, :n], full[i, s: s + n], atol=1e-5, rtol=1e-5)
        assert (part[i, n:] == 0).all()


# ----------------------------------------------------------------------------- tracing


def test_stack_matches_bridge_beyond_sliding_window(tiny):
    """The direct layer stack (masks, rope, sliding windows) reproduces the bridge's logits on a long prompt."""
    ids = _ids(tiny)
    assert ids.shape[1] > 64  # every tiny model's sliding window
    stack = Stack(tiny)
    with torch.no_grad():
        ours = stack.run(stack.embed(ids), 0, 0, None, Patch())
        ref = tiny.bridge(ids)[:, -1]
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_engine_pass_after_kept_keys_equals_full_run(tiny):
    """A pass entering at a middle layer on the last positions, with the keys/values a full run recorded for the
    earlier ones, gives that run's outputs there (windows that start past every tiny model's sliding window)."""
    fw = Forward(tiny)
    ids = _ids(tiny)
    total, start = ids.shape[1], 2
    t = total - 5
    assert t > 64
    with torch.no_grad():
        x = fw.embed(ids)
        rec = KV()
        full, seen = fw.run(x, range(fw.n_layers), fw.window(x, 0, total), rec, record=True)
        kept = KV({j: (k[:, :, :t], v[:, :, :t]) for j, (k, v) in rec.recorded.items()})
        part = fw.run(seen.resid[:, start, t:], range(start, fw.n_layers), fw.window(x, t, total), kept)
    assert set(rec.recorded) == set(range(fw.n_layers))
    torch.testing.assert_close(part, full[:, t:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fw.logits(full[:, -1]), tiny.bridge(ids)[:, -1], atol=1e-4, rtol=1e-4)


def test_tracing_fast_path_equals_per_site_loop(tiny):
    fact = ("I am told that Paris is", "Paris", "France")  # the last token is past Mistral's window from the start
    kw = dict(n_samples=2, window=2, seed=1)
    fast, loop = trace_fact(tiny, *fact, **kw), trace_fact_loop(tiny, *fact, **kw)
    np.testing.assert_allclose(fast.prob, loop.prob, atol=1e-6)
    np.testing.assert_allclose(fast.logit_diff, loop.logit_diff, atol=2e-5)
    assert np.ptp(fast.logit_diff) > 1e-2


# ----------------------------------------------------------------------------- every method


def _first_target_logprob(model, record) -> float:
    """log P(first token of target_new | prompt)."""
    tok = model.tokenizer
    head, ans = prompt_ids(tok, record.prompt), answer_ids(tok, record.prompt, record.target_new)
    with torch.no_grad():
        return float(torch.log_softmax(model.bridge(torch.tensor([head]))[0, -1].float(), -1)[ans[0]])


@pytest.mark.parametrize("method", list(HPARAMS))
def test_method_makes_target_likelier_and_rolls_back(tiny, method):
    before = _params(tiny)
    lp0 = np.array([_first_target_logprob(tiny, r) for r in REC])
    hp = get_method(method).hparams_cls(**HPARAMS[method])
    result = edit(tiny, REC, method, hp, EditState())
    try:
        lp1 = np.array([_first_target_logprob(tiny, r) for r in REC])
        changed = {n for n, p in _params(tiny).items() if not torch.equal(before[n], p)}
    finally:
        result.rollback()
    assert all(torch.equal(before[n], p) for n, p in _params(tiny).items())  # every weight, bit for bit
    assert changed and all(n.endswith(("down_proj.weight", "o_proj.weight")) for n in changed)
    # measured: +0.64 (Qwen2 AlphaEdit, whose update the corpus keys' null space confines) to +3.8 nats per
    # record, mean over the two >= 0.9, from about -5.2 to -6.3
    gain = lp1 - lp0
    assert (gain > 0.3).all() and gain.mean() > 0.75, (lp0, lp1)


# ----------------------------------------------------------------------------- unsupported families


def test_encoder_decoder_is_refused_naming_it_and_the_fast_families():
    from transformers import BartConfig

    with pytest.raises(ModelLoadError, match=r"BartForConditionalGeneration.*'bart'.*encoder-decoder.*llama.*qwen2.*mistral.*gemma3"):
        family_class(BartConfig(architectures=["BartForConditionalGeneration"]))


def test_supported_type_with_missing_parts_says_what_is_missing(tiny_llama):
    from intattn_tl.model.families import Llama

    class Bare(torch.nn.Module):
        config = tiny_llama.hf_model.config
        model = torch.nn.Module()

    with pytest.raises(ModelLoadError, match=r"model\.embed_tokens.*model\.layers"):
        Llama(Bare())


def test_bridge_without_a_used_hook_is_refused(tiny_llama):
    class NoZ:
        hook_dict = {k: v for k, v in tiny_llama.bridge.hook_dict.items() if k != "blocks.0.attn.hook_z"}

    tiny_llama.spec.family.check_hooks(tiny_llama.bridge)  # the real bridge has every hook
    with pytest.raises(ModelLoadError, match=r"blocks\.0\.attn\.hook_z"):
        tiny_llama.spec.family.check_hooks(NoZ())
