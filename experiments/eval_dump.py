"""Evaluate the unedited model on the first N WikiData_counterfact records, dump every prediction, text
and timing (wall and CPU seconds per part) to JSON; `--compare A.json B.json` states how two dumps differ
(run it once per code version to compare evaluate.py versions on the same records).

    OMP_NUM_THREADS=1 PYTHONPATH=<src of version> python experiments/eval_dump.py --out new.json --n 100
    python experiments/eval_dump.py --compare old.json new.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics as st
import time

import torch


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - w, time.process_time() - c)


def dump(args) -> None:
    from intattn_tl.evaluation import metrics as E
    from intattn_tl.data.records import load_edits
    from intattn_tl.model.load import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    recs = load_edits("wiki_counterfact", limit=args.n)
    cfg = E.EvalConfig(progress=False, fluency=False)
    ref, t_ref = timed(lambda: E.locality_reference(model, recs, cfg))
    rows, t_tf = timed(lambda: E.evaluate(model, recs, cfg, locality_ref=ref))
    texts, t_gen = timed(lambda: E.sample_texts(model, [r.prompt for r in recs], 100, 5, 0, args.fluency_batch))
    out = {"ref": ref.tokens, "rows": rows, "texts": texts, "fluency": [E.fluency(x) for x in texts],
           "t_ref": t_ref, "t_tf": t_tf, "t_gen": t_gen, "load": os.getloadavg()[0]}
    with open(args.out, "w") as f:
        json.dump(out, f, default=str)
    print(f"{args.out}: (wall, CPU) s: locality reference {t_ref}, teacher-forced {t_tf}, fluency generation {t_gen}; "
          f"load {os.getloadavg()[0]:.1f}")


def compare(a_path: str, b_path: str) -> None:
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    print("locality reference tokens identical:", a["ref"] == b["ref"])
    same = lambda x, y: x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))  # noqa: E731
    pairs = [(ra["id"], k, ra.get(k), rb.get(k)) for ra, rb in zip(a["rows"], b["rows"])
             for k in set(ra) | set(rb) if k not in ("id", "text", "fluency")]
    bad = [p for p in pairs if not same(p[2], p[3])]
    print(f"teacher-forced values: {len(pairs)} compared, {len(bad)} differ {bad[:5]}")
    d = [y - x for x, y in zip(a["fluency"], b["fluency"])]
    print(f"fluency x100: {100 * st.mean(a['fluency']):.2f} vs {100 * st.mean(b['fluency']):.2f}, difference "
          f"{100 * st.mean(d):+.2f} +- {100 * st.stdev(d) / math.sqrt(len(d)):.2f} (standard error over {len(d)} records); "
          f"{sum(x == y for x, y in zip(a['texts'], b['texts']))} identical texts")
    for k in ("t_ref", "t_tf", "t_gen"):
        print(f"{k} (wall, CPU) s: {[round(x, 1) for x in a[k]]} vs {[round(x, 1) for x in b[k]]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--out", default="eval_dump.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fluency-batch", type=int, default=32)
    p.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = p.parse_args()
    compare(*args.compare) if args.compare else dump(args)


if __name__ == "__main__":
    main()
