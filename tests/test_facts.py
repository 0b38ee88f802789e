"""Your own facts: tuples, dicts and files with EasyEdit's names become checked records; the model's own answer
stands in for a missing ground truth; bad requests are refused before any generation."""

from __future__ import annotations

import json

import pytest

from intattn_tl.data.records import DataError
from intattn_tl.data.requests import EditRequest, read_requests
from intattn_tl.api import edit_records, own_answer


def test_tuples_dicts_and_requests(tiny_llama):
    recs = edit_records(tiny_llama, [("The Eiffel Tower is in", "Eiffel Tower", "Rome", "Paris"),
                                     {"prompt": "Spain's capital is", "subject": "Spain", "target_new": "Oslo",
                                      "rephrase_prompt": "The capital of Spain is",
                                      "locality": {"Relation_Specificity": [{"prompt": "Rome is in", "ground_truth": "Italy"}]}},
                                     EditRequest("Bob plays", "Bob", "oboe", id="mine")])
    assert [r.id for r in recs] == ["fact/0", "fact/1", "mine"]
    assert recs[0].ground_truth == ("Paris",)
    assert recs[1].rephrase == ("The capital of Spain is",) and recs[1].locality["Relation_Specificity"][0].answers == ("Italy",)
    assert recs[1].ground_truth == (own_answer(tiny_llama, "Spain's capital is"),) and recs[1].ground_truth[0]
    assert recs[2].ground_truth and recs[2].id == "mine"


def test_bad_requests_are_refused_before_generation(tiny_llama, monkeypatch):
    monkeypatch.setattr("intattn_tl.api.own_answer", lambda *a: pytest.fail("generated before checking"))
    with pytest.raises(DataError, match="does not occur in prompt"):
        edit_records(tiny_llama, [("A fine prompt", "Eiffel", "Rome"), ("The Eiffel Tower is in", "Louvre", "Rome")])
    with pytest.raises(DataError, match="target_new is empty"):
        edit_records(tiny_llama, [("The Eiffel Tower is in", "Eiffel Tower", " ")])
    with pytest.raises(DataError, match="missing or non-text"):
        edit_records(tiny_llama, [{"prompt": "x", "subject": "x"}])
    with pytest.raises(DataError, match="expected"):
        edit_records(tiny_llama, ["just a string"])
    with pytest.raises(DataError, match="no edit request"):
        edit_records(tiny_llama, [])


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_request_files(tmp_path, suffix):
    rows = [{"prompt": "The Eiffel Tower is in", "subject": "Eiffel Tower", "target_new": "Rome", "ground_truth": "Paris"},
            {"prompt": "Bob plays", "subject": "Bob", "target_new": "oboe", "locality_prompt": "Ann plays",
             "locality_ground_truth": "piano"}]
    path = tmp_path / f"requests{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        path.write_text(",".join(keys) + "\n" + "\n".join(",".join(r.get(k, "") for k in keys) for r in rows) + "\n")
    got = read_requests(path)
    assert [r.target_new for r in got] == ["Rome", "oboe"] and got[0].ground_truth == ("Paris",)
    assert got[1].locality["Neighborhood"][0].prompt == "Ann plays"
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_requests(bad)
    with pytest.raises(DataError, match="not found"):
        read_requests(tmp_path / "missing.csv")


def test_edit_cli_with_your_own_facts_and_export(tmp_path, capsys):
    from intattn_tl.cli import main

    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"prompt": "Bobo plays the", "subject": "Bobo", "target_new": "oboe",
                                    "ground_truth": "drums"}) + "\n")
    args = ["edit", "--model", "tiny-llama", "--method", "memit", "--fact", "The capital of Zorbania is", "Zorbania",
            "Quix", "--requests", str(requests), "--no-fluency", "--quiet", "--set", "layers=[1,2]",
            "--set", "mom2_n_samples=256", "--set", "v_num_grad_steps=3", "--set", "use_prefixes=false"]
    assert main([*args, "--export", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "fact/0: 'The capital of Zorbania is' -> 'Quix'" in out and "(was 'drums')" in out
    card = json.loads((tmp_path / "out" / "intattn_edits.json").read_text())
    assert [r["target_new"] for r in card["edits"][0]["requests"]] == ["Quix", "oboe"]
    # bad requests are refused before the model loads; an existing export folder too
    assert main([*args[:5], "--fact", "A prompt", "Nobody", "X"]) == 2
    assert "does not occur in prompt" in capsys.readouterr().err
    assert main([*args, "--export", str(tmp_path / "out")]) == 2
    assert "exists" in capsys.readouterr().err


def test_edit_takes_plain_strings(tiny_llama):
    from intattn_tl.edit.transaction import EditState
    from intattn_tl.api import edit
    from intattn_tl.methods.memit import MEMITHparams

    hp = MEMITHparams(layers=[1, 2], mom2_update_weight=1.0, mom2_n_samples=256, v_num_grad_steps=3, use_prefixes=False)
    result = edit(tiny_llama, [("The capital of Zorbania is", "Zorbania", "Quix")], "memit", hp, EditState())
    try:
        (record,) = result.records
        assert record.id == "fact/0" and record.target_new == "Quix" and record.ground_truth[0] != "?"
        assert set(result.deltas) == {"w_out.1", "w_out.2"}
    finally:
        result.rollback()
