"""W&B helper: offline by default, and what an offline run writes to disk."""

from __future__ import annotations

import json
import math
import time

import pytest

from intattn_tl.repro import tracking


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_offline_unless_configured(clean_env, monkeypatch):
    assert not tracking.wandb_configured() and tracking.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_mode() == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.wandb_mode() == "online"


def test_netrc_login_means_online(clean_env):
    netrc = clean_env / ".netrc"
    netrc.write_text("machine example.com login a password b\n")
    netrc.chmod(0o600)
    assert tracking.wandb_mode() == "offline"  # a netrc without W&B does not count
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert tracking.wandb_mode() == "online"


def test_offline_run_writes_config_summary_and_table(clean_env):
    run = tracking.start_run("eval", {"model": "tiny-llama", "limit": 2}, name="t", dir=clean_env / "wb")
    summary = {"edit_succ": 12.5, "fluency": math.nan, "n_records": 2}
    rows = [{"id": "r/0", "edit_succ": 0.25, "text": "hello"}, {"id": "r/1", "edit_succ": math.nan}]
    tracking.log_results(run, summary, rows)
    run_dir = tracking.finish(run)
    assert run_dir.parent == clean_env / "wb" / "wandb" and run_dir.name.startswith("offline-run-")
    (table,) = (run_dir / "files" / "media" / "table").glob("per_record_*.table.json")
    assert json.loads(table.read_text()) == {
        "columns": ["id", "edit_succ", "text"], "data": [["r/0", 0.25, "hello"], ["r/1", None, None]]}
    # protobuf records: keys and JSON values appear verbatim; the W&B service may still be flushing the file
    needles = (b"tiny-llama", b"limit", b"edit_succ", b"12.5", b"n_records")
    for _ in range(60):
        log = next(run_dir.glob("run-*.wandb")).read_bytes()
        if all(n in log for n in needles):
            break
        time.sleep(0.5)
    assert [n for n in needles if n not in log] == []


# ----------------------------------------------------------------------------- the commands log by default

import intattn_tl.repro.sweep  # noqa: E402,F401  imported before `no_model` patches models.load_model (else it keeps the patch)
from intattn_tl.cli import build_parser, main
from tiny_edit import FAST  # noqa: E402
from wandb_offline import runs, table  # noqa: E402

from intattn_tl.core import paths

CACHE = paths.cache_dir()  # the user's, read before a test moves HOME: statistics stay warm
FACT = ("I Paris is", "Paris", "France")  # byte tokens: the tiny model traces it in well under a second
MEMIT_FAST = [a for k, v in FAST.items() for a in ("--set", f"memit.{k}={json.dumps(v)}")]


@pytest.fixture
def default_env(clean_env, monkeypatch):
    """The user's default: no W&B settings, no credentials, no WANDB_DIR; the working directory is tmp."""
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("INTATTN_CACHE", str(CACHE))
    monkeypatch.chdir(clean_env)
    return clean_env


@pytest.mark.parametrize("command", ["trace", "edit", "demo", "eval", "reproduce"])
def test_every_logging_command_takes_no_wandb_and_the_old_opt_in(command, monkeypatch):
    required = {"trace": ["--out", "x"], "reproduce": ["table2"]}.get(command, [])
    parse = lambda *a: build_parser([command]).parse_args([command, *required, *a])  # noqa: E731
    assert parse().wandb and parse("--wandb").wandb and not parse("--no-wandb").wandb
    with pytest.raises(SystemExit):
        parse("--wandb", "--no-wandb")
    assert tracking.wanted(parse()) is False  # conftest: WANDB_MODE=disabled
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.wanted(parse()) and not tracking.wanted(parse("--no-wandb"))


