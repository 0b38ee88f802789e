"""How big is each edit of a sequence? Reads the `per_edit` stats of sequential cells (ROME / R-ROME).

    python experiments/per_edit.py runs/t2-gemma/cells/rome-T30.json [more cells]

Per segment of the sequence (edits 1-10, 11-30, 31-100, ...): the mean and largest |Delta| / |W| (the
rank-one update against the weight it is added to), the edited weight's norm at the segment's first and
last edit, and the mean target norm. A weight that grows edit after edit, or targets that grow with it,
is a sequence running away (docs/history.md, "Gemma-3: how the current setup was found").
"""

from __future__ import annotations

import json
import sys

SEGMENTS = ((0, 10), (10, 30), (30, 100), (100, 300), (300, 500))


def describe(path: str) -> list[str]:
    cell = json.load(open(path))
    edits = [e for e in cell.get("per_edit", []) if "delta_norm" in e]
    lines = [f"{path}: T={cell['T']} Edit Succ. {cell['edit_succ']:.2f} Locality {cell['locality']:.2f} "
             f"Fluency {cell['fluency']:.1f}"]
    if not edits:
        return lines + ["  no per-edit norms in this cell (not a ROME / R-ROME sequence, or made before commit ab6d0dc)"]
    rel = [e["delta_norm"] / e["weight_norm"] for e in edits]
    for a, b in SEGMENTS:
        seg = edits[a:b]
        if seg:
            r = rel[a:b]
            lines.append(f"  edits {a + 1}-{a + len(seg)}: |Delta|/|W| mean {sum(r) / len(r):.3f} max {max(r):.3f}; "
                         f"|W| {seg[0]['weight_norm']:.1f} -> {seg[-1]['weight_norm']:.1f}; "
                         f"target norm mean {sum(e['target_norm'] for e in seg) / len(seg):.1f}")
    return lines


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print("\n".join(describe(p)))
