"""Collect the first K facts of an unfinished `intattn trace` store (e.g. a long trace still running).

Copies the longest fully traced prefix of SRC's selection (K facts) into OUT/facts with a K-fact selection.json,
so `intattn trace --collect --out OUT` writes alpha, effects.csv and the figures for those K facts without
loading the model. The selection rule makes the first K of a 100-fact run exactly a K-fact run's facts.

    python experiments/trace_prefix.py results/tracing/qwen2.5-coder-1.5b/facts OUT && intattn trace --collect --out OUT
"""
import argparse
import json
import shutil
from pathlib import Path

from intattn_tl.locate.tracing import write_selection


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="the store: OUT/facts of a running or stopped `intattn trace`")
    p.add_argument("out", type=Path, help="new output folder (its facts/ is created)")
    args = p.parse_args()
    sel = json.loads((args.src / "selection.json").read_text())
    ids = sel["ids"]
    k = next((i for i, fid in enumerate(ids) if not (args.src / f"{fid}.npz").exists()), len(ids))
    if k == 0:
        raise SystemExit(f"{args.src}: the first selected fact ({ids[0]}) is not traced yet")
    if ids[-1] != str(sel["seen"] - 1):  # known_1000 ids are dataset positions; `seen` below relies on it
        raise SystemExit(f"{args.src}: fact ids are not dataset positions; cannot recount the facts read")
    seen = int(ids[k - 1]) + 1
    dest = args.out / "facts"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.src / "settings.json", dest / "settings.json")
    for fid in ids[:k]:
        shutil.copy(args.src / f"{fid}.npz", dest / f"{fid}.npz")
    skipped = [s for s in sel["skipped"] if int(s[0]) < seen]
    write_selection(dest, ids[:k], seen, skipped, k, known_only=True)
    print(f"first {k} facts ({seen} read, {len(skipped)} skipped) -> {dest}; now: intattn trace --collect --out {args.out}")


if __name__ == "__main__":
    main()
