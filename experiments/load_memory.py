"""Peak RSS of a cold and a warm `load_model` of a known model, each in a fresh process.

Cold: `$INTATTN_CACHE` is an empty temporary folder, except for a link to the already assembled GGUF file
(so nothing is downloaded again: `fetch_gguf` accepts a file whose sha256 matches); the load dequantizes
and writes the cache there. Warm: the same folder again, now holding that cache. The peak is the child's
`ru_maxrss` (anonymous plus file-backed pages it touched), which is what `/usr/bin/time -v` reports too:
`peak_rss_mib` right after `load_model` returns, `after_forward_mib` after one forward pass of the Eiffel
probe (a warm load maps the cached safetensors lazily, so only the forward pass touches every weight).

    python experiments/load_memory.py --model smollm2-135m --dtype float32 bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
import torch
from intattn_tl.model.load import load_model
t0 = time.time()
m = load_model(sys.argv[1], dtype=sys.argv[2])
usage = resource.getrusage(resource.RUSAGE_SELF)
seconds, load_peak, cpu = time.time() - t0, usage.ru_maxrss, usage.ru_utime + usage.ru_stime
ids = torch.tensor([m.tokenizer("The Eiffel Tower is located in the city of").input_ids])
with torch.no_grad():
    top = m.tokenizer.decode(m.bridge(ids)[0, -1].argmax())
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_kib": load_peak, "top1": top,
                  "forward_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def measure(model: str, dtype: str, cache: Path) -> dict:
    """One load in a fresh interpreter with `$INTATTN_CACHE=cache`: its peak RSS in MiB, wall seconds of the
    load, CPU seconds of the process up to then (imports included; less sensitive than wall time to other jobs
    on the machine), the top-1 token after the Eiffel probe."""
    env = {**os.environ, "INTATTN_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", CHILD, model, dtype], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"load of {model} ({dtype}) failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"peak_rss_mib": round(out["peak_rss_kib"] / 1024), "seconds": round(out["seconds"], 1),
            "cpu_seconds": round(out["cpu_seconds"], 1),
            "after_forward_mib": round(out["forward_peak_rss_kib"] / 1024), "top1": out["top1"]}


def cold_and_warm(model: str, dtype: str, gguf_from: Path, keep: Path | None = None) -> dict:
    """Cold then warm load in a cache folder of their own: a temporary one, or `keep` (left in place)."""
    from intattn_tl.model.registry import KNOWN_MODELS

    gguf = gguf_from / KNOWN_MODELS[model].gguf_name
    if not gguf.is_file():
        raise SystemExit(f"{gguf} is missing: load {model} once with the default cache first")
    with tempfile.TemporaryDirectory(prefix="intattn-load-memory-") as tmp:
        cache = Path(keep or tmp) / f"{model}-{dtype}"
        if cache.exists():
            raise SystemExit(f"{cache} exists; a cold load needs an empty cache")
        (cache / "gguf").mkdir(parents=True)
        (cache / "gguf" / gguf.name).symlink_to(gguf.resolve())
        return {"model": model, "dtype": dtype, "cold": measure(model, dtype, cache), "warm": measure(model, dtype, cache)}


def main(argv=None) -> int:
    from intattn_tl.core.paths import cache_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--gguf-from", type=Path, default=None, help="folder holding the assembled GGUF (default: the cache's)")
    p.add_argument("--keep", type=Path, default=None, help="build the caches under this folder and keep them")
    args = p.parse_args(argv)
    for dtype in args.dtype:
        row = cold_and_warm(args.model, dtype, args.gguf_from or cache_dir() / "gguf", args.keep)
        row["cold_over_warm"] = round(row["cold"]["peak_rss_mib"] / row["warm"]["peak_rss_mib"], 2)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
