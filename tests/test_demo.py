"""`intattn demo` end to end on the tiny model: every output written, the table printed, weights restored."""

import json

import pytest
import torch
from wandb_offline import runs, table

from intattn_tl.cli import main
from intattn_tl.diagnostics import demo
from intattn_tl.evaluation.metrics import NAMES
from intattn_tl.model.load import load_model
from intattn_tl.model.spec import weights_fingerprint

TINY = ["--model", "tiny-llama", "--limit", "2", "--samples", "2", "--fluency-len", "12", "--greedy-len", "4",
        "--quiet", "--set", "mom2_n_samples=256", "--set", "v_num_grad_steps=3", "--set", "use_prefixes=false"]


def test_demo_writes_everything_and_restores_the_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INTATTN_CACHE", str(tmp_path / "cache"))  # cold: statistics and targets computed here
    monkeypatch.setenv("WANDB_MODE", "offline")  # the default logging, into $WANDB_DIR = tmp_path (conftest)
    out = tmp_path / "demo"
    snapshots = []
    from intattn_tl import api

    original_edit = api.edit

    def spy(model, records, method, hparams=None, state=None, progress=False, **options):
        result = original_edit(model, records, method, hparams, state, progress, **options)
        snapshots.append((method, model, {k: v.clone() for k, v in result.tx.originals.items()},
                          {k: getattr(model.spec, k[0])[k[1]].clone() for k in result.tx.originals}))
        return result

    monkeypatch.setattr(api, "edit", spy)
    assert main(["demo", *TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out

    for name in ("trace_attn_window.png", "trace_mlp_window.png", "trace_attn_window.npz", "trace_mlp_window.npz",
                 "metrics.png", "metrics.csv", "table.md", "summary.json", "demo.log"):
        assert (out / name).stat().st_size > 0, name
    header = "| method | " + " | ".join(NAMES[k] for k in demo.COLUMNS) + " |"
    assert header in text and header in (out / "table.md").read_text()
    for row in ("| pre-edit |", "| MEMIT |", "| IntAttn-Edit |"):
        assert row in text
    assert text.count("restored bit-exact (verified)") == 2
    assert "no committed tracing result for tiny-llama" in text
    assert "demo settings differ" in text and "greedy continuation" in text

    # each editor changed weights, and after its rollback those tensors equal the originals bit for bit
    assert [m for m, *_ in snapshots] == ["memit", "intattn"]
    model = snapshots[0][1]
    for method, _, originals, edited in snapshots:
        assert {k for k, _ in originals} == ({"w_out"} if method == "memit" else {"w_out", "w_o"})
        assert any(not torch.equal(edited[k], originals[k]) for k in originals), method
        for (kind, layer), original in originals.items():
            assert torch.equal(getattr(model.spec, kind)[layer], original)
    assert weights_fingerprint(model) == weights_fingerprint(load_model("tiny-llama"))

    summary = json.loads((out / "summary.json").read_text())
    assert [m["method"] for m in summary["metrics"]] == ["pre-edit", "MEMIT", "IntAttn-Edit"]
    assert summary["metrics"][0]["locality"] == pytest.approx(100.0)
    assert all(e["restored_bit_exact"] for e in summary["edits"].values())
    assert summary["alpha"]["source"] is None and summary["alpha"]["used"]["alpha"] == pytest.approx(0.3)
    assert list((tmp_path / "cache").glob("targets-v2/*/*.pt")), "the targets were cached for both editors"

    # one W&B run: both editors' resolved settings, each edit's chain statistics, the metrics and the figures
    (run,) = runs(tmp_path)
    assert "W&B run logged offline" in text and run["job_type"] == "demo"
    settings = run["config"]["settings"]
    assert settings["memit"]["hparams"]["mom2_n_samples"] == 256 and settings["intattn"]["hparams"]["alpha"] == 0.3
    assert run["config"]["limit"] == 2 and run["config"]["eval_config"]["fluency_max_len"] == 12
    for m in summary["metrics"]:
        assert run["summary"][f"{m['method']}/edit_succ"] == pytest.approx(m["edit_succ"])
    assert run["summary"]["IntAttn-Edit/alpha"] == pytest.approx(0.3)
    chain = table(run, "IntAttn-Edit/edit_steps")
    kinds = [r[chain["columns"].index("kind")] for r in chain["data"]]
    assert "w_o" in kinds and "w_out" in kinds and "chain_ratio" in chain["columns"]
    assert {r[0] for r in table(run, "MEMIT/edit_weights")["data"]} == {0}  # one batch
    assert len(table(run, "per_record")["data"]) == 3 * 2  # pre-edit, MEMIT, IntAttn-Edit x 2 records
    for name in ("trace_attn_window", "trace_mlp_window", "metrics"):
        assert (run["dir"] / "files" / run["summary"][f"{name}/path"]).stat().st_size > 1000


@pytest.mark.parametrize("extra, message", [
    (["--limit", "0"], "--limit"),
    (["--samples", "0"], "--samples"),
    (["--threads", "0"], "--threads"),
    (["--set", "nope=1"], "unknown memit hyperparameter"),
])
def test_demo_bad_arguments_fail_before_any_work(extra, message, tmp_path, capsys):
    assert main(["demo", *TINY, "--out", str(tmp_path / "d"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
