"""Metrics against hand-computed values, fake/tiny models, and pre-edit sanity on the real model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from intattn_tl.data.records import EditRecord, Probe
from intattn_tl.evaluation.metrics import (
    EvalConfig, LocalityReference, answer_argmax, evaluate, fluency, format_table, locality_reference, ngram_entropy, pick_next, sample_texts, summarize, token_accuracy, words,
)
from intattn_tl.model.spec import LoadedModel
from intattn_tl.model.tiny import byte_tokenizer
from intattn_tl.model.tokens import answer_ids, prompt_ids

# ----------------------------------------------------------------------------- fluency


def test_ngram_entropy_by_hand():
    toks = "a b a b".split()
    # bigrams ab, ba, ab -> p = (2/3, 1/3); trigrams aba, bab -> 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy(toks, 2) == pytest.approx(h2)
    assert ngram_entropy(toks, 3) == pytest.approx(1.0)
    assert fluency("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)


def test_fluency_of_distinct_words_and_repetition():
    text = " ".join(f"w{i}" for i in range(10))  # 9 distinct bigrams, 8 distinct trigrams
    assert fluency(text) == pytest.approx((2 / 3 * math.log2(9) + 4 / 3 * math.log2(8)) / 2)
    assert fluency("the " * 50) == 0.0  # one repeated n-gram: no entropy
    assert fluency("") == 0.0


def test_words_like_nltk():
    assert words("I don't know, Smith's dog.") == ["I", "do", "n't", "know", ",", "Smith", "'s", "dog", "."]
    assert words("A well-known 3.5 km road!") == ["A", "well-known", "3.5", "km", "road", "!"]


# ----------------------------------------------------------------------------- teacher forcing


def test_token_accuracy():
    assert token_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    with pytest.raises(ValueError):
        token_accuracy([1, 2], [1, 2, 3])


class RepeatLM:
    """A fake HF model whose prediction at every position is the token already there: the hidden state is
    the token's one-hot vector, the unembedding the identity."""

    def __init__(self, vocab: int):
        self.vocab = vocab
        self.calls = 0

    def model(self, input_ids):
        self.calls += 1
        return SimpleNamespace(last_hidden_state=torch.nn.functional.one_hot(input_ids, self.vocab).float())

    @property
    def base_model(self):  # HF's name for the backbone, whatever the architecture calls it
        return self.model

    def get_output_embeddings(self):
        return lambda h: h


class FakeModel(LoadedModel):
    """What evaluation reads of a model (name, tokenizer, hf_model, device), as a LoadedModel so that the run-time
    type check (--typecheck) takes it; made without __init__, which would want a bridge and a spec."""
    device = torch.device("cpu")


def fake_model():
    tok = byte_tokenizer()
    tok.padding_side = "right"
    m = object.__new__(FakeModel)
    m.name, m.tokenizer, m.hf_model = "fake", tok, RepeatLM(len(tok))
    return m


def test_answer_argmax_positions_by_hand():
    m = fake_model()
    tok = m.tokenizer
    p, a = prompt_ids(tok, "The cat"), answer_ids(tok, "The cat", "ttt")
    assert len(a) == 4  # byte tokens of " ttt"
    # predictions = the token before each answer token: [t, " ", t, t] vs [" ", t, t, t] -> 2 of 4
    (pred,) = answer_argmax(m, [(p, a)])
    assert pred == [p[-1]] + a[:-1]
    assert token_accuracy(pred, a) == 0.5


def test_answer_argmax_is_independent_of_batching(tiny_llama):
    tok = tiny_llama.tokenizer
    texts = [("Paris is in", "France"), ("A", "bc"), ("The longest prompt of them all is", "here"), ("x y", "z")]
    pairs = [(prompt_ids(tok, p), answer_ids(tok, p, a)) for p, a in texts]
    one = [answer_argmax(tiny_llama, [pair])[0] for pair in pairs]
    assert answer_argmax(tiny_llama, pairs, batch_size=3) == one
    assert [len(x) for x in one] == [len(a) for _, a in pairs]


