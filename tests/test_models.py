import pytest
import torch

from intattn_tl.models import ModelLoadError, load_model
from intattn_tl.tokens import TokenError, answer_ids, subject_span


def _hook_capture(model, names, ids):
    seen = {}

    def make(name):  # the bridge reports the underlying hook name, so close over the alias
        def hook(x, hook):
            seen[name] = x.detach().clone()
            return x
        return hook

    with torch.no_grad():
        model.bridge.run_with_hooks(ids, fwd_hooks=[(n, make(n)) for n in names])
    return seen


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_spec_shapes_and_handles(fixture, request):
    m = request.getfixturevalue(fixture)
    s = m.spec
    assert len(s.w_out) == len(s.w_o) == s.n_layers
    assert s.w_out[0].shape == (s.d_model, s.d_mlp)
    assert s.w_o[0].shape == (s.d_model, s.n_heads * s.d_head)
    assert (s.family.post_norm("w_out", 0) is not None) == (fixture == "tiny_gemma")


def test_hook_z_times_w_o_is_attn_out_and_post_times_w_out_is_mlp_out(tiny_llama):
    m = tiny_llama
    ids = torch.tensor([m.tokenizer("The Eiffel Tower is in Paris")["input_ids"]])
    c = _hook_capture(m, ["blocks.1.attn.hook_z", "blocks.1.hook_attn_out", "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out"], ids)
    torch.testing.assert_close(c["blocks.1.attn.hook_z"].flatten(-2) @ m.spec.w_o[1].T, c["blocks.1.hook_attn_out"])
    torch.testing.assert_close(c["blocks.1.mlp.hook_post"] @ m.spec.w_out[1].T, c["blocks.1.hook_mlp_out"])


def test_in_place_update_is_seen_by_the_bridge(tiny_llama):
    m = tiny_llama
    ids = torch.tensor([m.tokenizer("hello world")["input_ids"]])
    with torch.no_grad():
        before = m.bridge(ids).clone()
        saved = m.spec.w_out[2].clone()
        m.spec.w_out[2].add_(0.5)
        after = m.bridge(ids).clone()
        m.spec.w_out[2].copy_(saved)
        restored = m.bridge(ids)
    assert (after - before).abs().max() > 1e-3
    assert torch.equal(restored, before)


def test_unknown_model_lists_known_names():
    with pytest.raises(ModelLoadError, match="smollm2-135m"):
        load_model("no-such-model")


def test_subject_span_and_answer_ids(tiny_llama):
    tok = tiny_llama.tokenizer
    start, end = subject_span(tok, "The Eiffel Tower is in", "Eiffel")
    assert tok.decode(tok("The Eiffel Tower is in")["input_ids"][start:end]) == "Eiffel"
    assert tok.decode(answer_ids(tok, "The city is", "Paris")) == " Paris"
    with pytest.raises(TokenError, match="does not occur"):
        subject_span(tok, "The Eiffel Tower is in", "Louvre")
    with pytest.raises(TokenError, match="empty"):
        answer_ids(tok, "The city is", "  ")


@pytest.mark.real_model
def test_smollm_knows_paris(smollm):
    tok = smollm.tokenizer
    ids = torch.tensor([tok("The Eiffel Tower is located in the city of")["input_ids"]])
    with torch.no_grad():
        logits = smollm.bridge(ids)
    assert tok.decode(logits[0, -1].argmax()) == " Paris"
    s = smollm.spec
    assert (s.n_layers, s.d_model, s.d_mlp, s.n_heads, s.d_head) == (30, 576, 1536, 9, 64)


def test_unreachable_hub_model_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Known offline models: smollm2-135m"):
        load_model("intattn-test-org/no-such-model")


def test_corrupt_model_cache_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    """A dequantized cache whose files are damaged is detected and rebuilt from the GGUF file."""
    from intattn_tl import models

    monkeypatch.setenv("INTATTN_CACHE", str(tmp_path))
    fake = tmp_path / "models" / "smollm2-135m"
    fake.mkdir(parents=True)
    (fake / "intattn_complete.json").write_text("{}")
    (fake / "config.json").write_text("{not json")
    calls = []
    monkeypatch.setattr(models, "fetch_gguf", lambda name: calls.append(name) or (_ for _ in ()).throw(ModelLoadError("stop here")))
    with pytest.raises(ModelLoadError, match="stop here"):
        models._load_known_hf("smollm2-135m", torch.float32)
    assert calls == ["smollm2-135m"] and not fake.exists()


def test_tokenizer_that_splits_the_probe_differently_is_refused():
    """transformers 5.17 built Gemma-3's GGUF tokenizer without merges; such a stack must fail loudly."""
    from intattn_tl import models

    class CharTokenizer:
        def __call__(self, text):
            return type("Enc", (), {"input_ids": [ord(c) for c in text]})()

    with pytest.raises(ModelLoadError, match=r"transformers>=5\.23"):
        models._check_tokenizer("gemma3-270m", CharTokenizer())


def test_smollm_tokenizer_matches_its_probe(smollm):
    from intattn_tl import models

    models._check_tokenizer("smollm2-135m", smollm.tokenizer)
