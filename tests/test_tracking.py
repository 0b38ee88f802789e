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