@torch.no_grad()
def _greedy(model, ids: list[int], n: int) -> list[int]:
    """Greedy decoding without a KV cache: the reference every cached path must match."""
    ids = list(ids)
    for _ in range(n):
        ids.append(int(model.bridge(torch.tensor([ids]))[0, -1].argmax()))
    return ids


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_exact_match_equals_greedy_generation(name, request):
    model = request.getfixturevalue(name)
    p = prompt_ids(model.tokenizer, "The capital of")
    greedy = _greedy(model, p, 6)[len(p):]
    (pred,) = answer_argmax(model, [(p, greedy)])
    assert pred == greedy  # every greedy token is the teacher-forced argmax -> exact match
    wrong = greedy[:3] + [(greedy[3] + 1) % len(model.tokenizer)] + greedy[4:]
    (pred,) = answer_argmax(model, [(p, wrong)])
    assert pred[:4] == greedy[:4] and pred != wrong


def _greedy_text(model, prompt: str, max_len: int) -> str:
    ids = prompt_ids(model.tokenizer, prompt)
    return model.tokenizer.decode(_greedy(model, ids, max(max_len - len(ids), 0)), skip_special_tokens=True)


PROMPTS = ["Hello", "The capital of France is", "A much longer prompt than the others, to pad", "Hi"]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_cached_generation_matches_uncached_greedy(name, request):
    model = request.getfixturevalue(name)
    # different lengths in one batch: left padding, a mask and per-row positions must all be right
    got = sample_texts(model, PROMPTS, max_len=50, do_sample=False, batch_size=4)
    assert got == [_greedy_text(model, p, 50) for p in PROMPTS]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_sampling_is_independent_of_batching(name, request):
    model = request.getfixturevalue(name)
    together = sample_texts(model, PROMPTS, max_len=40, seed=3, batch_size=4)
    alone = [sample_texts(model, [p], max_len=40, seed=3)[0] for p in PROMPTS]
    assert together == alone == sample_texts(model, PROMPTS[::-1], max_len=40, seed=3, batch_size=3)[::-1]
    assert len(set(together)) == len(PROMPTS)


