"""`intattn eval` through `intattn_tl.cli.main`."""

from __future__ import annotations

import csv

import pytest

from intattn_tl.cli import main
from wandb_offline import runs, table


def test_eval_help(capsys):
    assert main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--dataset", "--limit", "--no-wandb", "--out", "--no-fluency"):
        assert flag in out


def test_eval_tiny_model_table_csv_and_wandb(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the offline W&B run goes to ./wandb
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "rows.csv"
    rc = main(["eval", "--model", "tiny-llama", "--dataset", "wiki_counterfact", "--limit", "3", "--fluency-len", "30",
               "--quiet", "--per-kind", "--out", str(out), "--wandb"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| model | dataset | n | Edit Succ. | Generalization | Portability | Locality | Fluency | Edit EM |" in text
    assert "| tiny-llama | wiki_counterfact | 3 |" in text and "portability.Reasoning" in text
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == ["wiki_counterfact/0", "wiki_counterfact/1", "wiki_counterfact/2"]
    assert all(float(r["locality"]) == 1.0 and 0 <= float(r["edit_succ"]) <= 1 for r in rows)
    assert rows[0]["generalization"] == ""  # no rephrase prompts in this dataset: empty, not "nan"
    (run,) = runs(tmp_path)  # --wandb: the former opt-in, now the default
    assert run["config"]["eval_config"]["fluency_max_len"] == 30 and run["config"]["n_records"] == 3
    assert run["summary"]["locality"] == pytest.approx(100.0) and len(table(run, "per_record")["data"]) == 3


@pytest.mark.parametrize("argv, message", [
    (["--limit", "-1"], "--limit"),
    (["--batch-size", "0"], "--batch-size"),
    (["--model", "no-such-model"], "Unknown model"),
])
def test_eval_bad_input_is_a_clear_error(argv, message, capsys):
    rc = main(["eval", "--model", "tiny-llama", "--limit", "1", "--no-fluency", "--quiet", *argv])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_eval_unknown_dataset_is_rejected(capsys):
    assert main(["eval", "--dataset", "nope"]) == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.real_model
def test_eval_smollm_cli(capsys):
    rc = main(["eval", "--model", "smollm2-135m", "--dataset", "wiki_counterfact", "--limit", "4", "--no-fluency",
               "--quiet"])
    assert rc == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("| smollm2-135m"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    edit_succ, locality = float(cells[3]), float(cells[6])
    assert 0 <= edit_succ < 50 and locality == 100.0
