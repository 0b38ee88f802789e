"""table.md / table.csv / table.png of one results folder (results/<table>/<name>/ with run.json and cells/),
from the cells it holds; e.g. after copying finished cells in from a run under runs/.

    python experiments/write_table.py results/table2/smollm2-135m-0.2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reaggregate_results import FolderRun

from intattn_tl.repro.tables import write_table

if __name__ == "__main__":
    folder = Path(sys.argv[1])
    rec = json.loads((folder / "run.json").read_text())
    print(write_table(FolderRun(table=rec["table"], model=rec["model"], sizes=tuple(rec["sizes"]),
                                methods=tuple(rec["methods"]), folder=folder)))
