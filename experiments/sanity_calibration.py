"""The post-edit sanity numbers of a normal and a broken edit (docs/reliability.md's table).

`python experiments/sanity_calibration.py --n 10 --corpus small.txt`: MEMIT on the first N WikiData_counterfact
records of SmolLM2 with 20k-token statistics, then with statistics from CORPUS (a few hundred words) and
mom2_n_samples=1000; both kept with force=True so their numbers print, then rolled back.
"""

from __future__ import annotations

import argparse
import time

from intattn_tl.data.records import load_edits
from intattn_tl.api import edit
from intattn_tl.config.hparams import load_hparams
from intattn_tl.model.load import load_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--corpus", required=True, help="a small text file: the broken statistics")
    args = p.parse_args()
    model = load_model(args.model)
    records = load_edits("wiki_counterfact", limit=args.n)
    for tag, overrides in (("normal", {"mom2_n_samples": 20000}),
                           ("small corpus", {"mom2_n_samples": 1000, "mom2_dataset": args.corpus})):
        t0 = time.time()
        result = edit(model, records, "memit", load_hparams("memit", model.name, overrides), force=True)
        chain = [s["chain"] for s in result.stats.get("steps", [])]
        print(f"{tag}: {result.stats['sanity']}; chain (cos, ratio) per step {chain}; {time.time() - t0:.0f} s",
              flush=True)
        result.rollback()


if __name__ == "__main__":
    main()
