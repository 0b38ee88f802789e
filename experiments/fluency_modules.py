"""Which module's part of an IntAttn-Edit batch makes the generations repeat the new object?

One IntAttn-Edit batch (the Table 2 cell's settings: the model's YAML, its traced α and layers) is computed once
and saved (`edit.pt`). The model is then evaluated with a chosen subset of its deltas applied, each subset in
its own exact transaction, rolled back after:

- full: every delta (the Table 2 cell; its rows should equal the committed ones, same seed);
- attn: the W_O deltas only (α Δ_attn), mlp: the W_out deltas only ((1 − α) Δ_mlp);
- mlp+attn.L: the W_out deltas and one attention layer's W_O delta (with --per-layer).

Each variant is one verified JSON + per-record CSV under OUT/variants (a resumed run skips finished ones). The
report prints every variant's metrics, the count of generations that repeat the new object (≥ 3 times), and the
paired difference to `full` (mean ± standard error over the records).

    python experiments/fluency_modules.py --model qwen2.5-coder-0.5b --T 100 --out runs/fluency-qwen
    python experiments/fluency_modules.py --model qwen2.5-coder-0.5b --T 100 --out runs/fluency-qwen --per-layer
    python experiments/fluency_modules.py --model qwen2.5-coder-0.5b --T 100 --out runs/fluency-qwen-lam250 \
        --set attn_mom2_update_weight=250                    # another IntAttn-Edit setting (YAML values)
    python experiments/fluency_modules.py --out runs/fluency-qwen --report-only \
        --against results/table2/qwen2.5-coder-0.5b-0.2/cells/memit-T100.csv
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from compare_tables import paired  # experiments/: B − A ± se over paired records

from intattn_tl.api import edit
from intattn_tl.cli.edit import parse_overrides
from intattn_tl.config.hparams import load_hparams
from intattn_tl.core.settings import edit_settings
from intattn_tl.data.records import load_edits
from intattn_tl.edit.transaction import EditError, apply_deltas, fingerprint, weight_key
from intattn_tl.evaluation.metrics import EvalConfig, evaluate, locality_reference, summarize
from intattn_tl.model.load import load_model
from intattn_tl.repro.results import read_verified, write_result
from intattn_tl.repro.tables import read_rows

METRICS = ("edit_succ", "portability", "locality", "fluency")


def compute_edit(model, records, path: Path, overrides: dict | None = None) -> dict[str, torch.Tensor]:
    """The batch's deltas by "kind.layer", computed once and saved; a saved one is reused only if its
    settings are this run's."""
    hp = load_hparams("intattn", model.name, overrides)
    settings = edit_settings("intattn", hp, model)
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob["meta"]["settings"] != _plain(settings) or blob["meta"]["record_ids"] != [r.id for r in records]:
            raise EditError(f"{path} was made with other settings or records; use another --out")
        return blob["deltas"]
    result = edit(model, records, method="intattn", hparams=hp, conflicts="allow", sanity=None)
    try:
        result.save(path)
        return {k: v.cpu() for k, v in result.deltas.items()}
    finally:
        result.rollback()


def _plain(obj):
    return json.loads(json.dumps(obj, default=str))


def variants(deltas: dict, per_layer: bool) -> dict[str, list[str]]:
    keys = sorted(deltas)
    out = {"full": keys, "attn": [k for k in keys if k.startswith("w_o.")],
           "mlp": [k for k in keys if k.startswith("w_out.")]}
    if per_layer:  # the MLP deltas with one attention layer's: which W_O update interacts with them
        out |= {"mlp+attn." + k.removeprefix("w_o."): out["mlp"] + [k] for k in out["attn"]}
    return out


def evaluate_with(model, records, deltas: dict, keys: list[str], cfg: EvalConfig, ref) -> list[dict]:
    """Apply `keys`' deltas, evaluate, roll back (bit-exact: checked)."""
    before = {k: fingerprint(_weight(model, k)) for k in keys}
    tx = apply_deltas(model, deltas, keys)
    try:
        return evaluate(model, records, cfg, locality_ref=ref)
    finally:
        tx.rollback()
        assert all(fingerprint(_weight(model, k)) == before[k] for k in keys), "rollback was not exact"


def _weight(model, key: str):
    kind, layer = weight_key(key)
    return getattr(model.spec, kind)[layer]


def repeats(rows: list[dict], records) -> int:
    new = {r.id: r.target_new.strip() for r in records}
    return sum(1 for r in rows if new.get(r["id"]) and str(r.get("text", "")).count(new[r["id"]]) >= 3)


def _num(x) -> bool:
    try:
        return not math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def report(folder: Path, records, against: list[Path]) -> None:
    done = {p.stem: read_rows(p) for p in sorted((folder / "variants").glob("*.csv"))}
    done |= {f"[{p.parent.parent.name}/{p.stem}]": read_rows(p) for p in against}
    base = done.get("full")
    print("| variant | " + " | ".join(METRICS) + " | repeats new object ≥ 3× | fluency < 400 | "
          + " | ".join(f"Δ{m} vs full" for m in METRICS) + " |")
    print("|" + "---|" * (2 * len(METRICS) + 3))
    for name, rows in done.items():
        s = summarize(rows)
        low = sum(1 for r in rows if _num(r.get("fluency")) and 100 * float(r["fluency"]) < 400)
        diffs = [paired(base, rows, m)[:2] if base else (float("nan"),) * 2 for m in METRICS]
        print(f"| {name} | " + " | ".join(f"{s.get(m, float('nan')):.2f}" for m in METRICS)
              + f" | {repeats(rows, records)} | {low} | " + " | ".join(f"{d:+.2f} ± {e:.2f}" for d, e in diffs) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--dataset", default="wiki_counterfact")
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-layer", action="store_true", help="also the MLP deltas with one attention layer's")
    ap.add_argument("--only", default="", help="comma-separated variant names to run, in this order (default: all)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--against", type=Path, nargs="*", default=[], help="other per-record CSVs to list")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one IntAttn-Edit hyperparameter (YAML value); repeatable")
    args = ap.parse_args()
    overrides = parse_overrides(args.overrides, None)
    load_hparams("intattn", args.model, overrides)  # an unknown key or a bad value fails here, before the model loads
    records = load_edits(args.dataset, limit=args.T)
    if not args.report_only:
        (args.out / "variants").mkdir(parents=True, exist_ok=True)
        model = load_model(args.model)
        cfg = EvalConfig()
        deltas = compute_edit(model, records, args.out / "edit.pt", overrides)
        todo = variants(deltas, args.per_layer)
        if args.only:
            todo = {k: todo[k] for k in args.only.split(",") if k in todo}  # in the order given
        ref = None
        for name, keys in todo.items():
            path = args.out / "variants" / f"{name}.json"
            if path.exists():
                read_verified(path, {"variant": name}, lambda s, n=name: s.get("variant") == n, EditError, "variant")
                continue
            ref = ref or locality_reference(model, records, cfg)
            rows = evaluate_with(model, records, deltas, keys, cfg, ref)
            write_result(path, {"variant": name, "keys": keys, **summarize(rows)}, rows, {"variant": name})
            s = summarize(rows)
            print(f"{name}: " + ", ".join(f"{m} {s.get(m, float('nan')):.2f}" for m in METRICS), flush=True)
    report(args.out, records, args.against)


if __name__ == "__main__":
    main()
