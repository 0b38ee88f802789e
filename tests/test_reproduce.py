"""The reproduction runner, the α sweep and the W&B sweep files, on the tiny model (fast)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from intattn_tl.evaluation.metrics import EvalConfig
from intattn_tl.repro.tables import TableRun, _marks, load_cells, run_table
from intattn_tl.repro.sweep import run_sweep
from wandb_offline import runs, table

ROOT = Path(__file__).resolve().parents[1]


def test_marks_bold_best_dagger_second_ties_share():
    marks = _marks({"pre-edit": 99.0, "a": 50.0, "b": 70.0, "c": 70.0, "d": 60.0, "e": float("nan")})
    assert marks == {"b": "bold", "c": "bold", "d": "dagger"}


def test_marks_need_something_to_rank_against():
    assert _marks({"pre-edit": 99.0, "rome": 10.0}) == {}  # one method beside pre-edit: not "best"
    assert _marks({"pre-edit": 99.0, "rome": 10.0, "r-rome": 20.0}) == {"r-rome": "bold"}


def test_table_runs_resumes_and_marks(tmp_path):
    run = TableRun(table="table2", model="tiny-llama", sizes=(2, 3), methods=("memit", "intattn"), out=tmp_path,
                   eval_cfg=EvalConfig(fluency=False, progress=False))
    folder = run_table(run)
    cells = load_cells(run)
    assert set(cells) == {(m, T) for m in ("pre-edit", "memit", "intattn") for T in (2, 3)}
    assert cells[("pre-edit", 2)]["locality"] == pytest.approx(100.0)
    assert cells[("memit", 3)]["n"] == 3
    assert cells[("memit", 3)]["device"] == "cpu"  # every cell records where it ran
    table = (folder / "table.md").read_text()
    assert "**T = 3**" in table and "IntAttn-Edit" in table and "first T records" in table
    assert "| Device |" in table and table.count(" | cpu |") == 6
    # a finished cell is not recomputed; a deleted one is
    stamp = (folder / "cells" / "memit-T2.json").stat().st_mtime_ns
    (folder / "cells" / "intattn-T3.json").unlink()
    run_table(run)
    assert (folder / "cells" / "memit-T2.json").stat().st_mtime_ns == stamp
    assert (folder / "cells" / "intattn-T3.json").exists()
    # a later run of one method at a new size adds to the table; earlier cells stay in it
    more = TableRun(table="table2", model="tiny-llama", sizes=(4,), methods=("memit",), out=tmp_path,
                    eval_cfg=EvalConfig(fluency=False, progress=False))
    run_table(more)
    assert set(load_cells(more)) == set(cells) | {("pre-edit", 4), ("memit", 4)}
    table = (folder / "table.md").read_text()
    assert "**T = 2**" in table and "**T = 4**" in table
    assert table.split("**T = 4**")[1].count("| IntAttn-Edit | (not run) |") == 1
    record = json.loads((folder / "run.json").read_text())
    assert record["sizes"] == [2, 3, 4] and record["methods"] == ["memit", "intattn"]
    # cells scored differently (here: with fluency) are refused, not mixed into the same table
    other = TableRun(table="table2", model="tiny-llama", sizes=(2,), methods=("memit",), out=tmp_path,
                     eval_cfg=EvalConfig(fluency=True, progress=False))
    with pytest.raises(ValueError, match="scored with"):
        run_table(other)
    assert json.loads((folder / "run.json").read_text()) == record


def test_unknown_method_fails_before_any_work(tmp_path):
    from intattn_tl.edit.transaction import EditError

    run = TableRun(model="tiny-llama", sizes=(2,), methods=("nope",), out=tmp_path, eval_cfg=EvalConfig(fluency=False))
    with pytest.raises(EditError, match="unknown method"):
        run_table(run)


def test_alpha_sweep_writes_points_and_figure(tmp_path):
    folder = run_sweep("tiny-llama", "zsre", 2, (0.0, 1.0), tmp_path, EvalConfig(fluency=False, progress=False))
    lines = (folder / "points.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("alpha")
    assert {"edit_succ_low", "edit_succ_high", "locality_low"} <= set(lines[0].split(","))  # error bars from rows
    contrasts = list(csv.DictReader((folder / "contrasts.csv").open()))  # α = 1 against α = 0, paired
    assert {(c["alpha"], c["minus_alpha"]) for c in contrasts} == {("1.0", "0.0")}
    assert {c["metric"] for c in contrasts} >= {"edit_succ", "locality"}
    pts = list(csv.DictReader((folder / "points.csv").open()))
    succ = next(c for c in contrasts if c["metric"] == "edit_succ")
    assert float(succ["mean"]) == pytest.approx(float(pts[1]["edit_succ"]) - float(pts[0]["edit_succ"]), abs=1e-9)
    assert (folder / "figure4.png").stat().st_size > 1000
    from intattn_tl.core.store import read_rows

    rows = read_rows(folder / "points" / "alpha-1.000.csv")  # every point keeps its per-record rows
    assert [r["id"] for r in rows] == ["zsre/0", "zsre/1"] and all(r["edit_succ"] is not None for r in rows)


def test_wandb_sweep_config_parses_and_agent_runs_one_point_offline(tmp_path):
    cfg = yaml.safe_load((ROOT / "experiments" / "sweep_alpha.yaml").read_text())
    assert cfg["method"] == "grid" and cfg["program"] == "experiments/sweep_agent.py"
    assert 0.0 in cfg["parameters"]["alpha"]["values"] and 1.0 in cfg["parameters"]["alpha"]["values"]
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "sweep_agent.py"), "--alpha=0.5", "--T=2",
                           "--model=tiny-llama", "--dataset=zsre", "--fluency=false"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'alpha': 0.5" in proc.stdout
    (run,) = runs(tmp_path)  # the point's resolved settings, the agent's arguments, its per-record rows
    assert run["config"]["alpha"] == 0.5 and run["config"]["hparams"]["alpha"] == 0.5
    assert run["config"]["agent"]["T"] == 2 and run["summary"]["T"] == 2
    logged = table(run, "per_record")
    assert [r[logged["columns"].index("id")] for r in logged["data"]] == ["zsre/0", "zsre/1"]


def test_reproduce_cli_quick_on_tiny_model(tmp_path, capsys):
    from intattn_tl.cli import main

    assert main(["reproduce", "table1", "--model", "tiny-llama", "--quick", "--no-fluency", "--methods", "memit",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "zsre" in out and "**T = 8**" in out and "MEMIT" in out
    assert json.loads((tmp_path / "table1-tiny-llama" / "run.json").read_text())["sizes"] == [4, 8]


def test_one_sequence_equals_separate_cells_and_rolls_back(tiny_llama, tmp_path):
    import torch

    from intattn_tl.data.records import load_edits
    from intattn_tl.evaluation.metrics import locality_reference
    from intattn_tl.repro.tables import run_cell, run_sequence

    records = load_edits("wiki_counterfact", limit=3)
    run = TableRun(model="tiny-llama", out=tmp_path, eval_cfg=EvalConfig(fluency_max_len=90, progress=False))
    ref = locality_reference(tiny_llama, records, run.eval_cfg)
    before = {k: v.clone() for k, v in tiny_llama.hf_model.state_dict().items()}
    for method in ("rome", "ft"):  # (R-ROME runs ROME's code with another key)
        got = {}
        run_sequence(tiny_llama, method, records, [3, 1], run, ref, lambda T, s, r: got.__setitem__(T, (s, r)))
        assert all(torch.equal(v, before[k]) for k, v in tiny_llama.hf_model.state_dict().items())  # rolled back
        assert sorted(got) == [1, 3] and all(s["sequence"] == [1, 3] for s, _ in got.values())
        assert got[3][0]["edit_seconds"] >= got[1][0]["edit_seconds"] > 0
        # every edit's own stats, in order, the first T of them in the T cell
        assert [e["id"] for e in got[3][0]["per_edit"]] == [r.id for r in records]
        assert got[1][0]["per_edit"] == got[3][0]["per_edit"][:1]
        if method == "rome":
            assert all(0 < e["delta_norm"] < e["weight_norm"] for e in got[3][0]["per_edit"])
        for T in (1, 3):
            summary, rows = run_cell(tiny_llama, method, records[:T], run, ref)
            # the same rows, texts and NaNs included, hence the same summary
            assert json.dumps(rows, sort_keys=True) == json.dumps(got[T][1], sort_keys=True), (method, T)
            assert len(rows) == T and rows[0]["text"]
            metrics = lambda s: {k: v for k, v in s.items() if not k.endswith("seconds") and k not in ("sequence", "per_edit")}  # noqa: E731
            assert json.dumps(metrics(summary), sort_keys=True) == json.dumps(metrics(got[T][0]), sort_keys=True)


def test_sequential_methods_share_one_sequence_and_resume(tmp_path):
    run = TableRun(table="table2", model="tiny-llama", sizes=(2, 3), methods=("ft",), out=tmp_path,
                   eval_cfg=EvalConfig(fluency=False, progress=False))
    cells_dir = run_table(run) / "cells"
    first = json.loads((cells_dir / "ft-T3.json").read_text())
    assert first["sequence"] == [2, 3] and json.loads((cells_dir / "ft-T2.json").read_text())["sequence"] == [2, 3]
    assert "sequence" not in json.loads((cells_dir / "pre-edit-T3.json").read_text())
    # only the largest cell missing: a plain 3-edit sequence, the same numbers; T = 2 is not recomputed
    stamp = (cells_dir / "ft-T2.json").stat().st_mtime_ns
    (cells_dir / "ft-T3.json").unlink()
    run_table(run)
    again = json.loads((cells_dir / "ft-T3.json").read_text())
    assert again["sequence"] == [3] and (cells_dir / "ft-T2.json").stat().st_mtime_ns == stamp
    # the same numbers (NaNs included, hence compared as JSON); the integrity record covers the seconds too
    same = lambda c: json.dumps({k: v for k, v in c.items()  # noqa: E731
                                 if not k.endswith("seconds") and k not in ("sequence", "_integrity")}, sort_keys=True)
    assert same(again) == same(first)


def test_a_stopped_sequence_goes_on_from_its_last_save_bit_for_bit(tiny_llama, tmp_path, monkeypatch, capsys):
    # a sequence stopped after 4 of 5 edits (saves every 2 edits) goes on from edit 4 and ends exactly where
    # the uninterrupted one ends: the same rows, per-edit stats and edited weights; the model is unedited between
    import torch

    from intattn_tl.data.records import load_edits
    from intattn_tl.evaluation.metrics import locality_reference
    from intattn_tl.repro import tables

    records = load_edits("wiki_counterfact", limit=5)
    weights = lambda: {k: v.clone() for k, v in tiny_llama.hf_model.state_dict().items()}  # noqa: E731
    before = weights()
    for method in ("rome", "ft"):
        run = TableRun(model="tiny-llama", out=tmp_path / method, eval_cfg=EvalConfig(fluency=False, progress=False))
        ref = locality_reference(tiny_llama, records, run.eval_cfg)
        saved = run.dir / "sequences" / f"{method}.pt"

        def sequence(checkpoints):
            got = {}
            tables.run_sequence(tiny_llama, method, records, checkpoints, run, ref,
                                lambda T, s, r: got.__setitem__(T, (s, r, weights())), every=2)
            return got

        whole = sequence([2, 5])
        assert not saved.exists()  # a finished sequence leaves no progress behind
        calls, edit = [], tables.edit

        def stop_at_third(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return edit(*args, **kwargs)
        monkeypatch.setattr(tables, "edit", stop_at_third)
        with pytest.raises(KeyboardInterrupt):
            sequence([2, 5])
        monkeypatch.setattr(tables, "edit", edit)
        assert all(torch.equal(v, before[k]) for k, v in tiny_llama.hf_model.state_dict().items())
        assert saved.exists()
        rest = sequence([5])  # the T = 2 cell was written; T = 5 is what is missing
        assert rest[5][0]["resumed_at"] == [4] and not saved.exists()
        assert "going on from edit 4 of 5" in capsys.readouterr().err
        for a, b in ((whole[5], rest[5]),):
            assert json.dumps(a[1], sort_keys=True) == json.dumps(b[1], sort_keys=True)  # every per-record row
            assert a[0]["per_edit"] == b[0]["per_edit"] and len(b[0]["per_edit"]) == 5
            assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])  # the edited model, bit for bit
        assert all(torch.equal(v, before[k]) for k, v in tiny_llama.hf_model.state_dict().items())

    # progress that cannot be verified is not used: the sequence starts again from its first edit
    run = TableRun(model="tiny-llama", out=tmp_path / "ft", eval_cfg=EvalConfig(fluency=False, progress=False))
    saved = run.dir / "sequences" / "ft.pt"
    saved.write_bytes(b"not a checkpoint")
    got = {}
    tables.run_sequence(tiny_llama, "ft", records[:3], [3], run, locality_reference(tiny_llama, records[:3], run.eval_cfg),
                        lambda T, s, r: got.__setitem__(T, s), every=2)
    assert "resumed_at" not in got[3] and "starting the sequence from its first edit" in capsys.readouterr().err


def test_reproduce_dtype_is_recorded_and_not_mixed(tmp_path, capsys):
    # --dtype bfloat16 runs the cells on a bf16 model and says so in every cell's settings; float32 cells keep
    # the settings they always had (no dtype key), so a folder of one dtype refuses to resume with the other
    from intattn_tl.cli import main

    args = ["reproduce", "table1", "--model", "tiny-llama", "--quick", "--no-fluency", "--methods", "memit",
            "--out", str(tmp_path)]
    assert main(args + ["--dtype", "bfloat16"]) == 0
    cells = sorted((tmp_path / "table1-tiny-llama" / "cells").glob("memit-T*.json"))
    assert cells and all(json.loads(c.read_text())["settings"]["dtype"] == "bfloat16" for c in cells)
    # every cell exists: a float32 run still checks them and refuses to show bf16 cells as its table
    table = tmp_path / "table1-tiny-llama" / "table.md"
    before = table.read_text()
    assert main(args) == 2
    assert "dtype" in capsys.readouterr().err and table.read_text() == before
    assert main(args + ["--dtype", "bfloat16"]) == 0  # the same settings: the finished table, no recomputation
    cells[-1].unlink()  # one cell left to compute: a float32 run may not add it to the bf16 cells
    assert main(args) == 2
    assert "dtype" in capsys.readouterr().err and not cells[-1].exists()


def test_code_version_is_read_once_per_process(monkeypatch):
    # a commit made while a long run writes cells must not be recorded as theirs: the version is read once
    from intattn_tl.core import settings

    reads = []
    monkeypatch.setattr(settings, "_CODE", None)
    monkeypatch.setattr(settings, "_read_code_version", lambda: reads.append(1) or {"package": "p", "git": "abc"})
    first = settings.code_version()
    first["git"] = "changed by the caller"
    assert settings.code_version() == {"package": "p", "git": "abc"} and len(reads) == 1


def test_parallel_workers_write_the_same_cells_as_one_process(tmp_path, monkeypatch):
    # --jobs 2: the cells come from two worker processes taking work items from one queue; each item starts
    # from the unedited weights with the parent's locality reference, so the numbers (per-record rows and
    # fluency texts included) are those of the one-process run, and the parent's code version
    from intattn_tl.core import settings
    from intattn_tl.repro.tables import ReproduceError, read_rows

    monkeypatch.setattr(settings, "_CODE", {"package": "p", "git": "the parent's"})

    def table(out, jobs):
        run = TableRun(table="table2", model="tiny-llama", sizes=(2, 3), methods=("rome", "memit", "intattn"),
                       out=out, eval_cfg=EvalConfig(fluency_max_len=20, progress=False), jobs=jobs)
        return run, run_table(run) / "cells"

    one, one_dir = table(tmp_path / "one", 1)
    two, two_dir = table(tmp_path / "two", 2)
    strip = lambda c: {k: v for k, v in c.items() if not k.endswith("seconds") and k != "_integrity"}  # noqa: E731
    a, b = load_cells(one), load_cells(two)
    assert set(a) == set(b) == {(m, T) for m in ("pre-edit", "rome", "memit", "intattn") for T in (2, 3)}
    for key in a:
        assert json.dumps(strip(a[key]), sort_keys=True) == json.dumps(strip(b[key]), sort_keys=True), key
        name = f"{key[0]}-T{key[1]}.csv"
        assert json.dumps(read_rows(one_dir / name)) == json.dumps(read_rows(two_dir / name)), key
    assert b[("rome", 3)]["sequence"] == [2, 3]  # the sequential method is still one work item
    assert {c["settings"]["code"]["git"] for c in b.values()} == {"the parent's"}
    assert (two_dir.parent / "table.md").exists()
    with pytest.raises(ReproduceError, match="jobs"):
        run_table(TableRun(table="table2", model="tiny-llama", sizes=(2,), out=tmp_path / "bad", jobs=0))


def test_reproduce_set_overrides_one_method_and_is_recorded(tmp_path, capsys):
    # --set memit.v_lr=0.3: that method's cells run and record it; a folder made with other values refuses to
    # resume; a malformed item, an unknown method or field, or a method the run leaves out is refused before work
    from intattn_tl.cli import main

    args = ["reproduce", "table1", "--model", "tiny-llama", "--quick", "--no-fluency", "--methods", "memit",
            "--out", str(tmp_path)]
    assert main(args + ["--set", "memit.v_lr=0.3", "--set", "memit.v_num_grad_steps=3"]) == 0
    cells = sorted((tmp_path / "table1-tiny-llama" / "cells").glob("memit-T*.json"))
    hp = [json.loads(c.read_text())["settings"]["hparams"] for c in cells]
    assert cells and all(h["v_lr"] == 0.3 and h["v_num_grad_steps"] == 3 for h in hp)
    capsys.readouterr()
    assert main(args) == 2  # the YAML's values differ from the cells'
    assert "v_num_grad_steps: 3 -> 25" in capsys.readouterr().err
    for bad, said in ((["--set", "v_lr=0.15"], "METHOD.KEY"), (["--set", "memitt.v_lr=1"], "METHOD.KEY"),
                      (["--set", "rome.v_lr=1"], "does not include"), (["--set", "memit.no_such_field=1"], "no_such_field")):
        assert main(args + bad) == 2, bad
        assert said in capsys.readouterr().err, bad
    assert len(list((tmp_path / "table1-tiny-llama" / "cells").glob("memit-T*.json"))) == len(cells)


def test_cells_of_the_earlier_aggregation_are_reaggregated_from_their_rows(tmp_path):
    from intattn_tl.repro.tables import AGGREGATION, ReproduceError, cell_path, collect
    from intattn_tl.core.store import write_json, write_rows

    run = TableRun(table="table2", model="tiny-llama", sizes=(2,), methods=("memit",), out=tmp_path)
    rows = [{"id": "a", "edit_succ": 1.0, "portability.R": 0.5, "portability.S": 1.0, "portability": 0.75,
             "locality.F": 1.0, "locality": 1.0, "fluency": 5.0},
            {"id": "b", "edit_succ": 0.0, "portability.R": 0.0, "portability": 0.0, "locality.F": 0.5,
             "locality.G": 0.0, "locality": 0.25, "fluency": 6.0}]
    old = {"method": "memit", "T": 2, "edit_succ": 50.0, "portability": 62.5, "locality": 62.5, "fluency": 550.0,
           "device": "cpu"}  # Portability / Locality as the mean over kinds of the per-kind means
    path = cell_path(run, "memit", 2)
    write_json(path, old, {"method": "memit", "T": 2})
    write_rows(path.with_suffix(".csv"), rows)
    collect(run)
    cell = load_cells(run)[("memit", 2)]
    assert cell["aggregation"] == AGGREGATION
    assert cell["portability"] == pytest.approx(37.5) and cell["locality"] == pytest.approx(62.5)
    assert cell["portability.S"] == pytest.approx(100.0) and cell["edit_succ"] == 50.0
    assert "| MEMIT | 50.00 | 37.50 | 62.50 |" in (run.dir / "table.md").read_text()
    # rows that do not belong to their cell are refused, the cell left as it was
    write_json(path, {**old, "edit_succ": 40.0}, {"method": "memit", "T": 2})
    with pytest.raises(ReproduceError, match="rows and cell disagree"):
        collect(run)
    assert load_cells(run)[("memit", 2)]["portability"] == 62.5
