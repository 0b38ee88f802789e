"""Two reproductions of one table side by side: every cell both hold, each metric's difference (B − A) with the
standard error of the per-record differences (paired on record id), so a difference can be read against noise.

    python experiments/compare_tables.py results/table2/smollm2-135m runs/e2e/table2-smollm2-135m [--md]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from intattn_tl.evaluation.intervals import paired_values
from intattn_tl.repro.tables import COLUMNS, DISPLAY, METHODS, read_cell, read_rows


def _cells(folder: Path) -> dict:
    """The folder's finished cells, each verified (read_cell), by (method, T)."""
    cells = {}
    for path in sorted((folder / "cells").glob("*.json")):
        c = read_cell(path)
        cells[(c["method"], int(c["T"]))] = c
    return cells


def paired(rows_a: list[dict], rows_b: list[dict], key: str) -> tuple[float, float, int]:
    """Mean and standard error of B − A over the records scored in both (×100, as the table shows them)."""
    d = paired_values(rows_a, rows_b, key)
    if len(d) < 2:
        return float("nan"), float("nan"), len(d)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), len(d)


def compare(a: Path, b: Path) -> list[str]:
    ca, cb = _cells(a), _cells(b)
    lines = ["| Method | T | " + " | ".join(f"{title} A → B (Δ ± se)" for _, title in COLUMNS) + " | seconds A → B |",
             "|" + "---|" * (len(COLUMNS) + 3)]
    order = ["pre-edit", *METHODS]
    for (m, T) in sorted(set(ca) & set(cb), key=lambda k: (k[1], order.index(k[0]) if k[0] in order else 99)):
        ra = read_rows(a / "cells" / f"{m}-T{T}.csv")
        rb = read_rows(b / "cells" / f"{m}-T{T}.csv")
        vals = []
        for key, _ in COLUMNS:
            va, vb = ca[(m, T)].get(key), cb[(m, T)].get(key)
            _, se, _ = paired(ra, rb, key)
            vals.append(f"{va:.2f} → {vb:.2f} ({vb - va:+.2f} ± {se:.2f})")
        secs = lambda c: c.get("edit_seconds", 0) + c.get("eval_seconds", 0)  # noqa: E731
        lines.append(f"| {DISPLAY.get(m, m)} | {T} | " + " | ".join(vals) + f" | {secs(ca[(m, T)]):.0f} → {secs(cb[(m, T)]):.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="a table folder (holding cells/), e.g. results/table2/smollm2-135m")
    ap.add_argument("b", type=Path)
    args = ap.parse_args()
    print("\n".join(compare(args.a, args.b)))


if __name__ == "__main__":
    main()
