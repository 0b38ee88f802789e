"""A reproduction's missing cells filled by several worker processes side by side (`--jobs N`).

Why processes: on a small CPU the one-edit-at-a-time methods (ROME, R-ROME, FT) run one small model call
after another, which two threads hardly speed up; two processes with one thread each do twice the work.
Every worker loads the model itself and takes the next work item of `reproduce._plan` (a batch cell, or a
sequential method's whole edit sequence) from one queue until the queue is empty. A cell's numbers do not
depend on which worker made it or in what order: each item starts from the unedited weights, the locality
reference is the parent's, and fluency seeds are per prompt. The disk caches the workers share (targets,
statistics) are written atomically and verified on read, so the worst a race costs is work done twice.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from intattn_tl.core import settings as settings_module
from intattn_tl.core.settings import code_version
from intattn_tl.errors import ReproduceError
from intattn_tl.model.load import load_model

# Rough CPU seconds per edited record on SmolLM2-135M (docs/performance.md, the per-phase profile in bfloat16). Only the ORDER in
# which work items are handed out depends on them: longest first, so the long edit sequences start at once
# and the batch cells fill in around them, and the first batch cell to optimise all T targets (MEMIT at the
# largest T) runs before the cells that reuse them from the disk cache.
COST_PER_RECORD = {"rome": 9.0, "r-rome": 9.0, "ft": 3.5, "memit": 3.5, "alphaedit": 1.2, "intattn": 1.2,
                   "pre-edit": 0.6}


def cost(item: tuple[str, list[int]]) -> float:
    method, sizes = item
    return COST_PER_RECORD.get(method, 3.5) * max(sizes)


def _worker(work, run, items, results, records, ref, settings, threads: int, code: dict) -> None:
    settings_module._CODE = code  # the parent's code version, read when the run started
    torch.set_num_threads(threads)
    try:
        model = load_model(run.model, device=run.device, dtype=run.dtype, device_map=run.device_map,
                           max_memory=run.max_memory)
        for method, sizes in iter(items.get, None):
            t0 = time.time()
            work(model, run, method, sizes, records, ref, settings,
                     on_cell=lambda m, T: results.put(("cell", m, T, time.time() - t0)))
    except BaseException:
        results.put(("error", traceback.format_exc()))
        raise


def run_parallel(work, run, plan: list[tuple[str, list[int]]], records, ref, settings: dict) -> None:
    """Run `plan`'s items (each with `work`, `repro.tables.run_item`, a picklable module-level function) in min(run.jobs, len(plan)) worker processes, the parent's CPU threads split among
    them. Cells are written by the workers as they finish; a failed worker's error is raised here once every
    worker has stopped (the other workers go on with the queue, so the cells they finish are kept)."""

    jobs = min(run.jobs, len(plan))
    threads = max(1, torch.get_num_threads() // jobs)
    ctx = mp.get_context("spawn")  # a fresh interpreter: no torch thread pool or open files inherited
    items, results = ctx.Queue(), ctx.Queue()
    for item in sorted(plan, key=cost, reverse=True):
        items.put(item)
    for _ in range(jobs):
        items.put(None)
    quiet = replace(run, eval_cfg=replace(run.eval_cfg, progress=False))  # one progress bar: the parent's
    code = code_version()
    procs = [ctx.Process(target=_worker, args=(work, quiet, items, results, records, ref, settings, threads, code))
             for _ in range(jobs)]
    for p in procs:
        p.start()
    bar = tqdm(total=sum(len(sizes) for _, sizes in plan), desc=f"{run.table} cells ({jobs} workers x {threads} "
               f"thread{'s' if threads > 1 else ''})", unit="cell")
    errors = []
    while True:
        try:
            msg = results.get(timeout=2)
        except queue.Empty:
            if any(p.is_alive() for p in procs):
                continue
            try:  # every worker has stopped: take what they put last, then stop
                msg = results.get(timeout=2)
            except queue.Empty:
                break
        if msg[0] == "cell":
            bar.update()
            bar.write(f"{run.table}: {msg[1]} T={msg[2]} written ({msg[3]:.0f} s into its work item)")
        else:
            errors.append(msg[1])
    bar.close()
    for p in procs:
        p.join()
    died = [p.exitcode for p in procs if p.exitcode]
    if errors or died:
        detail = errors[0] if errors else f"exit codes {died} (killed? out of memory?)"
        raise ReproduceError(f"{len(errors) or len(died)} of {jobs} workers failed; the finished cells are kept, "
                             f"a re-run computes the rest. First failure:\n{detail}")
