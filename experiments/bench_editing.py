"""Timing of the editing engine: covariance per 100k tokens, target optimisation per fact, and the wall
time / peak memory of IntAttn-Edit batches with cached statistics.

    python experiments/bench_editing.py --model smollm2-135m --cov-tokens 20000 --target-facts 5 --T 100 500

Covariance is timed on the uncached computation (the disk cache is neither read nor written) and scaled
to 100k tokens; the batches read the cached statistics (`--mom2-n-samples`) and optimise their targets
(not cached: `use_cache` is off for the timed runs so earlier runs cannot make them look fast).
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import torch


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def main() -> None:
    from intattn_tl.edit import covariance, targets
    from intattn_tl.data.records import load_edits
    from intattn_tl.edit.transaction import EditState
    from intattn_tl.api import edit
    from intattn_tl.config.hparams import load_hparams
    from intattn_tl.edit.chain import edit_prefixes, edit_statistics, target_hparams
    from intattn_tl.model.load import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--cov-tokens", type=int, default=100_000)
    p.add_argument("--target-facts", type=int, default=5)
    p.add_argument("--T", type=int, nargs="*", default=[100])
    p.add_argument("--mom2-n-samples", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--cached-targets", action="store_true",
                   help="let the batches read cached targets: times the engine without target optimisation")
    p.add_argument("--skip", nargs="*", default=[], choices=["covariance", "targets"], help="parts not to time")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model)
    hp = load_hparams("intattn", model.name, {"mom2_n_samples": args.mom2_n_samples})
    mlp, attn = hp.resolved_layers(model), hp.resolved_attn_layers(model)
    sites = [("w_out", l) for l in mlp] + [("w_o", l) for l in attn]
    print(f"{model.name}: torch threads {torch.get_num_threads()}, MLP layers {mlp}, attention layers {attn}, "
          f"alpha {hp.resolved_alpha(model):.3f}")

    if "covariance" not in args.skip:
        _, texts = covariance.corpus_source(None)
        chunks = covariance.token_chunks(model.tokenizer, texts, args.cov_tokens)
        t0 = time.time()
        _, count = covariance._accumulate(model, sites, chunks, progress=False)
        dt = time.time() - t0
        print(f"covariance: {len(sites)} sites in one pass, {count} tokens in {dt:.1f}s = "
              f"{dt * 100_000 / count:.1f}s per 100k tokens")

    state = EditState()
    prefixes = edit_prefixes(model, hp, state)
    edit_statistics(model, sites, hp, state)  # computed (or read from disk) before the timed batches
    records = load_edits("wiki_counterfact")
    if "targets" not in args.skip:
        facts = records[-args.target_facts:]
        t0 = time.time()
        targets.target_deltas(model, facts, max(mlp + attn), target_hparams(hp), prefixes=prefixes, use_cache=False)
        dt = time.time() - t0
        print(f"targets: {len(facts)} facts in {dt:.1f}s = {dt / len(facts):.2f}s per fact")

    real = targets.target_deltas
    if not args.cached_targets:
        targets.target_deltas = lambda *a, **k: real(*a, **{**k, "use_cache": False})
    for T in args.T:
        batch = records[:T]
        tracemalloc.start()
        rss0, t0 = rss_mb(), time.time()
        res = edit(model, batch, "intattn", hp, state)
        dt = time.time() - t0
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"T={T}{' (cached targets)' if args.cached_targets else ''}: {dt:.1f}s wall, peak RSS {rss_mb():.0f} MB (before {rss0:.0f} MB), "
              f"python-heap peak {py_peak / 2**20:.0f} MB")
        res.rollback()
    targets.target_deltas = real


if __name__ == "__main__":
    main()
