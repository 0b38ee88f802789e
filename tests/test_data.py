import json
import shutil

import pytest

from intattn_tl.data import records as data
from intattn_tl.data.records import DataError, EditRecord, answers, validate


@pytest.mark.parametrize("name", ["zsre", "wiki_counterfact", "counterfact"])
def test_edit_loaders_match_manifest_counts(name):
    records = data.load_edits(name)
    assert len(records) == data.FILES[name].records
    assert all(r.subject in r.prompt and r.target_new.strip() for r in records)


def test_known_and_mquake_counts():
    assert len(data.load_known_facts()) == 1209
    cases = data.load_mquake()
    assert len(cases) == 429 and all(len(c.edits) >= 1 for c in cases)
    assert all(e.subject in e.prompt for c in cases for e in c.edits)


def test_corpus_is_wikitext():
    text = data.load_corpus()
    assert len(text.split()) > 200_000


def test_portability_counts_zsre():
    records = data.load_edits("zsre")
    counts = {k: sum(k in r.portability for r in records) for k in ("Reasoning", "Logical_Generalization", "Subject_Aliasing")}
    assert counts == {"Reasoning": 771, "Logical_Generalization": 267, "Subject_Aliasing": 263}


def test_wiki_counterfact_aliases_flattened():
    r = data.load_edits("wiki_counterfact", limit=1)[0]
    assert r.portability["Reasoning"][0].answers[:2] == ("Syrian pound", "SYP")
    assert r.ground_truth == ("United States of America",)


def test_answers_accepts_all_shapes():
    assert answers("a") == ("a",)
    assert answers(["a", "b"]) == ("a", "b")
    assert answers([["a", "a2"], ["b"]]) == ("a", "a2", "b")
    with pytest.raises(DataError):
        answers(3)


def test_invalid_records_are_named_or_skipped(tmp_path, capsys):
    bad = EditRecord(id="x/1", prompt="Paris is nice", subject="Rome", target_new="Italy", ground_truth=("France",))
    with pytest.raises(DataError, match="x/1.*does not occur"):
        validate(bad)
    empty = EditRecord(id="x/2", prompt="Rome is in", subject="Rome", target_new=" ", ground_truth=("Italy",))
    with pytest.raises(DataError, match="x/2.*empty"):
        validate(empty)
    assert data._checked([bad, empty], skip_invalid=True) == []
    assert "skipped 2" in capsys.readouterr().out


def test_checksum_mismatch_and_missing_file(tmp_path):
    root = tmp_path / "data"
    (root / "knowedit").mkdir(parents=True)
    src = data.data_path("zsre")
    records = json.loads(src.read_text())
    (root / "knowedit" / "ZsRE-test-all.json").write_text(json.dumps(records[:5]))
    with pytest.raises(DataError, match="sha256"):
        data.load_edits("zsre", data_dir=root)
    with pytest.raises(DataError, match="not found"):
        data.load_edits("wiki_counterfact", data_dir=root)
    shutil.copy(src, root / "knowedit" / "ZsRE-test-all.json")
    assert len(data.load_edits("zsre", limit=3, data_dir=root)) == 3


def test_as_dataset_roundtrip():
    ds = data.as_dataset(data.load_edits("wiki_counterfact", limit=4))
    assert ds.num_rows == 4 and ds[0]["subject"] == "Leonardo DiCaprio"
    assert {p["kind"] for p in ds[0]["portability"]} == {"Reasoning", "Subject_Aliasing"}


def test_packaged_copies_are_found_without_any_data_folder(tmp_path, monkeypatch):
    """A fresh install (no $INTATTN_DATA, no folder beside the checkout) reads the copies in the package,
    decompressed into the cache and verified; a damaged cached copy is written again, never served."""
    monkeypatch.delenv("INTATTN_DATA", raising=False)
    monkeypatch.setenv("INTATTN_CACHE", str(tmp_path / "cache"))
    path = data.data_path("zsre")
    assert path.is_relative_to(tmp_path / "cache") and data.sha256_file(path) == data.FILES["zsre"].sha256
    assert len(data.load_edits("zsre")) == 1301
    path.write_text("[]")  # damaged in the cache
    assert data.sha256_file(data.data_path("zsre")) == data.FILES["zsre"].sha256
    for name in data.FILES:  # every file the toolkit reads ships, and decompresses to the manifest's content
        assert data.sha256_file(data.data_path(name)) == data.FILES[name].sha256


def test_explicit_folder_wins_and_a_missing_one_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("INTATTN_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"INTATTN_DATA.*unset it to use the copies shipped"):
        data.data_path("zsre")
    with pytest.raises(DataError, match="the data folder given"):
        data.data_path("zsre", tmp_path)
