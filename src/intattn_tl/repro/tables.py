"""Reproduce the paper's Tables 1 and 2: every method x batch size T on a KnowEdit dataset, resumable.

Semantics (written into every output): for each (method, T) the model starts unedited (we roll the previous
cell's edit back, which restores the weights bit-for-bit — the same as reloading), the FIRST T records of
the dataset's test split are edited (batch methods in one batch; ROME / R-ROME / FT one edit after
another), then all T records are evaluated after the last edit. Each finished cell is written atomically to
`<out>/cells/<method>-T<T>.json` (+ per-record CSV); a re-run skips finished cells and never reports a
half-finished one.

One-edit-at-a-time methods run all their missing sizes as ONE sequence (`run_sequence`): the state after
the first T edits of a 500-edit sequence is the state after a 100-edit run, so the T = 100 / 300 cells are
evaluated at those checkpoints instead of re-editing from scratch (900 edits become 500). Each such cell
lists the checkpoints of its sequence under `sequence`. Only missing cells are checkpoints: with just
T = 500 missing, the sequence is the plain 500-edit run. A sequence saves its progress as it goes
(`repro.sequence`), so a stopped one goes on from its last save instead of from its first edit.

Across machines, a W&B sweep agent runs one cell (`run_one_cell`, via experiments/sweep_agent.py) into a
folder it shares with the other agents, and `collect` assembles the table from the cells present.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
from tqdm.auto import tqdm

from intattn_tl.api import check_hparams, edit
from intattn_tl.config.hparams import load_hparams
from intattn_tl.core.checks import CheckError, check_int, writable_dir
from intattn_tl.core.settings import code_version, edit_settings
from intattn_tl.core.store import _atomic, read_rows, write_json, write_text
from intattn_tl.data.records import load_edits
from intattn_tl.edit.result import EditResult
from intattn_tl.edit.transaction import EditState
from intattn_tl.errors import ReproduceError
from intattn_tl.evaluation.intervals import Interval, paired_difference
from intattn_tl.evaluation.metrics import EvalConfig, evaluate, locality_reference, summarize
from intattn_tl.methods import get_method
from intattn_tl.model.load import load_model
from intattn_tl.model.spec import LoadedModel, weights_fingerprint
from intattn_tl.repro import tracking
from intattn_tl.repro.parallel import run_parallel
from intattn_tl.repro.plots import plot_table
from intattn_tl.repro.results import (
    SCORING,
    edit_and_evaluate,
    read_verified,
    refuse_other_settings,
    scoring,
    write_result,
)
from intattn_tl.repro.sequence import SAVE_EVERY, SequenceStore, restore, snapshot

METHODS = ("ft", "rome", "r-rome", "memit", "alphaedit", "intattn")
DISPLAY = {"pre-edit": "Pre-edit", "ft": "FT", "rome": "ROME", "r-rome": "R-ROME", "memit": "MEMIT",
           "alphaedit": "AlphaEdit", "intattn": "IntAttn-Edit"}
# (summary key, column title, higher is better)
COLUMNS = (("edit_succ", "Edit Succ."), ("portability", "Portability"), ("locality", "Locality"), ("fluency", "Fluency"))
TABLES = {"table1": "zsre", "table2": "wiki_counterfact"}
SEMANTICS = ("For each (method, T): the unedited model (previous edits rolled back bit-exactly); the first T "
             "records of the test split edited (MEMIT/AlphaEdit/IntAttn-Edit in one batch, ROME/R-ROME/FT one "
             "edit after another, the sizes of one method as checkpoints of one sequence); all T records "
             "evaluated after the T-th edit. Portability and Locality: per record the mean over its probe kinds, "
             "then the mean over records (EasyEdit's KnowEdit runner, the paper's tables).")
CONTRASTS = (("intattn", "memit"), ("intattn", "alphaedit"))  # (B, A): B − A per record, under each table
AGGREGATION = "record"  # evaluate.summarize's default; cells without this field predate it (reaggregate_cells)


@dataclass
class TableRun:
    table: str = "table2"
    model: str = "smollm2-135m"
    sizes: tuple[int, ...] = (100, 300, 500)
    methods: tuple[str, ...] = METHODS
    out: Path = Path("runs")
    device: str = "cpu"
    dtype: str = "float32"  # the dtype the model is loaded (and run) in; recorded in the cells when not float32
    device_map: str | dict | None = None  # a model split over devices (load_model); then `device` is unused
    max_memory: dict | None = None
    eval_cfg: EvalConfig = field(default_factory=EvalConfig)
    hparam_overrides: dict = field(default_factory=dict)  # method -> {field: value}
    wandb: bool = False  # log each cell it computes as a W&B run (log_cell); `intattn reproduce` turns it on
    jobs: int = 1  # worker processes filling the table side by side (run_parallel); the CPU threads are split

    @property
    def dataset(self) -> str:
        return TABLES[self.table]

    @property
    def dir(self) -> Path:
        return Path(self.out) / f"{self.table}-{self.model}"


# ----------------------------------------------------------------------------- a cell's settings, verified cells


def cell_settings(run: TableRun, method: str, model: LoadedModel) -> dict:
    """What decides a cell's numbers besides T: the method's resolved hyperparameters (α and layers written
    out), the dataset and the scoring. Stored in every cell; a resume must match it."""

    if method == "pre-edit":
        return {"method": method, "model": run.model, "dataset": run.dataset, "eval": scoring(run.eval_cfg)}
    hp = load_hparams(method, model.name, run.hparam_overrides.get(method))
    return {**edit_settings(method, hp, model), "dataset": run.dataset, "eval": scoring(run.eval_cfg)}


def _cell_key(method: str, T: int) -> dict:
    return {"method": method, "T": T}


def read_cell(path: Path) -> dict:
    """A finished cell, verified (sha256 and its method/T key); a damaged one is refused, never counted."""
    method, _, T = path.stem.rpartition("-T")
    return read_verified(path, _cell_key(method, int(T)),
                         lambda c: c.get("method") == method and str(c.get("T")) == T, ReproduceError, "cell")


def check_resume(run: TableRun, cells: dict, settings: dict[str, dict]) -> None:
    """Refuse to add cells to a folder whose cells of the same method were made with other settings."""
    for (method, T), cell in sorted(cells.items()):
        refuse_other_settings(run.dir / "cells" / f"{method}-T{T}.json", cell.get("settings"), settings.get(method),
                              ReproduceError)


def reaggregate(summary: dict, rows: list[dict]) -> dict:
    """`summary` with its metrics recomputed from its per-record `rows` on the KnowEdit runner's aggregation
    (evaluate.summarize). The metrics that do not depend on the aggregation must come out as stored: a CSV
    that does not belong to its cell is refused."""
    new = summarize(rows)
    for key in ("edit_succ", "fluency", "edit_em"):
        a, b = summary.get(key), new.get(key)
        if a is not None and b is not None and not (math.isnan(a) and math.isnan(b)) and abs(a - b) > 1e-6:
            raise ReproduceError(f"the per-record rows give {key} {b:.6f}, the cell says {a:.6f}: rows and cell disagree")
    return {**summary, **{k: v for k, v in new.items() if k != "n_records"}, "aggregation": AGGREGATION}


def reaggregate_cells(run: TableRun) -> list[Path]:
    """Rewrite every cell of `run.dir` made on the earlier aggregation (no "aggregation" field) from its CSV."""
    done = []
    for path in sorted((run.dir / "cells").glob("*.json")):
        cell = read_cell(path)
        if cell.get("aggregation") == AGGREGATION:
            continue
        method, _, T = path.stem.rpartition("-T")
        write_json(path, reaggregate(cell, read_rows(path.with_suffix(".csv"))), _cell_key(method, int(T)))
        done.append(path)
    return done


def _evaluate_cell(model: LoadedModel, records, run: TableRun, ref) -> tuple[dict, list[dict]]:
    t0 = time.time()
    rows = evaluate(model, records, run.eval_cfg, locality_ref=ref)
    return {**summarize(rows), "aggregation": AGGREGATION, "eval_seconds": time.time() - t0}, rows


def run_cell(model: LoadedModel, method: str, records, run: TableRun, ref) -> tuple[dict, list[dict]]:
    """Edit `records` with `method`, evaluate them, roll back. Returns (summary, per-record rows)."""
    if method == "pre-edit":
        summary, rows = _evaluate_cell(model, records, run, ref)
        return {**summary, "edit_seconds": 0.0}, rows
    hp = load_hparams(method, model.name, run.hparam_overrides.get(method))
    rows, t_edit, t_eval = edit_and_evaluate(model, method, records, hp, run.eval_cfg, ref, run.eval_cfg.progress)
    return {**summarize(rows), "aggregation": AGGREGATION, "eval_seconds": t_eval, "edit_seconds": t_edit}, rows


def run_sequence(model: LoadedModel, method: str, records, checkpoints: list[int], run: TableRun, ref,
                 on_cell: Callable[[int, dict, list[dict]], None], every: int = SAVE_EVERY) -> None:
    """One edit after another over records[:max(checkpoints)] (one EditState: prefixes and statistics of
    the unedited model, as a single run has), evaluating records[:T] after the T-th edit for every
    checkpoint T and handing (T, summary, rows) to `on_cell` at once. Rolls every edit back at the end.

    The sequence's progress is saved every `every` edits and before each checkpoint's evaluation
    (`repro.sequence`); a sequence that stopped goes on from its last save."""
    checkpoints = sorted(set(checkpoints))
    hp = load_hparams(method, model.name, run.hparam_overrides.get(method))
    ids = [r.id for r in records[:checkpoints[-1]]]
    store = SequenceStore(run.dir / "sequences" / f"{method}.pt", sequence_key(run, method, model))
    state, results, done, t_edit, per_edit, resumed_at = EditState(), [], 0, 0.0, [], []
    saved = store.load(ids)
    if saved is not None and saved.done > checkpoints[0]:  # a missing cell lies behind it: not reachable
        print(f"[intattn] {method}: the saved sequence is {saved.done} edits in, past the missing T = "
              f"{checkpoints[0]}; starting from the first edit", file=sys.stderr)
        saved = None
    try:
        if saved is not None:
            results.append(EditResult(model, method, hp, list(records[:saved.done]), restore(model, saved, state)))
            done, t_edit, per_edit = saved.done, saved.edit_seconds, saved.per_edit
            resumed_at = [*saved.resumed_at, done]
            print(f"[intattn] {method}: going on from edit {done} of {checkpoints[-1]} ({store.path})", file=sys.stderr)
        stops = sorted({*checkpoints, *range(every, checkpoints[-1], every)})
        for stop in (s for s in stops if s >= done):
            if stop > done:
                t0 = time.time()
                results.append(edit(model, records[done:stop], method=method, hparams=hp, state=state,
                                    progress=run.eval_cfg.progress, conflicts="allow", sanity=None))
                t_edit, done = t_edit + time.time() - t0, stop
                per_edit = per_edit + results[-1].stats.get("per_edit", [])
                if done < checkpoints[-1] or done in checkpoints:
                    store.save(snapshot(model, results, state, ids[:done], per_edit, t_edit, resumed_at))
                    if run.eval_cfg.progress:
                        tqdm.write(f"{method}: {done} of {checkpoints[-1]} edits, progress saved", file=sys.stderr)
            if stop in checkpoints:
                summary, rows = _evaluate_cell(model, records[:stop], run, ref)
                summary = {**summary, "edit_seconds": t_edit, "sequence": checkpoints, "per_edit": per_edit}
                on_cell(stop, {**summary, "resumed_at": resumed_at} if resumed_at else summary, rows)
        store.clear()
    finally:
        for result in reversed(results):  # each restores the weights it found: back to the originals
            result.rollback()


def sequence_key(run: TableRun, method: str, model: LoadedModel) -> dict:
    """What decides a sequence's edits (`SequenceStore`'s key): settings, unedited weights, dtype, code."""
    return {"settings": cell_settings(run, method, model), "weights": weights_fingerprint(model),
            "dtype": run.dtype, "code": code_version()}


def _run_record(run: TableRun, path: Path) -> dict:
    """run.json: the union of every run into this folder. A run whose scoring differs from the folder's
    (say a QUICK run, with 40-token fluency samples, into a full run's folder) is refused: one table, one metric."""
    sizes, methods = set(run.sizes), set(run.methods)
    if path.exists():
        try:
            prev = json.loads(path.read_text())
        except json.JSONDecodeError:
            prev = {}  # a damaged run.json says nothing the cells do not
        old = {k: prev.get("eval", {}).get(k) for k in SCORING}
        new = scoring(run.eval_cfg)
        if prev.get("eval") and old != new:
            raise ReproduceError(f"{path.parent} holds cells scored with {old}; this run scores with {new}. "
                             "Use another --out for a different evaluation.")
        sizes |= set(prev.get("sizes", []))
        methods |= set(prev.get("methods", []))
    return {"table": run.table, "dataset": run.dataset, "model": run.model, "sizes": sorted(sizes),
            "methods": [m for m in METHODS if m in methods] + sorted(methods - set(METHODS)),
            "semantics": SEMANTICS, "eval": vars(run.eval_cfg)}


def _check_run(run: TableRun) -> None:
    if run.table not in TABLES:
        raise ReproduceError(f"unknown table {run.table!r}; choose from {', '.join(TABLES)}")
    try:
        if not run.sizes:
            raise CheckError("sizes must name at least one batch size T")
        for T in run.sizes:
            check_int("each size T", T, lo=1)
        check_int("jobs", run.jobs, lo=1)
        writable_dir(run.dir / "cells")
    except CheckError as err:
        raise ReproduceError(str(err)) from None
    for m in run.methods:
        get_method(m)  # an unknown method name fails here, before any work


def grid(run: TableRun) -> list[tuple[str, int]]:
    """Every cell of the table: pre-edit and each method at each T."""
    return [("pre-edit", T) for T in run.sizes] + [(m, T) for m in run.methods for T in run.sizes]


def run_table(run: TableRun, cells: list[tuple[str, int]] | None = None) -> Path:
    """Run every missing cell of the table (or of `cells`, a part of it), then write table.md / table.csv.
    Returns the output folder. Another process may fill the same folder at the same time (a sweep agent):
    a cell that appears meanwhile is not written again, so the worst case is work done twice."""

    code_version()  # the commit of the code this process runs, before any work (cells record it)
    _check_run(run)
    out = run.dir
    done = load_cells(run)  # every finished cell verified first: a damaged one stops the run here
    todo = [c for c in (cells or grid(run)) if c not in done]
    record = _run_record(run, out / "run.json")  # a run scored differently from the folder's stops here
    # The model is loaded even when every cell exists: the cells' recorded settings are checked against this
    # run's (dtype, --set, YAML, tracing defaults), so a table is never shown for settings it was not made with.
    # `intattn reproduce collect` assembles whatever cells exist without that check.
    model = load_model(run.model, device=run.device, dtype=run.dtype, device_map=run.device_map,
                       max_memory=run.max_memory)
    for m in run.methods:  # every method's hyperparameters checked before the first cell runs
        check_hparams(m, load_hparams(m, model.name, run.hparam_overrides.get(m)), model)
    settings = {m: cell_settings(run, m, model) for m in {"pre-edit", *run.methods, *(m for m, _ in todo)}}
    check_resume(run, done, settings)
    write_text(out / "run.json", json.dumps(record, indent=1, default=str))
    if todo:
        records = load_edits(run.dataset, limit=max(run.sizes))
        ref = locality_reference(model, records, run.eval_cfg)  # pre-edit predictions, computed once
        plan = _plan(todo, run.sizes, done)
        if run.jobs > 1 and len(plan) > 1:
            del model  # each worker loads its own copy
            run_parallel(run_item, run, plan, records, ref, settings)
        else:
            bar = tqdm(total=sum(len(sizes) for _, sizes in plan), desc=f"{run.table} cells", unit="cell")
            for method, sizes in plan:
                bar.set_postfix_str(f"{method} T={','.join(map(str, sizes))}")
                run_item(model, run, method, sizes, records, ref, settings, on_cell=lambda *_: bar.update())
            bar.close()
    write_table(run)
    return out


def run_item(model: LoadedModel, run: TableRun, method: str, sizes: list[int], records, ref, settings: dict,
             on_cell: Callable[[str, int], None] = lambda m, T: None) -> None:
    """One work item of `_plan`: a batch cell, or a one-edit-at-a-time method's sequence with its checkpoints.
    Each finished cell is written at once (unless another process wrote it meanwhile)."""
    def finish(T: int, summary: dict, rows: list[dict]) -> None:
        if not cell_path(run, method, T).exists():
            _write_cell(run, method, T, summary, rows, str(model.device), settings[method])
        on_cell(method, T)

    if _sequential(method):
        run_sequence(model, method, records, sizes, run, ref, finish)
    else:
        finish(sizes[0], *run_cell(model, method, records[:sizes[0]], run, ref))


def _sequential(method: str) -> bool:
    return method != "pre-edit" and not get_method(method).batch


def _plan(todo: list[tuple[str, int]], sizes=(), done=()) -> list[tuple[str, list[int]]]:
    """The missing cells as work items: one per cell, except one per method for the one-edit-at-a-time
    methods: one edit sequence up to its largest missing T, evaluated at every missing T of `sizes` on the
    way (so a sweep agent asked for (rome, 300) also writes a missing (rome, 100))."""
    plan: list[tuple[str, list[int]]] = []
    for method, T in todo:
        if not _sequential(method):
            plan.append((method, [T]))
        elif method not in (m for m, _ in plan):
            mine = {t for m, t in todo if m == method}
            passed = {S for S in sizes if S < max(mine) and (method, S) not in done}
            plan.append((method, sorted(mine | passed)))
    return plan


def cell_path(run: TableRun, method: str, T: int) -> Path:
    return run.dir / "cells" / f"{method}-T{T}.json"


def _write_cell(run: TableRun, method: str, T: int, summary: dict, rows: list[dict], device: str,
                settings: dict) -> None:

    summary.update(method=method, T=T, n=len(rows), model=run.model, dataset=run.dataset, device=device,
                   settings={**settings, "code": code_version()})
    write_result(cell_path(run, method, T), summary, rows, _cell_key(method, T))
    if run.wandb:
        log_cell(run, method, T, summary, rows)


def log_cell(run: TableRun, method: str, T: int, summary: dict, rows: list[dict], extra: dict | None = None) -> Path:
    """One W&B run per cell: config = the cell's resolved settings (hyperparameters as used, model, dtype, T,
    dataset, evaluation, code version) and `extra`, summary = its metrics and timings, tables = its per-record
    scores and, for a one-edit-at-a-time method, what each edit of the sequence did."""
    config = {"table": run.table, "T": T, "dtype": run.dtype, "device": summary.get("device"), **summary["settings"],
              "eval_config": asdict(run.eval_cfg), **(extra or {})}  # settings' "eval": the scoring fields
    tables = {"per_record": rows}
    if summary.get("per_edit"):
        tables["per_edit"] = [{k: v for k, v in e.items() if not isinstance(v, (list, dict))} for e in summary["per_edit"]]
    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return tracking.log_run(run.table, json.loads(json.dumps(config, default=str)), numbers, tables,
                            name=f"{run.table}-{run.model}-{method}-T{T}", group=f"{run.table}-{run.model}")


def load_cells(run: TableRun) -> dict[tuple[str, int], dict]:
    cells = {}
    for path in sorted((run.dir / "cells").glob("*.json")):
        s = read_cell(path)
        cells[(s["method"], int(s["T"]))] = s
    return cells


def _marks(values: dict[str, float | None]) -> dict[str, str]:
    """Best value in bold, second-best value marked with a dagger (ties share the mark; pre-edit is not ranked).
    A rank needs something to rank against: one method alone gets no mark, two get no dagger."""
    scored = {m: round(v, 2) for m, v in values.items() if m != "pre-edit" and v is not None and not math.isnan(v)}
    levels = sorted(set(scored.values()), reverse=True)[:max(0, min(len(scored) - 1, 2))]  # n methods: n - 1 marks, at most 2
    return {m: "bold" if v == levels[0] else "dagger" for m, v in scored.items() if v in levels}


def contrasts(run: TableRun, cells: dict[tuple[str, int], dict]) -> dict[tuple[str, str, int], dict[str, Interval]]:
    """For each pair of CONTRASTS whose two cells exist at a T: B − A on every column, paired on the records."""
    out = {}
    for b, a in CONTRASTS:
        for T in sorted({T for _, T in cells}):
            paths = [cell_path(run, m, T).with_suffix(".csv") for m in (a, b)]
            if (a, T) in cells and (b, T) in cells and all(p.exists() for p in paths):  # rows: cells since 2026-11
                rows_a, rows_b = (read_rows(p) for p in paths)
                out[(b, a, T)] = {key: paired_difference(rows_a, rows_b, key) for key, _ in COLUMNS}
    return out


def format_contrasts(diffs: dict[tuple[str, str, int], dict[str, Interval]], T: int) -> list[str]:
    rows = [(b, a, d) for (b, a, t), d in diffs.items() if t == T]
    if not rows:
        return []
    lines = ["Paired differences over the records both cells scored, mean [95 % bootstrap interval]:", "",
             "| B − A (records) | " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for b, a, d in rows:
        n = max(x.n for x in d.values())
        lines.append(f"| {DISPLAY.get(b, b)} − {DISPLAY.get(a, a)} ({n}) | " + " | ".join(str(d[k]) for k, _ in COLUMNS) + " |")
    return lines + [""]


def format_markdown(cells: dict[tuple[str, int], dict], sizes, methods, title: str,
                    diffs: dict[tuple[str, str, int], dict[str, Interval]] | None = None) -> str:
    lines = [f"### {title}", "", SEMANTICS, ""]
    for T in sizes:
        header = ["Method", *[c[1] for c in COLUMNS], "Edit EM", "Edit s", "Eval s", "Device"]
        lines += [f"**T = {T}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        order = ["pre-edit", *methods]
        marks = {key: _marks({m: cells.get((m, T), {}).get(key) for m in order}) for key, _ in COLUMNS}
        for m in order:
            cell = cells.get((m, T))
            if cell is None:
                lines.append(f"| {DISPLAY.get(m, m)} | " + " | ".join(["(not run)"] * (len(header) - 1)) + " |")
                continue
            vals = []
            for key, _ in COLUMNS:
                v = cell.get(key)
                text = "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"
                mark = marks[key].get(m)
                vals.append(f"**{text}**" if mark == "bold" else f"{text}†" if mark == "dagger" else text)
            em = cell.get("edit_em")
            vals.append("n/a" if em is None else f"{em:.2f}")
            vals += [f"{cell.get('edit_seconds', 0):.0f}", f"{cell.get('eval_seconds', 0):.0f}",
                     cell.get("device", "?").split(":")[0]]  # seconds only compare on one device
            lines.append(f"| {DISPLAY.get(m, m)} | " + " | ".join(vals) + " |")
        lines.append("")
        lines += format_contrasts(diffs or {}, T)
    return "\n".join(lines)


def write_table(run: TableRun) -> Path:
    """table.md / table.csv / table.png from every finished cell in the folder, so a later run of a few methods
    or sizes (`--methods memit --sizes 300`) adds to the table instead of hiding earlier cells. Each file is
    replaced atomically: agents filling one folder may all rewrite them."""

    cells = load_cells(run)
    title = f"{run.table} — {run.dataset}, {run.model}"
    done = {m for m, _ in cells} | set(run.methods)
    methods = [m for m in METHODS if m in done] + sorted(done - set(METHODS) - {"pre-edit"})
    sizes = sorted(set(run.sizes) | {T for _, T in cells})
    diffs = contrasts(run, cells)
    write_text(run.dir / "table.md", format_markdown(cells, sizes, methods, title, diffs) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "T", *[k for k, _ in COLUMNS], "exact_match", "edit_seconds", "eval_seconds", "device"])
    for (m, T), s in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        w.writerow([m, T, *[s.get(k) for k, _ in COLUMNS], s.get("edit_em"), s.get("edit_seconds"), s.get("eval_seconds"),
                    s.get("device")])
    write_text(run.dir / "table.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["B", "A", "T", "metric", "mean", "low", "high", "n", "level"])
    for (b, a, T), d in diffs.items():
        w.writerows([b, a, T, key, x.mean, x.low, x.high, x.n, x.level] for key, x in d.items())
    write_text(run.dir / "contrasts.csv", buf.getvalue())
    fig = plot_table(cells, ["pre-edit", *methods], COLUMNS, DISPLAY, title)
    _atomic(run.dir / "table.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return run.dir / "table.md"


def collect(run: TableRun) -> list[tuple[str, int]]:
    """Assemble table.md / table.csv / table.png from whatever cells `run.dir` holds (whoever made them);
    returns the cells of the table's grid (pre-edit + run.methods at run.sizes) that are still missing."""
    if not (run.dir / "cells").is_dir():
        raise ReproduceError(f"{run.dir / 'cells'} does not exist: no cell of {run.table} for {run.model} in {run.out}")
    reaggregate_cells(run)
    write_table(run)
    cells = load_cells(run)
    return [c for c in grid(run) if c not in cells]


def run_one_cell(run: TableRun, method: str, T: int) -> tuple[dict, list[dict]]:
    """What one W&B sweep agent run does: cell (method, T) of the table in `run.dir`, computed unless another
    run already wrote it, returned with its per-record rows. `run.sizes` are the whole table's sizes: the
    locality reference is that of the table's records (as in one sequential run), and a one-edit-at-a-time
    method runs its edit sequence up to T, also writing the missing cells of smaller sizes on the way."""
    if T not in run.sizes:
        raise ReproduceError(f"T={T} is not one of the table's sizes {list(run.sizes)}")
    if method != "pre-edit":
        get_method(method)
    run_table(replace(run, methods=() if method == "pre-edit" else (method,)), cells=[(method, T)])
    path = cell_path(run, method, T)
    return read_cell(path), read_rows(path.with_suffix(".csv"))