def test_an_unwritable_wandb_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys, no_model):
    monkeypatch.setenv("WANDB_MODE", "offline")
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("WANDB_DIR", str(blocker))  # WANDB_DIR/wandb cannot be made inside a file
    assert main(["trace", "--model", "tiny-llama", "--fact", *FACT[:2], "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "W&B folder" in err and "--no-wandb" in err
    from intattn_tl.cli.common import preflight

    argv = ["trace", "--model", "tiny-llama", "--out", str(tmp_path / "t"), "--no-wandb"]
    preflight(build_parser(argv).parse_args(argv))  # not logging: the folder does not matter


def test_trace_logs_one_offline_run_with_alpha_layers_curves_and_heatmaps(default_env, capsys):
    out = default_env / "trace"
    argv = ["trace", "--model", "tiny-llama", "--fact", *FACT, "--out", str(out), "--samples", "2", "--window", "2",
            "--attn-width", "1", "--mlp-width", "2", "--min-ld-gap=-inf", "--seed", "2"]
    assert main(argv) == 0
    assert "W&B run logged offline: " in capsys.readouterr().out
    (run,) = runs(default_env)  # ./wandb: the default folder
    record = json.loads((out / "tiny-llama.json").read_text())
    assert run["job_type"] == "trace"
    config = run["config"]
    assert config["model"] == "tiny-llama" and config["n_samples"] == 2 and config["window"] == 2
    assert config["kinds"] == ["resid", "attn", "mlp", "attn_window", "mlp_window"] and config["dtype"] == "float32"
    assert config["fact"] == [list(FACT)] and config["code"]["package"]
    summary = run["summary"]
    assert summary["alpha"] == record["alpha"] and 0 <= summary["alpha"] <= 1
    assert summary["attn_layers"] == record["attn_layers"] and len(summary["mlp_layers"]) == 2
    curves = table(run, "layer_curves")
    assert curves["columns"][:4] == ["kind", "layer", "ld", "ld_se"] and "prob" in curves["columns"]
    assert len(curves["data"]) == 5 * 4  # kinds x layers of the tiny model
    ld = {(r[0], r[1]): r[2] for r in curves["data"]}  # the curves alpha came from
    assert [round(ld[("attn_window", l)], 4) for l in range(4)] == record["ld_last_subject"]["attn"]
    for name in ("fig1_heatmaps", "fig1_heatmaps_single", "fig2_last_subject"):
        assert (run["dir"] / "files" / summary[f"{name}/path"]).stat().st_size > 1000, name
    assert len(table(run, "effects")["data"]) == 2 * 5 * 4 * 6  # (ld, prob) x kinds x layers x token classes
    # --no-wandb: the same trace (resumed from its stored facts) logs nothing
    assert main([*argv, "--no-wandb"]) == 0
    assert len(runs(default_env)) == 1


def test_reproduce_quick_logs_every_cell_with_its_resolved_settings(default_env, capsys):
    out = default_env / "runs"
    assert main(["reproduce", "table2", "--model", "tiny-llama", "--quick", "--no-fluency", "--methods", "memit",
                 *MEMIT_FAST, "--out", str(out)]) == 0
    assert "W&B: " in capsys.readouterr().out
    logged = {(r["config"]["method"], r["config"]["T"]): r for r in runs(default_env)}
    assert set(logged) == {(m, T) for m in ("pre-edit", "memit") for T in (4, 8)}  # QUICK: T = 4, 8
    for (method, T), run in logged.items():
        cell = json.loads((out / "table2-tiny-llama" / "cells" / f"{method}-T{T}.json").read_text())
        config, summary = run["config"], run["summary"]
        assert run["job_type"] == "table2" and run["group"] == "table2-tiny-llama"
        assert config["model"] == "tiny-llama" and config["dataset"] == "wiki_counterfact"
        assert config["dtype"] == "float32" and config["code"] == cell["settings"]["code"]
        assert config["eval"] == cell["settings"]["eval"] and config["eval"]["fluency"] is False
        assert config["eval_config"]["fluency_max_len"] == 40  # --quick
        assert summary["edit_succ"] == pytest.approx(cell["edit_succ"]) and summary["n"] == T
        assert len(table(run, "per_record")["data"]) == T
    hparams = logged[("memit", 8)]["config"]["hparams"]
    assert hparams["layers"] == [1, 2] and hparams["v_num_grad_steps"] == 3  # as used: --set and resolved
    assert main(["reproduce", "table2", "--model", "tiny-llama", "--quick", "--no-fluency", "--methods", "memit",
                 *MEMIT_FAST, "--sizes", "2", "--out", str(default_env / "other"), "--no-wandb"]) == 0
    assert len(runs(default_env)) == 4


def test_sweep_alpha_logs_each_point_with_its_per_record_rows(default_env):
    from intattn_tl.core.store import read_rows

    out = default_env / "runs"
    assert main(["reproduce", "sweep-alpha", "--model", "tiny-llama", "--quick", "--no-fluency", "--grid", "0.5",
                 "--dataset", "zsre", "--out", str(out)]) == 0
    (run,) = runs(default_env)
    assert run["project"] == "intattn-tl-alpha" and run["config"]["alpha"] == 0.5 and run["config"]["T"] == 4
    assert run["config"]["hparams"]["alpha"] == 0.5 and run["config"]["dataset"] == "zsre"
    rows = read_rows(out / "sweep-tiny-llama-zsre-T4" / "points" / "alpha-0.500.csv")
    logged = table(run, "per_record")
    assert [r[logged["columns"].index("id")] for r in logged["data"]] == [r["id"] for r in rows]
    assert run["summary"]["edit_succ"] == pytest.approx(json.loads(
        (out / "sweep-tiny-llama-zsre-T4" / "points" / "alpha-0.500.json").read_text())["edit_succ"])


def test_edit_logs_resolved_hparams_chain_statistics_and_metrics(default_env):
    argv = ["edit", "--model", "tiny-llama", "--limit", "2", "--no-fluency", "--quiet", "--method", "intattn",
            "--alpha", "0.4", "--set", "attn_layers=[0]", *[a for k, v in FAST.items() for a in ("--set", f"{k}={json.dumps(v)}")]]
    assert main(argv) == 0
    (run,) = runs(default_env)
    config, summary = run["config"], run["summary"]
    assert config["settings"]["method"] == "intattn" and config["settings"]["hparams"]["alpha"] == 0.4
    assert config["settings"]["hparams"]["attn_layers"] == [0] and config["settings"]["hparams"]["layers"] == [1, 2]
    assert config["record_ids"] == ["wiki_counterfact/0", "wiki_counterfact/1"]
    assert summary["alpha"] == 0.4 and 0 <= summary["post/edit_succ"] <= 100 and "pre/locality" in summary
    steps = table(run, "edit_steps")
    col = {c: i for i, c in enumerate(steps["columns"])}
    assert [(r[col["kind"]], r[col["layer"]]) for r in steps["data"]] == [("w_o", 0), ("w_out", 1), ("w_out", 2)]
    assert all(r[col["delta_norm"]] > 0 and r[col["chain_ratio"]] > 0 for r in steps["data"])
    weights = table(run, "edit_weights")
    wcol = {c: i for i, c in enumerate(weights["columns"])}
    assert sorted((r[wcol["kind"]], r[wcol["layer"]]) for r in weights["data"]) == [("w_o", 0), ("w_out", 1), ("w_out", 2)]
    assert all(0 < r[wcol["relative"]] == pytest.approx(r[wcol["delta_norm"]] / r[wcol["weight_norm"]])
               for r in weights["data"])
    rows = table(run, "per_record")
    assert [r[rows["columns"].index("stage")] for r in rows["data"]] == ["pre", "pre", "post", "post"]
    assert main([*argv, "--no-wandb"]) == 0 and len(runs(default_env)) == 1


def test_edit_log_of_one_edit_at_a_time_methods(tiny_llama):
    from intattn_tl.data.records import load_edits
    from intattn_tl.api import edit
    from intattn_tl.config.hparams import load_hparams

    records = load_edits("wiki_counterfact", limit=2)
    hp = load_hparams("rome", "tiny-llama", {k: v for k, v in FAST.items() if k != "layers"} | {"layers": [1]})
    result = edit(tiny_llama, records, "rome", hp, conflicts="allow")
    try:
        summary, tables = tracking.edit_log([result], prefix="ROME/")
    finally:
        result.rollback()
    steps = tables["ROME/edit_steps"]
    assert [s["edit"] for s in steps] == [r.id for r in records] and all(s["layer"] == 1 for s in steps)
    assert all(0 < s["delta_norm"] < s["weight_norm"] for s in steps)
    (weight,) = tables["ROME/edit_weights"]
    assert (weight["kind"], weight["layer"]) == ("w_out", 1) and weight["delta_norm"] > 0
    assert summary["ROME/delta_norm"] == steps[-1]["delta_norm"] and "ROME/probe_kl" in summary
