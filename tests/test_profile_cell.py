"""experiments/profile_cell.py: phase time is exclusive (a nested phase is charged once, to itself) and the
library functions it wraps are restored afterwards."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_profile_cell():
    spec = importlib.util.spec_from_file_location("profile_cell", ROOT / "experiments" / "profile_cell.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["profile_cell"] = mod  # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    return mod


class FakeClock:
    """perf_counter / process_time that move only when told: the test reads the bookkeeping, not the machine."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_nested_phases_are_charged_exclusively(monkeypatch):
    mod = load_profile_cell()
    clock = FakeClock()
    monkeypatch.setattr(mod, "time", SimpleNamespace(perf_counter=clock, process_time=clock))
    prof = mod.Profiler()
    with prof.phase("outer"):
        clock.sleep(0.05)
        with prof.phase("inner"):
            clock.sleep(0.10)
        clock.sleep(0.05)
    out = prof.take()
    assert out["outer"] == pytest.approx((0.10, 0.10))  # 0.05 + 0.05, not the inner 0.10 as well
    assert out["inner"] == pytest.approx((0.10, 0.10))
    assert prof.take() == {}  # take() resets


def test_wrap_times_every_importer_and_restore_undoes_it():
    import intattn_tl.evaluation.metrics as evaluate_mod
    import intattn_tl.repro.tables as reproduce_mod

    original = evaluate_mod.evaluate
    assert reproduce_mod.evaluate is original  # reproduce imports it by name: both must be patched
    prof = load_profile_cell().Profiler()
    prof.wrap("intattn_tl.evaluation.metrics", "evaluate", "eval")
    try:
        assert evaluate_mod.evaluate is not original and reproduce_mod.evaluate is evaluate_mod.evaluate
        assert evaluate_mod.evaluate.__wrapped__ is original
    finally:
        prof.restore()
    assert evaluate_mod.evaluate is original and reproduce_mod.evaluate is original
