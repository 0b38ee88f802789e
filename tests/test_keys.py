"""Keys at the subject: what W_out / W_O read, averaged over context prefixes."""

import pytest
import torch
from einops import rearrange

from intattn_tl.data.records import EditRecord
from intattn_tl.edit.keys import attn_keys, flat_heads, mlp_keys, resid_post, subject_activations
from intattn_tl.model.tokens import subject_span

REC = [EditRecord(id="t/0", prompt="The capital of Spain is", subject="Spain", target_new="Rome", ground_truth=("Madrid",)),
       EditRecord(id="t/1", prompt="Ada Lovelace was born in", subject="Ada Lovelace", target_new="Paris", ground_truth=("London",))]


def _act(model, text, site):
    got = {}
    ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
    model.bridge.run_with_hooks(ids, fwd_hooks=[(site, lambda x, hook: got.update(x=x.detach()))])
    return got["x"][0]


def test_mlp_key_is_hook_post_at_last_subject_token_averaged_over_prefixes(tiny_llama, unchecked):
    prefixes = ["", "Spain is far. ", "Hello there, friend. "]  # a prefix mentions the subject: the prompt's one counts
    want = []
    for p in prefixes:
        text = p + REC[0].prompt
        _, end = subject_span(tiny_llama.tokenizer, text, "Spain", start=len(p))
        want.append(_act(tiny_llama, text, "blocks.1.mlp.hook_post")[end - 1])
    assert not torch.allclose(want[0], want[1], atol=1e-3)  # the prefix matters: the mean is not trivial
    K = mlp_keys(tiny_llama, REC, 1, prefixes)  # MEMIT's compute_ks: 1/2 bare + 1/2 mean of the prefixed
    assert K.shape == (2, tiny_llama.spec.d_mlp)
    assert torch.allclose(K[0], 0.5 * want[0] + 0.25 * (want[1] + want[2]), atol=1e-5)
    uniform = mlp_keys(tiny_llama, REC, 1, prefixes, average="uniform")  # ROME's compute_u: the plain mean
    assert torch.allclose(uniform[0], torch.stack(want).mean(0), atol=1e-5)
    assert torch.equal(mlp_keys(tiny_llama, REC, 1, [""]), mlp_keys(tiny_llama, REC, 1, [""], average="uniform"))
    with unchecked(), pytest.raises(ValueError, match="key average"):
        mlp_keys(tiny_llama, REC, 1, prefixes, average="mean")


def test_attn_key_is_what_w_o_reads(tiny_llama):
    K = attn_keys(tiny_llama, REC, 2, [""])
    s = tiny_llama.spec
    assert K.shape == (2, s.n_heads * s.d_head)
    _, end = subject_span(tiny_llama.tokenizer, REC[1].prompt, REC[1].subject)
    attn_out = _act(tiny_llama, REC[1].prompt, "blocks.2.hook_attn_out")[end - 1]
    assert torch.allclose(K[1] @ s.w_o[2].T, attn_out, atol=1e-4)


def test_flat_heads_lays_heads_out_as_w_o_reads_them(tiny_llama):
    z = _act(tiny_llama, REC[1].prompt, "blocks.0.attn.hook_z")  # [t, heads, d_head]
    s = tiny_llama.spec
    flat = flat_heads("blocks.0.attn.hook_z", z)
    assert torch.equal(flat, z.flatten(-2))  # heads major, d_head minor: bit for bit what the flatten gave
    assert torch.equal(flat[:, s.d_head:2 * s.d_head], z[:, 1])  # W_O's columns of head 1
    post = _act(tiny_llama, REC[1].prompt, "blocks.0.mlp.hook_post")
    assert flat_heads("blocks.0.mlp.hook_post", post) is post


def test_all_subject_tokens_is_the_span_mean(tiny_llama):
    K = attn_keys(tiny_llama, REC, 0, [""], subject_tokens="all")
    a, b = subject_span(tiny_llama.tokenizer, REC[1].prompt, REC[1].subject)
    z = rearrange(_act(tiny_llama, REC[1].prompt, "blocks.0.attn.hook_z"), "t heads d_head -> t (heads d_head)")
    assert b - a > 1
    assert torch.allclose(K[1], z[a:b].mean(0), atol=1e-5)
    assert not torch.allclose(K[1], z[b - 1], atol=1e-3)


def test_batching_does_not_change_keys(tiny_gemma):
    both = subject_activations(tiny_gemma, REC, ["blocks.1.mlp.hook_post", "blocks.2.hook_resid_post"], [""])
    alone = mlp_keys(tiny_gemma, REC[1:], 1, [""])
    assert torch.allclose(both["blocks.1.mlp.hook_post"][1], alone[0], atol=1e-5)
    assert torch.allclose(both["blocks.2.hook_resid_post"], resid_post(tiny_gemma, REC, 2, [""]), atol=1e-5)


def test_bad_arguments(tiny_llama, unchecked):
    with unchecked(), pytest.raises(ValueError, match="subject_tokens"):
        attn_keys(tiny_llama, REC, 0, [""], subject_tokens="first")
    with pytest.raises(ValueError, match="prefixes"):
        mlp_keys(tiny_llama, REC, 0, [])
