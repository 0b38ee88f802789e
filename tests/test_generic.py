"""The generic, hook-based family adapter (families/generic.py): architectures without a fast adapter (tiny
GPT-2, GPT-NeoX, GPT-J, OPT, Phi) trace and edit through the bridge's hooks, and a Llama forced onto the
generic adapter gives the fast adapter's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import support_table
import torch
from test_conformance import HPARAMS, REC, _first_target_logprob
from test_rome_ft import _params

from intattn_tl.api import edit
from intattn_tl.diagnostics.check import check_hooks, check_logits, check_projection, probe_batch
from intattn_tl.edit.keys import subject_activations
from intattn_tl.edit.targets import TargetError, TargetHparams, logits_from, residual_at, target_deltas
from intattn_tl.edit.transaction import EditState
from intattn_tl.errors import ModelLoadError
from intattn_tl.locate.tracing import trace_fact, trace_fact_loop
from intattn_tl.methods.registry import get_method
from intattn_tl.model.families import Generic, family_class
from intattn_tl.model.load import load_model
from intattn_tl.model.tiny import GENERIC_KINDS, byte_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PARALLEL = {"neox", "gptj", "phi"}  # attention and MLP read the same residual


@pytest.fixture(scope="module", params=GENERIC_KINDS)
def arch(request):
    return load_model(f"tiny-{request.param}")


@pytest.fixture(scope="module")
def llama_generic():
    model = load_model("tiny-llama", generic=True)
    model.name = "tiny-llama-generic"  # its own caches: the MEMIT comparison must optimise its own targets
    # the generic adapter cuts the statistics' documents at n_ctx (256 here; it cannot know that rotary Llama
    # has no hard limit), the fast one at 4096: the same cut, or C (and the MEMIT deltas) differ
    assert model.spec.family.max_tokens == 256
    model.spec.family.max_tokens = None
    return model


def _ids(model, text="The quick brown fox jumps over the lazy dog"):
    return torch.tensor([model.tokenizer(text)["input_ids"]])


# ----------------------------------------------------------------------------- the adapter


def test_generic_adapter_is_chosen_and_mechanics_rows_pass(arch):
    fam = arch.spec.family
    assert isinstance(fam, Generic) and not fam.runs_blocks
    assert fam.parallel == (arch.name.removeprefix("tiny-") in PARALLEL)
    ids = probe_batch(arch)
    row, acts = check_hooks(arch, ids)
    rows = [row, check_projection(arch, acts, "w_out"), check_projection(arch, acts, "w_o"), check_logits(arch, ids)]
    assert all(r.ok for r in rows), rows
    assert fam.bias("w_out", 0) is not None  # the tiny models carry random biases: the rows include them
    # the rows can fail: a wrong matrix (the next layer's) does not reproduce the hook
    arch.spec.w_out[0], saved = arch.spec.w_out[1], arch.spec.w_out[0]
    try:
        assert not check_projection(arch, acts, "w_out").ok
    finally:
        arch.spec.w_out[0] = saved


def test_views_are_live_d_out_d_in(arch):
    s = arch.spec
    assert s.w_out[1].shape == (s.d_model, s.d_mlp) and s.w_o[1].shape == (s.d_model, s.n_heads * s.d_head)
    saved = s.w_out[1].clone()
    try:
        with torch.no_grad():
            before = arch.bridge(_ids(arch)).clone()
            s.w_out[1].add_(0.3 * torch.randn(s.w_out[1].shape, generator=torch.Generator().manual_seed(0)))
            after = arch.bridge(_ids(arch))
    finally:
        with torch.no_grad():
            s.w_out[1].copy_(saved)
    assert (after - before).abs().max() > 1e-3


# ----------------------------------------------------------------------------- every method


def _edited_names(model) -> set[str]:
    fam, names = model.spec.family, set()
    owners = {id(fam.module(k, l).weight) for k in ("w_out", "w_o") for l in range(fam.n_layers)}
    for n, p in model.hf_model.named_parameters():
        if id(p) in owners:
            names.add(n.replace("._original_component", "").replace("_original_component.", ""))
    return names


@pytest.mark.parametrize("method", list(HPARAMS))
def test_every_method_edits_and_rolls_back(arch, method):
    before = _params(arch)
    lp0 = np.array([_first_target_logprob(arch, r) for r in REC])
    hp = get_method(method).hparams_cls(**HPARAMS[method])
    result = edit(arch, REC, method, hp, EditState())
    try:
        lp1 = np.array([_first_target_logprob(arch, r) for r in REC])
        changed = {n for n, p in _params(arch).items() if not torch.equal(before[n], p)}
    finally:
        result.rollback()
    assert all(torch.equal(before[n], p) for n, p in _params(arch).items())  # every weight, bit for bit
    assert changed and changed <= _edited_names(arch), changed
    assert (lp1 - lp0).mean() > 0.3, (method, lp0, lp1)


# ----------------------------------------------------------------------------- tracing


def test_tracing_runs_through_hooks(arch):
    fact = ("I am told that Paris is", "Paris", "France")
    kw = dict(n_samples=2, window=2, seed=1, kinds=("resid", "attn", "mlp"))
    res = trace_fact(arch, *fact, **kw)
    loop = trace_fact_loop(arch, *fact, **kw)
    np.testing.assert_array_equal(res.logit_diff, loop.logit_diff)  # trace_fact is the loop here
    assert np.isfinite(res.prob).all() and np.ptp(res.logit_diff) > 1e-3


def test_cached_generation_equals_uncached(arch):
    """Fluency samples come from evaluation.generate (KV cache through the bridge, kv_cache_fix)."""
    from intattn_tl.evaluation.metrics import generate

    prompts = [arch.tokenizer(t)["input_ids"] for t in ("The cat sat on", "Hello there, how")]
    got = generate(arch, prompts, 6).tolist()
    want = []
    with torch.no_grad():
        for x in prompts:
            ids = list(x)
            for _ in range(6):
                ids.append(int(arch.bridge(torch.tensor([ids]))[0, -1].argmax()))
            want.append(ids[len(x):])
    assert got == want


def test_answer_argmax_runs_the_backbone_of_any_architecture(arch):
    """Edit Succ. / Portability / Locality read the argmax after the HF backbone (`base_model`)."""
    from intattn_tl.evaluation.metrics import answer_argmax

    prompt, answer = arch.tokenizer("Tell me about")["input_ids"], arch.tokenizer(" Spain")["input_ids"]
    (pred,) = answer_argmax(arch, [(prompt, answer)])
    with torch.no_grad():
        logits = arch.bridge(torch.tensor([prompt + answer]))[0]
    assert pred == logits[len(prompt) - 1: len(prompt) - 1 + len(answer)].argmax(-1).tolist()


# ----------------------------------------------------------------------------- generic == fast on Llama


def test_forced_generic_llama_keys_and_logits_from_equal_fast(tiny_llama, llama_generic):
    assert isinstance(llama_generic.spec.family, Generic) and tiny_llama.spec.family.runs_blocks
    for kind in ("w_out", "w_o"):
        torch.testing.assert_close(llama_generic.spec.family.weight(kind, 2), tiny_llama.spec.family.weight(kind, 2))
    sites = ["blocks.1.mlp.hook_post", "blocks.2.attn.hook_z"]
    a = subject_activations(tiny_llama, REC, sites, ["", "A prefix. "])
    b = subject_activations(llama_generic, REC, sites, ["", "A prefix. "])
    for s in sites:
        torch.testing.assert_close(a[s], b[s])
    ids = _ids(tiny_llama)
    resid = residual_at(tiny_llama, ids, 1) + 0.5
    fast = logits_from(tiny_llama, resid, 1)
    torch.testing.assert_close(logits_from(llama_generic, resid, 1, ids=ids), fast, atol=1e-5, rtol=1e-5)
    with pytest.raises(TargetError, match="needs the ids"):
        logits_from(llama_generic, resid, 1)


def test_forced_generic_llama_targets_equal_fast(tiny_llama, llama_generic):
    hp = TargetHparams(v_num_grad_steps=8, v_lr=0.5, v_lr_units="absolute", clamp_norm_factor=10.0)
    fast = target_deltas(tiny_llama, REC, 2, hp, prefixes=["", "A prefix. "], use_cache=False)
    gen = target_deltas(llama_generic, REC, 2, hp, prefixes=["", "A prefix. "], use_cache=False)
    assert fast.norm() > 1e-2
    torch.testing.assert_close(gen, fast, atol=1e-4, rtol=1e-3)


def test_forced_generic_llama_memit_edit_equals_fast(tiny_llama, llama_generic):
    hp = get_method("memit").hparams_cls(**HPARAMS["memit"])
    deltas = []
    for model in (tiny_llama, llama_generic):
        before = {k: w.clone() for k, w in enumerate(model.spec.w_out)}
        result = edit(model, REC, "memit", hp, EditState())
        try:
            deltas.append(torch.stack([model.spec.w_out[k] - before[k] for k in before]))
        finally:
            result.rollback()
    assert deltas[0].abs().max() > 1e-4
    torch.testing.assert_close(deltas[1], deltas[0], atol=1e-4, rtol=1e-3)


def test_forced_generic_llama_tracing_equals_fast(tiny_llama, llama_generic):
    fact = ("I am told that Paris is", "Paris", "France")
    kw = dict(n_samples=2, window=2, seed=1)
    fast, gen = trace_fact(tiny_llama, *fact, **kw), trace_fact(llama_generic, *fact, **kw)
    np.testing.assert_allclose(gen.prob, fast.prob, atol=1e-6)
    np.testing.assert_allclose(gen.logit_diff, fast.logit_diff, atol=2e-5)


# ----------------------------------------------------------------------------- parallel residual


@pytest.mark.parametrize("layers", [dict(layers=[2], attn_layers=[1]), dict(layers=[2], attn_layers=[2])])
def test_intattn_chain_on_parallel_neox_realises_its_share(layers):
    """On a parallel block attention and MLP read the same residual. Each chain drives h_2 by its share;
    what each step realised over what it intended stays near 1, also when both chains edit layer 2 (there
    the MLP chain's keys do not see the attention edit of their own layer). Measured 2026-12-06 (layers
    [2] / attn [1]): attention step resid@z (cos, ratio) = (0.982, 1.066), MLP step (1.0, 1.0); tiny Llama
    (0.970, 0.998) and (1.0, 1.0)."""
    neox = load_model("tiny-neox")
    hp = get_method("intattn").hparams_cls(**{**HPARAMS["intattn"], **layers})
    result = edit(neox, REC, "intattn", hp, EditState())
    try:
        steps = result.stats["steps"]
    finally:
        result.rollback()
    assert [s["kind"] for s in steps] == ["w_o", "w_out"], steps
    for s in steps:
        cos, ratio = s["resid@l"]
        assert cos > 0.99 and 0.9 < ratio < 1.1, s  # the solve realises the asked-for module change
        for stat in ("resid@z", "chain"):  # and the top layer moves by about that much
            cos, ratio = s[stat]
            assert cos > 0.9 and 0.8 < ratio < 1.25, s


# ----------------------------------------------------------------------------- refused before work


def test_encoder_decoder_is_refused():
    from transformers import T5Config

    with pytest.raises(ModelLoadError, match=r"T5ForConditionalGeneration.*encoder-decoder"):
        family_class(T5Config(architectures=["T5ForConditionalGeneration"]))


def test_architecture_the_bridge_does_not_boot_is_refused(tmp_path):
    from transformers import BioGptConfig, BioGptForCausalLM

    tok = byte_tokenizer()
    cfg = BioGptConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, architectures=["BioGptForCausalLM"])
    BioGptForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"does not boot BioGptForCausalLM"):
        load_model(str(tmp_path))


# ----------------------------------------------------------------------------- docs/models.md


def test_support_tables_are_the_generated_ones():
    """README's and docs/models.md's architecture tables are `python tests/support_table.py`'s output."""
    rs = support_table.rows()
    assert support_table.docs_table(rs) in (ROOT / "docs" / "models.md").read_text()
    assert support_table.readme_table(rs) in (ROOT / "README.md").read_text()
