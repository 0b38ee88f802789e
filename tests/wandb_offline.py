"""What an offline W&B run holds, read back from its `run-*.wandb` log (wandb 0.31 writes no config.yaml or
wandb-summary.json offline, and has no Python reader of its own any more).

The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks,
each `<crc32 u32><length u16><type u8>` + data (type 1 full, 2 first, 3 middle, 4 last); fewer than 7 bytes
left in a block are padding. Each whole record is a `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32768, 7


def records(path: Path) -> list:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    out, pos, chunk = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        if kind == 0 and n == 0:  # the zero-filled rest of a block
            pos += left - HEADER
            continue
        chunk += data[pos:pos + n]
        pos += n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def _key(item) -> str:
    """A summary leaf's path ("per_record/path" for a table's file), or a plain key ("post/edit_succ")."""
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_run(run_dir: Path, timeout: float = 30.0) -> dict:
    """{"config", "summary", "history", "job_type", "name", "project", "group"} of the finished run in `run_dir`.
    The W&B service may still be writing the log after `finish` returns: waits for its exit record."""
    (log,) = run_dir.glob("run-*.wandb")
    deadline = time.time() + timeout
    while True:
        recs = records(log)
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.time() > deadline:
            break
        time.sleep(0.3)
    out = {"config": {}, "summary": {}, "history": []}
    for r in recs:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out |= {"job_type": r.run.job_type, "name": r.run.display_name, "project": r.run.project,
                    "group": r.run.run_group}
            out["config"] |= {_key(i): json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "config":
            out["config"] |= {_key(i): json.loads(i.value_json) for i in r.config.update}
        elif kind == "summary":
            out["summary"] |= {_key(i): json.loads(i.value_json) for i in r.summary.update}
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in r.history.item})
    return out


def runs(folder: Path) -> list[dict]:
    """Every offline run under `folder`/wandb (by folder name: start time, then id), read_run's dict plus "dir"."""
    return [{**read_run(d), "dir": d} for d in sorted(folder.glob("wandb/offline-run-*"))]


def table(run: dict, key: str) -> dict:
    """The logged wandb.Table `key` of `run` ({"columns": [...], "data": [[...], ...]})."""
    return json.loads((run["dir"] / "files" / run["summary"][f"{key}/path"]).read_text())
