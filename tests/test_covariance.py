"""Key second moments: the math (documents with padding masked, and fixed windows), one pass for all
layers, the disk cache (hits, corruption, mismatch), and corpora too small to use."""

import pytest
import torch
from einops import rearrange

from intattn_tl.edit import covariance
from intattn_tl.edit.covariance import (
    CHUNK, CovarianceError, document_tokens, documents, second_moment, second_moments, token_chunks,
)
from intattn_tl.model.spec import weights_fingerprint

TEXT = ("The quick brown fox jumps over the lazy dog. " * 40 + "Pack my box with five dozen liquor jugs. " * 40)
# lines of different lengths (padding inside a batch), a heading and blank lines (left out)
DOCS = "\n".join([" = Heading = ", ""] + [" ".join(TEXT.split()[i:i + 3 + i % 17]) for i in range(0, 600, 7)] + [""])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTATTN_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    return corpus


@pytest.fixture
def doc_corpus(cache):
    path = cache.parent / "docs.txt"
    path.write_text(DOCS)
    return path


def _manual(model, corpus, site, n_tokens, text="windows"):
    """E[k k^T] with one unbatched forward per sequence: no padding anywhere."""
    cut = token_chunks if text == "windows" else document_tokens
    ks = []
    for row in cut(model.tokenizer, [corpus.read_text()], n_tokens):
        got = {}
        model.bridge.run_with_hooks(torch.tensor([row]), fwd_hooks=[(site, lambda x, hook: got.update(x=x.detach()))])
        x = got["x"][0]
        ks.append(rearrange(x, "t heads d_head -> t (heads d_head)") if x.ndim == 3 else x)  # hook_z: W_O's layout
    K = torch.cat(ks).double()
    return K.T @ K / len(K)


def test_documents_are_lines_without_headings():
    docs = documents([DOCS])
    assert docs and all(d and not d.startswith("=") and d == d.strip() for d in docs)
    assert len(docs) == len([x for x in DOCS.split("\n") if x.strip() and not x.strip().startswith("=")])


def test_documents_one_sequence_each_padding_masked(tiny_llama, doc_corpus):
    n = 2 * CHUNK
    seqs = document_tokens(tiny_llama.tokenizer, [doc_corpus.read_text()], n)
    assert sum(map(len, seqs)) >= n > sum(map(len, seqs[:-1]))  # in order, until the count reaches n
    assert len({len(x) for x in seqs}) > 1  # batches mix lengths: padding is there to mask
    C = second_moment(tiny_llama, "w_out", 1, n_tokens=n, corpus=doc_corpus)
    assert torch.allclose(C, _manual(tiny_llama, doc_corpus, "blocks.1.mlp.hook_post", n, "documents"),
                          rtol=1e-4, atol=1e-7)
    W = second_moment(tiny_llama, "w_out", 1, n_tokens=n, corpus=doc_corpus, text="windows")
    assert not torch.allclose(C, W, rtol=1e-2)  # the two cuts are different statistics, cached apart


def test_too_little_text_is_refused_before_any_forward(tiny_llama, cache, monkeypatch):
    monkeypatch.setattr(tiny_llama.bridge, "run_with_hooks", lambda *a, **k: pytest.fail("a forward ran"))
    small = cache.parent / "small.txt"
    small.write_text("A few words only.\nAnd a second line.\n")
    with pytest.raises(CovarianceError, match=r"fewer than the 1000 asked for"):
        second_moment(tiny_llama, "w_out", 1, n_tokens=1000, corpus=small)
    # enough tokens for n_tokens, fewer than a key dimension (the tiny model's keys are too small to show it)
    with pytest.raises(CovarianceError, match="key dimension 200"):
        covariance.check_enough([[1] * 150], CHUNK, {("w_out", 1): 200, ("w_out", 2): 100}, "small")
    assert covariance.check_enough([[1] * 150], CHUNK, {("w_out", 1): 150}, "small") == 150


def test_second_moment_is_mean_outer_product(tiny_llama, cache):
    n = 2 * CHUNK
    C = second_moment(tiny_llama, "w_out", 1, n_tokens=n, corpus=cache, text="windows")
    assert C.dtype == torch.float64 and C.shape == (tiny_llama.spec.d_mlp,) * 2
    assert torch.allclose(C, _manual(tiny_llama, cache, "blocks.1.mlp.hook_post", n), rtol=1e-4, atol=1e-7)
    Cz = second_moment(tiny_llama, "w_o", 2, n_tokens=n, corpus=cache, text="windows")
    assert torch.allclose(Cz, _manual(tiny_llama, cache, "blocks.2.attn.hook_z", n), rtol=1e-4, atol=1e-7)
    assert torch.allclose(C, C.T) and torch.linalg.eigvalsh(C).min() > -1e-8


