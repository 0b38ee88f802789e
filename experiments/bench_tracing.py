"""Per-site loop vs fast exact causal tracing on one fact: times, ratio, and the largest difference.

    python experiments/bench_tracing.py --model smollm2-135m --threads 2            # full loop (minutes)
    python experiments/bench_tracing.py --model smollm2-135m --loop-sites 60        # loop timed on a sample
    python experiments/bench_tracing.py --loop-sites 30 --kinds resid,attn,mlp --bf16  # + the bfloat16 fast path

With --loop-sites K the loop runs K random sites and its full-grid time is extrapolated (K sites x
grid size / K); the printout says so. Times are wall clock and process CPU time (user+sys, all threads).
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from intattn_tl.model.load import load_model
from intattn_tl.locate.tracing import KINDS, embedding_std, trace_fact, trace_fact_loop

# known_1000 #0 (SmolLM2 does not know it; the work per fact does not depend on that): 10 tokens, subject 0..4
FACT = ("Vinson Massif is located in the continent of", "Vinson Massif", "Antarctica")


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--loop-sites", type=int, default=0, help="time the loop on this many random sites (0: all)")
    p.add_argument("--bf16", action="store_true", help="also time the fast path in bfloat16 and compare it to float32")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    kw = dict(n_samples=args.samples, window=args.window, kinds=tuple(args.kinds.split(",")),
              embed_std=embedding_std(model))
    fast, fast_wall, fast_cpu = timed(lambda: trace_fact(model, *FACT, **kw))
    grid = [(k, l, t) for k in kw["kinds"] for l in range(model.spec.n_layers) for t in range(len(fast.tokens))]
    sites = random.Random(0).sample(grid, args.loop_sites) if 0 < args.loop_sites < len(grid) else None
    loop, loop_wall, loop_cpu = timed(lambda: trace_fact_loop(model, *FACT, sites=sites, **kw))
    scale = len(grid) / len(sites) if sites else 1.0
    diff = np.nanmax(np.abs(fast.logit_diff - loop.logit_diff))
    pdiff = np.nanmax(np.abs(fast.prob - loop.prob))
    what = f"{len(sites)} sampled sites, extrapolated x{scale:.1f}" if sites else "all sites"
    print(f"model={args.model} device={args.device} threads={args.threads} tokens={len(fast.tokens)} "
          f"subject={fast.subject_span} layers={model.spec.n_layers} kinds={','.join(kw['kinds'])} "
          f"samples={args.samples} window={args.window} grid={len(grid)} sites")
    print(f"loop ({what}): wall {loop_wall * scale:.1f}s  cpu {loop_cpu * scale:.1f}s")
    print(f"fast (all sites):  wall {fast_wall:.1f}s  cpu {fast_cpu:.1f}s")
    print(f"ratio loop/fast:   wall {loop_wall * scale / fast_wall:.1f}x  cpu {loop_cpu * scale / fast_cpu:.1f}x")
    print(f"max |diff| over compared sites: logit diff {diff:.2e}, prob {pdiff:.2e}")
    if args.bf16:
        model.hf_model.to(torch.bfloat16)
        half, half_wall, _ = timed(lambda: trace_fact(model, *FACT, **kw))
        d = np.abs(half.logit_diff - fast.logit_diff)
        r = np.corrcoef(half.logit_diff.ravel(), fast.logit_diff.ravel())[0, 1]
        print(f"fast bfloat16:     wall {half_wall:.1f}s ({fast_wall / half_wall:.1f}x float32); LD_pt vs float32: "
              f"max |diff| {d.max():.3f} logits (LD_clean - LD_* = {fast.ld_clean - fast.ld_corrupt:.3f}), "
              f"mean {d.mean():.4f}, correlation {r:.4f}")

if __name__ == "__main__":
    main()
