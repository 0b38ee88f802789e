"""Re-assemble every committed table under results/ on the paper's aggregation, from the per-record CSVs.

Portability / Locality used to be the mean over probe kinds of the per-kind means; the KnowEdit runner (and
so the paper) takes, per record, the mean over its kinds, then the mean over records. Nothing is recomputed:
each cell's metrics come again from its own rows (reproduce.reaggregate refuses rows that do not give the
cell's Edit Succ. / Fluency back), and table.md / table.csv / table.png are rewritten.

    python experiments/reaggregate_results.py [results]
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from intattn_tl.repro.tables import TableRun, load_cells, reaggregate_cells, write_table


@dataclass
class FolderRun(TableRun):
    """A TableRun whose folder is given (results/ keeps them as <table>/<model>, not <table>-<model>)."""

    folder: Path = Path(".")

    @property
    def dir(self) -> Path:
        return self.folder


def main(root: Path) -> None:
    for run_json in sorted(root.glob("table[12]/*/run.json")):
        rec = json.loads(run_json.read_text())
        run = FolderRun(table=rec["table"], model=rec["model"], sizes=tuple(rec["sizes"]),
                        methods=tuple(rec["methods"]), folder=run_json.parent)
        before = {k: (c.get("portability"), c.get("locality")) for k, c in load_cells(run).items()}
        changed = reaggregate_cells(run)
        write_table(run)
        after = load_cells(run)
        print(f"{run_json.parent}: {len(changed)} cells re-aggregated")
        for key in sorted(before, key=lambda k: (k[1], k[0])):
            (p0, l0), cell = before[key], after[key]
            print(f"  {key[0]:>10} T={key[1]}: Portability {p0:.2f} -> {cell['portability']:.2f}, "
                  f"Locality {l0:.2f} -> {cell['locality']:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results"))