def test_all_layers_in_one_pass_then_per_file_cache(tiny_llama, cache, monkeypatch):
    calls = []
    real = tiny_llama.bridge.run_with_hooks
    monkeypatch.setattr(tiny_llama.bridge, "run_with_hooks", lambda *a, **k: calls.append(1) or real(*a, **k))
    sites = [("w_out", 0), ("w_out", 3), ("w_o", 1)]
    out = second_moments(tiny_llama, sites, n_tokens=covariance.BATCH * CHUNK, corpus=cache, text="windows")
    assert len(calls) == 1  # one batch of chunks, every site hooked in the same forward
    files = list((cache.parent / "cache" / "second_moments").rglob("*.pt"))
    assert len(files) == 3
    calls.clear()
    again = second_moments(tiny_llama, [("w_o", 1)], n_tokens=covariance.BATCH * CHUNK, corpus=cache, text="windows")
    assert calls == [] and torch.equal(again[("w_o", 1)], out[("w_o", 1)])


def test_corrupt_or_mismatched_cache_is_rebuilt(tiny_llama, cache, capsys):
    C = second_moment(tiny_llama, "w_out", 2, n_tokens=CHUNK, corpus=cache)
    (path,) = list((cache.parent / "cache" / "second_moments").rglob("*w_out-2.v*.pt"))
    path.write_bytes(b"not a torch file")
    assert torch.equal(second_moment(tiny_llama, "w_out", 2, n_tokens=CHUNK, corpus=cache), C)
    assert "unreadable" in capsys.readouterr().err
    blob = torch.load(path, weights_only=True)
    torch.save({**blob, "data": {**blob["data"], "mom2": blob["data"]["mom2"] * 2}}, path)  # altered content
    assert torch.equal(second_moment(tiny_llama, "w_out", 2, n_tokens=CHUNK, corpus=cache), C)
    assert "does not match its sha256" in capsys.readouterr().err
    layer3 = second_moment(tiny_llama, "w_out", 3, n_tokens=CHUNK, corpus=cache)
    (path3,) = list((cache.parent / "cache" / "second_moments").rglob("*w_out-3.v*.pt"))
    path3.write_bytes(path.read_bytes())  # a file for another layer under this name: refused, rebuilt
    assert torch.equal(second_moment(tiny_llama, "w_out", 3, n_tokens=CHUNK, corpus=cache), layer3)
    assert "made for" in capsys.readouterr().err


def test_cache_key_covers_corpus_and_count(tiny_llama, doc_corpus, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(DOCS[::-1])
    a = second_moment(tiny_llama, "w_out", 0, n_tokens=CHUNK, corpus=doc_corpus)
    b = second_moment(tiny_llama, "w_out", 0, n_tokens=CHUNK, corpus=other)
    c = second_moment(tiny_llama, "w_out", 0, n_tokens=2 * CHUNK, corpus=doc_corpus)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_cache_key_covers_the_config(tiny_llama, cache, monkeypatch):
    """The same weights under another config (here the norm eps) compute other keys: not served the old file."""
    second_moment(tiny_llama, "w_out", 0, n_tokens=CHUNK, corpus=cache)
    fp = weights_fingerprint(tiny_llama)
    monkeypatch.setattr(tiny_llama.hf_model.config, "transformers_version", "0.0.0")  # names, does not compute
    monkeypatch.setattr(tiny_llama.hf_model.config, "_name_or_path", "/elsewhere")
    assert weights_fingerprint(tiny_llama) == fp
    monkeypatch.setattr(tiny_llama.hf_model.config, "rms_norm_eps", tiny_llama.hf_model.config.rms_norm_eps * 10)
    assert weights_fingerprint(tiny_llama) != fp
    second_moment(tiny_llama, "w_out", 0, n_tokens=CHUNK, corpus=cache)
    assert len(list((cache.parent / "cache" / "second_moments").rglob("*w_out-0.v*.pt"))) == 2


def test_datasets_corpus(tiny_gemma, cache):
    import datasets

    ds = datasets.Dataset.from_dict({"text": [TEXT[:2000], "", TEXT[2000:]]})
    C = second_moment(tiny_gemma, "w_o", 1, n_tokens=CHUNK, corpus=ds)
    assert C.shape == (tiny_gemma.spec.n_heads * tiny_gemma.spec.d_head,) * 2 and torch.isfinite(C).all()


def test_bad_arguments(tiny_llama, cache):
    with pytest.raises(CovarianceError, match="n_tokens"):
        second_moment(tiny_llama, "w_out", 0, n_tokens=10, corpus=cache)
    with pytest.raises(CovarianceError, match="bad site"):
        second_moment(tiny_llama, "w_out", 99, n_tokens=CHUNK, corpus=cache)
    with pytest.raises(CovarianceError, match="not found"):
        second_moment(tiny_llama, "w_out", 0, n_tokens=CHUNK, corpus=cache.parent / "missing.txt")
    with pytest.raises(CovarianceError, match="corpus must be"):
        second_moment(tiny_llama, "w_out", 0, n_tokens=CHUNK, corpus=123)
