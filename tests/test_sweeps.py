"""Tables across machines: W&B sweep agents filling one folder in parallel, `collect`, and the YAMLs (tiny model)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from intattn_tl.cli import main
from intattn_tl.evaluation.metrics import EvalConfig
from intattn_tl.repro.tables import TableRun, run_table

ROOT = Path(__file__).resolve().parents[1]
SIZES, METHODS = (2, 3), ("ft", "memit")  # FT: a one-edit-at-a-time sequence; MEMIT: one batch
AGENT = """
import sys
sys.path.insert(0, {experiments!r})
from sweep_agent import main
for method, T in {points!r}:
    main([f"--table=table2", f"--method={{method}}", f"--T={{T}}", "--sizes=2,3", "--model=tiny-llama",
          "--fluency=false", "--out={out}"])
"""


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> Path:
    """The reference: one process, the whole table, one cell after another."""
    out = tmp_path_factory.mktemp("sequential")
    run_table(TableRun(table="table2", model="tiny-llama", sizes=SIZES, methods=METHODS, out=out,
                       eval_cfg=EvalConfig(fluency=False, progress=False)))
    return out / "table2-tiny-llama"


def _numbers(folder: Path) -> list[dict]:
    """table.csv without what may differ between runs of the same cells (seconds)."""
    with (folder / "table.csv").open() as f:
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in csv.DictReader(f)]


def test_two_agents_in_parallel_make_the_sequential_table(sequential, tmp_path):
    points = [(m, T) for m in ("pre-edit", *METHODS) for T in sorted(SIZES, reverse=True)]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    agents = []
    for i in range(2):  # agent 0 takes every other grid point, agent 1 the rest; both write into one folder
        wd = tmp_path / f"agent{i}"
        wd.mkdir()
        code = AGENT.format(experiments=str(ROOT / "experiments"), points=points[i::2], out=tmp_path / "shared")
        agents.append(subprocess.Popen([sys.executable, "-c", code], cwd=wd, env={**env, "WANDB_DIR": str(wd)},
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for a in agents:
        out, _ = a.communicate(timeout=900)
        assert a.returncode == 0, out[-3000:]
    folder = tmp_path / "shared" / "table2-tiny-llama"
    assert main(["reproduce", "collect", "--out", str(tmp_path / "shared")]) == 1  # the other methods: not run
    assert main(["reproduce", "collect", "--out", str(tmp_path / "shared"), "--methods", ",".join(METHODS)]) == 0
    assert _numbers(folder) == _numbers(sequential)
    for path in sorted((sequential / "cells").glob("*.csv")):  # every per-record score, byte for byte
        assert (folder / "cells" / path.name).read_text() == path.read_text(), path.name
    assert not list(folder.rglob("*.tmp"))  # no temporary file left behind
    # each agent run logged its cell with a W&B Table of per-record scores (offline)
    tables = [json.loads(p.read_text()) for p in tmp_path.glob("agent*/wandb/offline-run-*/files/media/table/per_record_*.table.json")]
    assert len(tables) == len(points) and all("edit_succ" in t["columns"] for t in tables)
    assert sorted(len(t["data"]) for t in tables) == sorted(T for _, T in points)
    assert (folder / "table.png").stat().st_size > 1000


def test_collect_lists_missing_cells_and_logs_an_artifact(sequential, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    shutil.copytree(sequential, tmp_path / sequential.name)
    folder = tmp_path / sequential.name
    (folder / "cells" / "memit-T3.json").unlink()
    assert main(["reproduce", "collect", "--out", str(tmp_path), "--methods", ",".join(METHODS), "--wandb"]) == 1
    out = capsys.readouterr().out
    assert "1 missing" in out and "table2-tiny-llama: memit T=3" in out
    assert "| MEMIT | (not run) |" in (folder / "table.md").read_text()
    logs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # $WANDB_DIR/wandb (conftest: tmp_path)
    assert len(logs) == 1 and b"table.md" in logs[0].read_bytes()
    # the expected grid can be narrowed; an empty folder is an error, not a success
    assert main(["reproduce", "collect", "--out", str(tmp_path), "--methods", "ft", "--no-wandb"]) == 0
    assert main(["reproduce", "collect", "--out", str(tmp_path), "--methods", "ft", "--sizes", "2,4", "--no-wandb"]) == 1
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb")) == logs  # --no-wandb: no artifact logged
    assert main(["reproduce", "collect", "--out", str(tmp_path / "nothing")]) == 2


def test_sweep_yamls_cover_each_table(tmp_path):
    for table in ("table1", "table2"):
        cfg = yaml.safe_load((ROOT / "experiments" / f"sweep_{table}.yaml").read_text())
        p = cfg["parameters"]
        assert cfg["method"] == "grid" and cfg["program"] == "experiments/sweep_agent.py"
        assert p["table"]["value"] == table and set(p["method"]["values"]) == {"pre-edit", "ft", "rome", "r-rome",
                                                                                 "memit", "alphaedit", "intattn"}
        assert sorted(p["T"]["values"]) == [int(s) for s in p["sizes"]["value"].split(",")]
        sys.path.insert(0, str(ROOT / "experiments"))
        from sweep_agent import parse

        args = parse([f"--{k}={v['value'] if 'value' in v else v['values'][0]}" for k, v in p.items()])
        assert args.table == table and args.method == "pre-edit"


def test_trace_shards_then_collect_equal_the_unsharded_run(tmp_path, monkeypatch, capsys):
    import numpy as np

    import intattn_tl.data.records as data
    from intattn_tl.data.records import KnownFact
    from intattn_tl.model.tokens import answer_ids

    facts = [KnownFact(str(i), f"I {s} is", s, a, "P1") for i, (s, a) in
             enumerate([("Paris", "France"), ("Rome", "Italy"), ("Oslo", "Norway"), ("Bern", "Swiss"), ("Kyiv", "Ukraine"),
                         ("Lima", "Peru"), ("Baku", "Azeri")])]
    unknown = {"Oslo", "Lima"}  # the model "knows" the others: the selection skips these two
    monkeypatch.setattr(data, "load_known_facts", lambda: facts)
    monkeypatch.setattr("intattn_tl.locate.tracing.greedy_token", lambda model, prompt: 0 if prompt.split()[1] in unknown
                        else answer_ids(model.tokenizer, prompt, next(f.attribute for f in facts if f.prompt == prompt))[0])
    analysis = ["--attn-width", "1", "--mlp-width", "2", "--min-ld-gap=-inf"]  # how --collect reads the facts too
    base = ["trace", "--model", "tiny-llama", "--facts", "4", "--samples", "2", "--window", "2",
            "--kinds", "attn,mlp,attn_window,mlp_window", *analysis]
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    shards = tmp_path / "shards"
    assert main([*base, "--out", str(shards), "--shard", "1/3"]) == 0
    assert sorted(p.stem for p in (shards / "facts").glob("*.npz")) == ["1"]  # chosen: 0 1 3 4 (2 unknown); shard 1/3: the 2nd
    capsys.readouterr()
    assert main(["trace", "--collect", "--out", str(shards), *analysis]) == 1  # shards 0 and 2 not run yet
    assert "3 of 4 facts not traced yet" in capsys.readouterr().err and not (shards / "trace.npz").exists()
    for i in (2, 0):
        assert main([*base, "--out", str(shards), "--shard", f"{i}/3"]) == 0
    assert main(["trace", "--collect", "--out", str(shards), *analysis]) == 0
    one, many = np.load(tmp_path / "one" / "trace.npz"), np.load(shards / "trace.npz")
    assert sorted(one) == sorted(many)
    for k in one:
        np.testing.assert_array_equal(one[k], many[k], err_msg=k)
    for name in ("effects.csv", "facts.json"):
        assert (shards / name).read_text() == (tmp_path / "one" / name).read_text(), name
    rec_one, rec_many = (json.loads((d / "tiny-llama.json").read_text()) for d in (tmp_path / "one", shards))
    assert rec_one.pop("command") != rec_many.pop("command") and rec_one == rec_many and rec_one["n_facts"] == 4
    assert (shards / "fig2_last_subject.png").stat().st_size > 1000
    assert main([*base, "--out", str(shards), "--shard", "3/3"]) == 2  # bad shard: argparse's error


def test_collect_alpha_sweep_lists_missing_points(tmp_path, capsys):
    from intattn_tl.repro.sweep import run_sweep

    folder = run_sweep("tiny-llama", "zsre", 2, (0.0,), tmp_path, EvalConfig(fluency=False, progress=False))
    (folder / "points.csv").unlink()
    assert main(["reproduce", "collect", "--out", str(tmp_path), "--grid", "0,1"]) == 1
    assert "sweep-tiny-llama-zsre-T2: alpha=1.0" in capsys.readouterr().out
    assert main(["reproduce", "collect", "--out", str(tmp_path), "--grid", "0"]) == 0
    assert (folder / "points.csv").read_text().count("\n") == 2 and (folder / "figure4.png").exists()


def _race(args):
    from intattn_tl.core.store import write_json, write_once

    path, i = args
    write_json(Path(path) / "cell.json", {"writer": i, "pad": "x" * 200_000}, "k")  # a big file: renames race
    return write_once(Path(path) / "settings.json", f"writer {i}")


def test_racing_writers_leave_whole_files(tmp_path):
    from multiprocessing import get_context

    from intattn_tl.core.store import read_json

    with get_context("spawn").Pool(4) as pool:
        created = pool.map(_race, [(str(tmp_path), i) for i in range(8)])
    assert sum(created) == 1  # exactly one writer created settings.json, and its text is whole
    assert (tmp_path / "settings.json").read_text() == f"writer {created.index(True)}"
    assert read_json(tmp_path / "cell.json", "k")["writer"] in range(8)  # verifies: one writer's whole file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.json", "settings.json"]  # no temporary left
