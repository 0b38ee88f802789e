"""Bootstrap intervals for table cells: a metric's mean over records, and paired differences between two
evaluations of the same records.

A table cell is a mean over T records, and one batch of 100 records moves a metric by 1–3 points from
noise alone; two methods evaluated on the same records differ by less noise than that, since each record's
difficulty cancels. `paired_difference` resamples the records (with replacement) and recomputes
B − A on the records both scored, as the tables aggregate them (×100, a record's Portability / Locality
already the mean over its probe kinds); `mean_interval` does the same for one evaluation's mean (Figure 4's
error bars).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over `n` records (or of B − A over `n` paired records), with a percentile bootstrap interval."""

    mean: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        if math.isnan(self.mean):
            return "n/a"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def _scores(rows: list[dict], key: str) -> dict[str, float]:
    out = {}
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
            out[str(r["id"])] = float(v)
    return out


def paired_values(rows_a: list[dict], rows_b: list[dict], key: str) -> np.ndarray:
    """B − A (×100) per record scored in both (paired on "id"), in B's order."""
    a, b = _scores(rows_a, key), _scores(rows_b, key)
    return np.array([100 * (b[i] - a[i]) for i in b if i in a])


def paired_difference(rows_a: list[dict], rows_b: list[dict], key: str, samples: int = BOOTSTRAP_SAMPLES,
                      level: float = LEVEL, seed: int = 0) -> Interval:
    """Mean of B − A (×100) over the records scored in both, and its percentile bootstrap interval."""
    return _bootstrap(paired_values(rows_a, rows_b, key), samples, level, seed)


def mean_interval(rows: list[dict], key: str, samples: int = BOOTSTRAP_SAMPLES, level: float = LEVEL,
                  seed: int = 0) -> Interval:
    """Mean (×100) of `key` over the records that scored it, and its percentile bootstrap interval."""
    return _bootstrap(100 * np.array(list(_scores(rows, key).values())), samples, level, seed)


def _bootstrap(values: np.ndarray, samples: int, level: float, seed: int) -> Interval:
    """Fewer than two values give NaN (an interval from one record means nothing)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if len(values) < 2:
        return Interval(math.nan, math.nan, math.nan, len(values), level)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(values.mean()), float(low), float(high), len(values), level)
