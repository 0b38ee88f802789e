"""Bootstrap intervals (evaluation/intervals.py): paired differences, one evaluation's mean, the tables' contrast rows."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from intattn_tl.evaluation.intervals import mean_interval, paired_difference
from intattn_tl.evaluation.metrics import summarize
from intattn_tl.repro.tables import TableRun, _write_cell, write_table


def _rows(values: dict[str, float | None], key: str = "edit_succ") -> list[dict]:
    return [{"id": i, key: v} for i, v in values.items()]


def test_a_constant_difference_has_a_point_interval_and_only_shared_records_pair():
    a = _rows({"1": 0.2, "2": 0.5, "3": 0.9, "4": 0.1})
    b = _rows({"2": 0.75, "3": 1.15, "1": 0.45, "9": 0.0})  # "9" has no partner, "4" neither
    d = paired_difference(a, b, "edit_succ")
    assert d.n == 3
    assert d.mean == pytest.approx(25.0) and d.low == pytest.approx(25.0) and d.high == pytest.approx(25.0)
    assert d.excludes_zero() and str(d) == "+25.00 [+25.00, +25.00]"


def test_missing_and_nan_scores_are_left_out_and_too_few_pairs_give_nan():
    a = _rows({"1": 0.5, "2": math.nan, "3": None})
    b = _rows({"1": 0.7, "2": 0.1, "3": 0.2})
    d = paired_difference(a, b, "edit_succ")
    assert d.n == 1 and math.isnan(d.mean) and str(d) == "n/a"


def test_the_interval_matches_the_normal_approximation_and_is_reproducible():
    rng = np.random.default_rng(1)
    base = rng.random(400)
    shift = 0.03 + 0.1 * rng.standard_normal(400)
    a = _rows({str(i): float(x) for i, x in enumerate(base)})
    b = _rows({str(i): float(x + s) for i, (x, s) in enumerate(zip(base, shift))})
    d = paired_difference(a, b, "edit_succ", seed=3)
    se = 100 * shift.std(ddof=1) / math.sqrt(len(shift))
    assert d.mean == pytest.approx(100 * shift.mean())
    assert d.high - d.low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert d.low < 100 * shift.mean() < d.high
    assert paired_difference(a, b, "edit_succ", seed=3) == d  # same seed, same interval
    assert paired_difference(a, b, "edit_succ", level=0.5).high - paired_difference(a, b, "edit_succ", level=0.5).low \
        < d.high - d.low
    with pytest.raises(ValueError, match="level"):
        paired_difference(a, b, "edit_succ", level=1.0)


def test_a_mean_interval_is_the_summary_mean_with_the_normal_width():
    rng = np.random.default_rng(2)
    x = rng.random(300)
    rows = _rows({str(i): float(v) for i, v in enumerate(x)} | {"nan": math.nan, "none": None})
    m = mean_interval(rows, "edit_succ", seed=1)
    assert m.n == 300 and m.mean == pytest.approx(summarize(rows)["edit_succ"])  # what the cell reports
    assert m.high - m.low == pytest.approx(2 * 1.96 * 100 * x.std(ddof=1) / math.sqrt(300), rel=0.15)
    assert m.low < m.mean < m.high
    assert math.isnan(mean_interval(_rows({"1": 0.5}), "edit_succ").mean)


def test_write_table_adds_the_paired_contrasts_of_intattn(tmp_path):
    run = TableRun(table="table2", model="m", sizes=(4,), methods=("memit", "alphaedit", "intattn"), out=tmp_path)
    scores = {"memit": [1, 1, 0, 1], "alphaedit": [1, 1, 1, 1], "intattn": [1, 0, 0, 1], "pre-edit": [0, 0, 0, 0]}
    for method, s in scores.items():
        rows = [{"id": f"r{i}", "edit_succ": float(v), "portability": 0.5, "locality": 0.25 * i, "fluency": 5.0}
                for i, v in enumerate(s)]
        _write_cell(run, method, 4, summarize(rows), rows, "cpu", {})
    text = write_table(run).read_text()
    assert "| IntAttn-Edit − MEMIT (4) | -25.00 [" in text
    assert "| IntAttn-Edit − AlphaEdit (4) | -50.00 [" in text
    assert "+0.00 [+0.00, +0.00]" in text  # equal per-record Portability: no difference, no spread
    with (run.dir / "contrasts.csv").open() as f:
        got = {(r["B"], r["A"], r["metric"]): float(r["mean"]) for r in csv.DictReader(f)}
    assert got[("intattn", "memit", "edit_succ")] == -25.0 and got[("intattn", "alphaedit", "locality")] == 0.0
    (run.dir / "cells" / "memit-T4.csv").unlink()  # a cell without its rows: no contrast, not an error
    assert "IntAttn-Edit − MEMIT" not in write_table(run).read_text()
