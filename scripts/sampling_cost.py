"""Time the manager's sampler, ``fractal_flood.sampling.tokens.sample``, alone: microseconds per call
over (batch, vocabulary) at temperature 0.8, with and without top-p, and plain argmax.

It times whichever ``fractal_flood`` is on the path, so one command per checkout compares
two versions of the sampler on the same machine (docs/log/notebook.md, "Sampling cost"):

    PYTHONPATH=src python scripts/sampling_cost.py
    PYTHONPATH=/tmp/old/src python scripts/sampling_cost.py   # a checkout of an older commit
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from fractal_flood.sampling.tokens import SamplingConfig, sample


def us_per_call(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    best = float("inf")
    for _ in range(5):  # the best of five: the least disturbed by other jobs
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - t) / repeats)
    return best * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    for V in (1024, 2048, 16384):
        for B in (1, 32):
            logits = torch.randn(B, V, generator=g) * 3
            seeds, steps = torch.arange(B), torch.zeros(B, dtype=torch.long)
            row = {"vocab": V, "batch": B}
            for name, cfg in (("T=0.8", SamplingConfig(0.8)), ("T=0.8 top_p=0.9", SamplingConfig(0.8, top_p=0.9)),
                              ("argmax", SamplingConfig(0.0))):
                row[name] = us_per_call(lambda: sample(logits, cfg, seeds, steps), args.repeats)
            rows.append(row)
            print(f"V={V:>6} B={B:>2}: " + ", ".join(f"{k} {v:,.0f} us" for k, v in row.items()
                                                      if k not in ("vocab", "batch")), flush=True)
    print(json.dumps({"torch": torch.__version__, "machine": platform.machine(), "threads": args.threads,
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