def test_pick_next_samples_the_top_k_distribution():
    logits = torch.tensor([[0.0, 2.0, 1.0, -5.0]]).expand(4000, 4)
    u = torch.rand(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = pick_next(logits, 2, u)
    assert set(got.tolist()) == {1, 2}  # only the top 2
    p1 = 1 / (1 + math.exp(-1.0))  # softmax over the top two logits (2, 1)
    assert abs((got == 1).double().mean().item() - p1) < 0.03
    assert pick_next(logits[:1], None, None).tolist() == [1]  # greedy
    assert pick_next(logits[:2], 3, torch.tensor([0.0, 1.0])).tolist() == [1, 0]  # CDF ends, clamped


def test_prompt_longer_than_max_len_is_kept_whole(tiny_llama):
    (text,) = sample_texts(tiny_llama, ["A prompt of more than ten bytes"], max_len=10)
    assert text == "A prompt of more than ten bytes"


# ----------------------------------------------------------------------------- records


def record(i: int, **kw) -> EditRecord:
    base = dict(
        id=f"t/{i}", prompt=f"Person {i} lives in", subject=f"Person {i}", target_new="Rome", ground_truth=("Oslo",),
        rephrase=(f"The home of Person {i} is",),
        portability={"Reasoning": (Probe(f"The country Person {i} lives in is", ("Italy", "IT")),)},
        locality={"Relation_Specificity": (Probe("Water is", ("wet",)), Probe("Fire is", ("hot",)))},
    )
    return EditRecord(**{**base, **kw})


def test_evaluate_rows_on_tiny_model(tiny_llama):
    recs = [record(0), record(1, rephrase=(), portability={})]
    rows = evaluate(tiny_llama, recs, EvalConfig(fluency_max_len=30, progress=False))
    assert [r["id"] for r in rows] == ["t/0", "t/1"]
    for r in rows:
        assert 0 <= r["edit_succ"] <= 1 and r["edit_em"] in (0.0, 1.0)
        assert r["locality"] == 1.0  # no reference given: the model against itself
        assert r["fluency"] >= 0 and r["text"].startswith(r["id"].replace("t/", "Person ") + " lives in")
    assert not math.isnan(rows[0]["generalization"]) and math.isnan(rows[1]["generalization"])
    assert "portability.Reasoning" in rows[0] and math.isnan(rows[1]["portability"])


def test_evaluate_scores_by_hand():
    # the repeat model predicts each answer token as the token before it: " ttt" -> [n, " ", t, t] vs
    # [" ", t, t, t] scores 2/4; " Italy" -> [s, " ", I, t, a, l] vs [" ", I, t, a, l, y] scores 0
    m = fake_model()
    rows = evaluate(m, [record(0, target_new="ttt")], EvalConfig(fluency=False, progress=False))
    r = rows[0]
    assert r["edit_succ"] == 0.5 and r["generalization"] == 0.5 and r["portability"] == 0.0
    assert r["edit_em"] == 0.0 and r["portability.Reasoning"] == 0.0 and math.isnan(r["fluency"])
    assert "text" not in r


def test_probes_without_answer_are_skipped(tiny_llama):
    # 27 WikiData_counterfact probes have an empty ground truth (e.g. wiki_counterfact/14)
    empty = Probe("The father of X is", ())
    r = record(0, portability={"Logical_Generalization": (empty,)},
               locality={"Relation_Specificity": (empty, Probe("Water is", ("wet",)))})
    cfg = EvalConfig(fluency=False, progress=False)
    ref = locality_reference(tiny_llama, [r], cfg)
    assert len(ref.tokens["t/0"]["Relation_Specificity"]) == 1
    (row,) = evaluate(tiny_llama, [r], cfg, locality_ref=ref)
    assert math.isnan(row["portability"]) and "portability.Logical_Generalization" not in row
    assert row["locality"] == 1.0


def test_locality_against_reference(tiny_llama):
    from intattn_tl.edit.transaction import WeightTransaction

    recs = [record(0), record(1)]
    cfg = EvalConfig(fluency=False, progress=False)
    ref = locality_reference(tiny_llama, recs, cfg)
    assert set(ref.tokens) == {"t/0", "t/1"} and len(ref.tokens["t/0"]["Relation_Specificity"]) == 2
    assert all(r["locality"] == 1.0 for r in evaluate(tiny_llama, recs, cfg, locality_ref=ref))
    tx = WeightTransaction(tiny_llama)
    try:
        for layer in range(tiny_llama.spec.n_layers):  # a large random edit changes predictions
            w = tiny_llama.spec.w_out[layer]
            tx.update("w_out", layer, torch.randn(w.shape, generator=torch.Generator().manual_seed(layer)) * 5)
        rows = evaluate(tiny_llama, recs, cfg, locality_ref=ref)
    finally:
        tx.rollback()
    assert min(r["locality"] for r in rows) < 1.0
    assert all(r["locality"] == 1.0 for r in evaluate(tiny_llama, recs, cfg, locality_ref=ref))  # rolled back


def test_locality_reference_must_cover_the_records(tiny_llama):
    cfg = EvalConfig(fluency=False, progress=False)
    ref = locality_reference(tiny_llama, [record(0)], cfg)
    with pytest.raises(ValueError, match="t/1"):
        evaluate(tiny_llama, [record(0), record(1)], cfg, locality_ref=ref)
    with pytest.raises(ValueError, match="empty"):
        evaluate(tiny_llama, [], cfg)
    with pytest.raises(ValueError, match="unique"):
        evaluate(tiny_llama, [record(0), record(0)], cfg)


def test_reference_is_computed_once(tiny_llama):
    m = fake_model()
    recs = [record(i) for i in range(5)]
    cfg = EvalConfig(fluency=False, progress=False, batch_size=100)
    ref = locality_reference(m, recs, cfg)
    assert m.hf_model.calls == 1  # 10 locality prompts, one padded batch
    evaluate(m, recs, cfg, locality_ref=ref)
    assert m.hf_model.calls == 2  # edit + rephrase + portability + locality prompts together: one more batch
    assert isinstance(ref, LocalityReference)


# ----------------------------------------------------------------------------- summary + table


def test_summarize_by_hand():
    rows = [
        {"id": "a", "edit_succ": 1.0, "generalization": math.nan, "portability.Reasoning": 0.5,
         "portability.Subject_Aliasing": 1.0, "portability": 0.75, "locality": 1.0, "fluency": 5.0, "text": "x"},
        {"id": "b", "edit_succ": 0.5, "generalization": 0.25, "portability.Reasoning": 0.0, "portability": 0.0,
         "locality": 0.5, "fluency": 6.0},
    ]
    s = summarize(rows)
    assert s["edit_succ"] == 75.0
    assert s["generalization"] == 25.0  # NaN skipped
    assert s["portability.Reasoning"] == 25.0 and s["portability.Subject_Aliasing"] == 100.0
    assert s["portability"] == 37.5  # per record the mean over its kinds, then over records (KnowEdit runner)
    assert s["locality"] == 75.0 and s["fluency"] == 550.0 and s["n_records"] == 2
    assert "text" not in s and "id" not in s
    by_kind = summarize(rows, by="kind")
    assert by_kind["portability"] == 62.5  # mean over kinds of the per-kind means
    assert {k: v for k, v in by_kind.items() if k != "portability"} == {k: v for k, v in s.items() if k != "portability"}
    with pytest.raises(ValueError, match="by must be"):
        summarize(rows, by="kinds")


def test_format_table():
    table = format_table([{"method": "ROME", "edit_succ": 97.123, "locality": math.nan, "fluency": 512.0}])
    lines = table.splitlines()
    assert lines[0] == "| method | Edit Succ. | Locality | Fluency |"
    assert lines[2] == "| ROME | 97.12 | - | 512.00 |"
    assert "Custom" in format_table({"x": "a", "Custom": 1.0}, columns=["Custom"])


# ----------------------------------------------------------------------------- real model


@pytest.mark.real_model
def test_pre_edit_metrics_on_smollm(smollm, wiki_records):
    recs = wiki_records[:6]
    cfg = EvalConfig(fluency_max_len=40, progress=False)
    rows = evaluate(smollm, recs, cfg)
    s = summarize(rows)
    assert s["edit_succ"] < 40  # the counterfactual target is not what the model says
    assert s["edit_em"] <= s["edit_succ"]
    assert s["locality"] == 100.0
    assert 200 < s["fluency"] < 800  # sampled English, not a repeated token
    assert math.isnan(s["generalization"])  # WikiData_counterfact has no rephrase prompts
    truth = [EditRecord(**{**r.to_dict(), "target_new": r.ground_truth[0], "rephrase": (), "portability": {},
                           "locality": {}}) for r in recs]
    s_truth = summarize(evaluate(smollm, truth, EvalConfig(fluency=False, progress=False)))
    assert s_truth["edit_succ"] > s["edit_succ"]  # the model prefers the true fact


@pytest.mark.real_model
def test_cached_batched_generation_and_answer_argmax_on_smollm(smollm, wiki_records):
    prompts = [r.prompt for r in wiki_records[:3]] + ["Hi"]  # different lengths in one batch
    max_len = max(len(prompt_ids(smollm.tokenizer, p)) for p in prompts) + 12
    batched = sample_texts(smollm, prompts, max_len=max_len, do_sample=False, batch_size=4)
    assert batched == [_greedy_text(smollm, p, max_len) for p in prompts]  # cached == uncached, batched == single
    sampled = sample_texts(smollm, prompts, max_len=max_len, seed=1, batch_size=4)
    assert sampled == [sample_texts(smollm, [p], max_len=max_len, seed=1)[0] for p in prompts]
    # the unembedding at answer positions only gives the argmax of the full logits
    pairs = [(prompt_ids(smollm.tokenizer, r.prompt), answer_ids(smollm.tokenizer, r.prompt, r.target_new))
             for r in wiki_records[:8]]
    with torch.no_grad():
        full = [smollm.bridge(torch.tensor([p + a]))[0, len(p) - 1: len(p) + len(a) - 1].argmax(-1).tolist()
                for p, a in pairs]
    assert answer_argmax(smollm, pairs, batch_size=8) == full
