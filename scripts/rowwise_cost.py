"""What the row-invariant linear layers cost: the same runs with each row computed alone
(``FRACTAL_FLOOD_ROWWISE=kernel``, the CPU default) and with one library call per batch
(``blas``, not batch-invariant), taking turns round after round; the median ratio over
rounds is the estimate (a shared CPU moves single runs by 10% and more).

Runs, fp32 on the CPU with the bench's sampling (temperature 0.8, seed 0): the model's
end-to-end generate of ``--roots`` roots (flood K=1), its AR peer writing ``--peer-tokens``
chunks, and the engine's slot cache stepping ``--rows`` requests ``--steps`` times.

Usage: PYTHONPATH=src python scripts/rowwise_cost.py [--model DIR] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from fractal_flood.device import describe
from fractal_flood.manager.slots import SlotManager
from fractal_flood.models import rowwise_linear
from fractal_flood.sampling.tokens import SamplingConfig

from paired_ratio import generator, load, peer, quartiles  # noqa: E402  (scripts/ is on sys.path)


def slots(m, rows: int, steps: int, sampling: SamplingConfig):
    def run():
        s = SlotManager(m.manager, rows, "cpu")
        for i in range(rows):
            s.add(i, [1 + i], sampling, seed=i)
        s.generate(steps)
        return rows * steps, None, None
    run()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: the shipped model)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--roots", type=int, default=900)
    ap.add_argument("--peer-tokens", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args()
    sampling = SamplingConfig(temperature=0.8)
    m = load(args.model)
    os.environ["FRACTAL_FLOOD_ROWWISE"] = "kernel"
    if rowwise_linear.mode() != "kernel":
        raise SystemExit("error: no C compiler built the row-invariant kernel; nothing to compare")
    runs = {"e2e": generator(m, args.roots, sampling), "slots": slots(m, args.rows, args.steps, sampling)}
    if m.peer is not None:
        runs["peer"] = peer(m, args.peer_tokens, sampling)
    print(f"kernel / blas tokens/s on {describe(torch.device('cpu'))}, float32, {torch.get_num_threads()} "
          f"thread(s), torch {torch.__version__}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    ratios = {name: [] for name in runs}
    for r in range(args.rounds):
        line = []
        for name, run in runs.items():
            speed = {}
            for how in (("kernel", "blas") if r % 2 == 0 else ("blas", "kernel")):
                os.environ["FRACTAL_FLOOD_ROWWISE"] = how
                t0 = time.perf_counter()
                tokens, _, _ = run()
                speed[how] = tokens / (time.perf_counter() - t0)
            ratios[name].append(speed["kernel"] / speed["blas"])
            line.append(f"{name} {speed['kernel']:,.0f} vs {speed['blas']:,.0f} ({ratios[name][-1]:.3f}x)")
        print(f"round {r + 1:2d}: " + ", ".join(line))
    for name, xs in ratios.items():
        print(f"{name} kernel / blas: {quartiles(xs)}")


if __name__ == "__main__":
    main()
