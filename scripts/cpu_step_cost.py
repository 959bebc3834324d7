"""What the CPU decode runtimes cost, taking turns round after round (a shared CPU moves
single runs by 10% and more; the median ratio over rounds is the estimate).

Runtimes (environment switches, read when a stream or slot cache is built):

- ``blas``: the eager step with one library call per linear layer for the whole batch
  (``FRACTAL_FLOOD_ROWWISE=blas FRACTAL_FLOOD_CPU_STEP=eager``): the old default, not
  batch-invariant;
- ``rowwise``: the eager step with row-invariant linear layers (``FRACTAL_FLOOD_CPU_STEP=eager``);
- ``body``: every layer in one C call, the output layer and the draw in Python
  (``FRACTAL_FLOOD_CPU_STEP=body``);
- ``native``: the whole step, layers, output layer and draw, in one C call, and a stream's
  steps looped in C up to each window slide (the default);
- ``int8``: ``native`` with int8 layer matrices (``FRACTAL_FLOOD_CPU_WEIGHTS=int8``: the
  default; the others read float32 weights; ``scripts/weight_formats.py`` compares formats);
- ``int8-step``: ``int8`` with one C call a step, the loop in Python
  (``FRACTAL_FLOOD_CPU_STEP=step``: the default before the loop moved into C).

``--runtimes`` picks some of them (default the first four); each is compared with the first
named and ``native`` also with ``body``.

Workloads, fp32 on the CPU with the bench's sampling (temperature 0.8, seed 0): the model's
end-to-end generate of ``--roots`` roots (flood K=1), its AR peer writing ``--peer-tokens``
chunks, and the engine's slot cache stepping ``--rows`` requests ``--steps`` times.

Usage: PYTHONPATH=src python scripts/cpu_step_cost.py [--model DIR] [--rounds 7] [--threads 1]
       [--runtimes blas,rowwise,body,native]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from fractal_flood.device import describe
from fractal_flood.manager import cpu_step
from fractal_flood.manager.slots import SlotManager
from fractal_flood.sampling.tokens import SamplingConfig

from contestants import generator, load, peer, quartiles  # noqa: E402  (scripts/ is on sys.path)

FP32 = {"FRACTAL_FLOOD_CPU_WEIGHTS": "fp32"}
RUNTIMES = {"blas": {"FRACTAL_FLOOD_ROWWISE": "blas", "FRACTAL_FLOOD_CPU_STEP": "eager", **FP32},
            "rowwise": {"FRACTAL_FLOOD_ROWWISE": "kernel", "FRACTAL_FLOOD_CPU_STEP": "eager", **FP32},
            "body": {"FRACTAL_FLOOD_ROWWISE": "kernel", "FRACTAL_FLOOD_CPU_STEP": "body", **FP32},
            "native": {"FRACTAL_FLOOD_ROWWISE": "kernel", "FRACTAL_FLOOD_CPU_STEP": "native", **FP32},
            "int8": {"FRACTAL_FLOOD_ROWWISE": "kernel", "FRACTAL_FLOOD_CPU_STEP": "native",
                     "FRACTAL_FLOOD_CPU_WEIGHTS": "int8"},
            "int8-step": {"FRACTAL_FLOOD_ROWWISE": "kernel", "FRACTAL_FLOOD_CPU_STEP": "step",
                          "FRACTAL_FLOOD_CPU_WEIGHTS": "int8"}}
DEFAULT_RUNTIMES = ("blas", "rowwise", "body", "native")


def slots(m, rows: int, steps: int, sampling: SamplingConfig):
    def run():
        s = SlotManager(m.manager, rows, "cpu")
        for i in range(rows):
            s.add(i, [1 + i], sampling, seed=i)
        s.generate(steps)
        return rows * steps, None, None
    return run


def use(runtime: str) -> None:
    os.environ.update(RUNTIMES[runtime])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: the shipped model)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--roots", type=int, default=900)
    ap.add_argument("--peer-tokens", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--runtimes", default=",".join(DEFAULT_RUNTIMES),
                    help="comma-separated, from: " + ", ".join(RUNTIMES))
    args = ap.parse_args()
    names = [n for n in args.runtimes.split(",") if n]
    if not names or any(n not in RUNTIMES for n in names) or len(set(names)) != len(names):
        ap.error(f"--runtimes: distinct names from {', '.join(RUNTIMES)}")
    torch.set_num_threads(args.threads)
    if cpu_step.library() is None:
        raise SystemExit("error: no C compiler built the CPU kernels; nothing to compare")
    sampling = SamplingConfig(temperature=0.8)
    m = load(args.model)
    workloads = {}
    for runtime in names:  # each runtime's contestants, built and warmed under its switches
        use(runtime)
        workloads[("e2e", runtime)] = generator(m, args.roots, sampling)
        if m.peer is not None:
            workloads[("peer", runtime)] = peer(m, args.peer_tokens, sampling)
        run = workloads[("slots", runtime)] = slots(m, args.rows, args.steps, sampling)
        run()
    print(f"CPU decode runtimes, tokens/s, on {describe(torch.device('cpu'))}, float32, {args.threads} "
          f"torch thread(s), torch {torch.__version__}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    speeds: dict = {key: [] for key in workloads}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        line = []
        for work in dict.fromkeys(w for w, _ in workloads):
            got = {}
            for runtime in order:
                use(runtime)  # the slot cache is built inside the run
                t0 = time.perf_counter()
                tokens, _, _ = workloads[(work, runtime)]()
                got[runtime] = tokens / (time.perf_counter() - t0)
                speeds[(work, runtime)].append(got[runtime])
            line.append(f"{work} " + " / ".join(f"{got[n]:,.0f}" for n in names))
        print(f"round {r + 1:2d} ({' '.join(names)}): " + "; ".join(line))
    for work in dict.fromkeys(w for w, _ in workloads):
        med = {n: statistics.median(speeds[(work, n)]) for n in names}
        print(f"{work}: median tokens/s " + ", ".join(f"{n} {med[n]:,.0f}" for n in names))
        pairs = [(n, names[0]) for n in names[1:]]
        if "native" in names and "body" in names and names[0] != "body":
            pairs.append(("native", "body"))
        for n, base in pairs:
            ratios = [a / b for a, b in zip(speeds[(work, n)], speeds[(work, base)])]
            print(f"  {n} / {base}: {quartiles(ratios)}")


if __name__ == "__main__":
    main()
