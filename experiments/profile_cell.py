"""Where a table cell's time goes: wall and CPU seconds per phase for one cell of each method at one T.

    OMP_NUM_THREADS=1 python experiments/profile_cell.py --model smollm2-135m --T 100 --threads 1
    OMP_NUM_THREADS=1 python experiments/profile_cell.py --T 20 --methods rome memit --cold-targets

A cell is `reproduce.run_cell` (edit the first T WikiData_counterfact records, evaluate them, roll back), so
this profiles the code `intattn reproduce` runs. Phases are timed by wrapping the library functions that
begin them (`Profiler.wrap`), not by copies of their code; time is exclusive (a phase called inside another
counts once, for the inner one), and "edit: other" / "eval: other" are what `edit` / `evaluate` spent
outside the named phases (FT's optimisation loop is in "edit: other"). Statistics come from the disk cache
when present (as in a re-run); targets too unless --cold-targets. CPU seconds are the process's: on a busy
machine wall > CPU, and CPU is the better measure of the work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps

import torch

# phase -> (module, function) pairs that start it; every module holding the same function object is patched
PHASES = {
    "statistics": [("intattn_tl.edit.chain", "edit_statistics")],
    "prefixes": [("intattn_tl.edit.chain", "edit_prefixes")],
    "targets": [("intattn_tl.edit.targets", "target_deltas")],
    "keys": [("intattn_tl.edit.keys", f) for f in ("subject_activations", "mlp_keys", "attn_keys", "resid_post")],
    "solves": [("intattn_tl.edit.solve", f) for f in ("solve_delta", "nullspace_projector", "solve_projected")]
              + [("intattn_tl.methods.rome", "rank_one")],
    "eval: teacher-forced": [("intattn_tl.evaluation.metrics", "answer_argmax")],
    "eval: generation": [("intattn_tl.evaluation.metrics", "sample_texts")],
    "edit: other": [("intattn_tl.api", "edit")],
    "eval: other": [("intattn_tl.evaluation.metrics", "evaluate")],
}


@dataclass
class Profiler:
    """Exclusive wall / CPU seconds per phase: entering a phase pauses the one it is called from."""

    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    stack: list[list] = field(default_factory=list)  # [phase, wall start, cpu start]
    undo: list = field(default_factory=list)

    def _charge(self, frame) -> None:
        name, w0, c0 = frame
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w0
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c0

    @contextmanager
    def phase(self, name: str):
        if self.stack:
            self._charge(self.stack[-1])
        self.stack.append([name, time.perf_counter(), time.process_time()])
        try:
            yield
        finally:
            self._charge(self.stack.pop())
            if self.stack:
                self.stack[-1][1:] = [time.perf_counter(), time.process_time()]

    def patch(self, module_name: str, fn_name: str, make) -> None:
        """Replace `module.fn` by make(fn) in every loaded intattn_tl module that imported it by name."""
        original = getattr(sys.modules[module_name], fn_name)
        new = wraps(original)(make(original))
        for mod in [m for n, m in list(sys.modules.items()) if n.startswith("intattn_tl") and m is not None]:
            if getattr(mod, fn_name, None) is original:
                setattr(mod, fn_name, new)
                self.undo.append((mod, fn_name, original))

    def wrap(self, module_name: str, fn_name: str, phase: str) -> None:
        def make(original):
            def timed(*args, **kwargs):
                with self.phase(phase):
                    return original(*args, **kwargs)
            return timed
        self.patch(module_name, fn_name, make)

    def restore(self) -> None:
        for mod, name, original in reversed(self.undo):
            setattr(mod, name, original)
        self.undo.clear()

    def take(self) -> dict[str, tuple[float, float]]:
        out = {k: (self.wall[k], self.cpu[k]) for k in self.wall}
        self.wall, self.cpu = {}, {}
        return out


def table(results: dict[str, dict[str, tuple[float, float]]]) -> str:
    phases = list(dict.fromkeys(p for r in results.values() for p in r))
    lines = ["| phase | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for p in phases + ["total"]:
        cells = []
        for r in results.values():
            w, c = (sum(v[0] for v in r.values()), sum(v[1] for v in r.values())) if p == "total" else r.get(p, (0, 0))
            cells.append(f"{w:.1f} / {c:.1f}" if (w or c) else "-")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    import intattn_tl.methods  # noqa: F401  (register the methods, so their imported names get wrapped)
    from intattn_tl.data.records import load_edits
    from intattn_tl.evaluation.metrics import EvalConfig, locality_reference
    from intattn_tl.model.load import load_model
    from intattn_tl.repro.tables import METHODS, TableRun, run_cell

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--methods", nargs="*", default=["pre-edit", *METHODS])
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--no-fluency", action="store_true")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype the model is loaded and run in (bfloat16: fast only on CPUs with bf16 units)")
    p.add_argument("--cold-targets", action="store_true", help="optimise every target (ignore the disk cache)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()}), torch threads {torch.get_num_threads()}, "
          f"{args.dtype}, T = {args.T}, fluency {'off' if args.no_fluency else 'on'}, targets {'cold (cache ignored)' if args.cold_targets else 'from the disk cache where present'}")

    prof = Profiler()
    if args.cold_targets:
        prof.patch("intattn_tl.edit.targets", "target_deltas", lambda real: lambda *a, **k: real(*a, **{**k, "use_cache": False}))
    for phase, fns in PHASES.items():
        for module_name, fn_name in fns:
            prof.wrap(module_name, fn_name, phase)
    results: dict[str, dict[str, tuple[float, float]]] = {}
    try:
        with prof.phase("load"):
            model = load_model(args.model, dtype=args.dtype)
            records = load_edits("wiki_counterfact", limit=args.T)
        run = TableRun(model=args.model, dtype=args.dtype, eval_cfg=EvalConfig(fluency=not args.no_fluency, progress=False))
        with prof.phase("locality reference"):
            ref = locality_reference(model, records, run.eval_cfg)
        results["setup"] = prof.take()
        for method in args.methods:
            with prof.phase("cell: other"):
                run_cell(model, method, records, run, ref)
            results[method] = prof.take()
            # the table so far after every cell, so a stopped run keeps what it measured
            print(f"\n{method}: {sum(w for w, _ in results[method].values()):.1f}s wall; wall / CPU seconds per phase, "
                  f"one cell each, T = {args.T} (load average now {os.getloadavg()[0]:.1f})\n", flush=True)
            print(table(results), flush=True)
    finally:
        prof.restore()


if __name__ == "__main__":
    main()
