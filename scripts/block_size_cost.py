"""A request alone, end to end, at several block sizes taking turns round after round:
chunks per second (median over rounds) and each size's median ratio to the first. The text
never depends on the block (checked here on every round); the flood's fixed cost a pass
does, which larger blocks spread over more roots.

    PYTHONPATH=src python scripts/block_size_cost.py --blocks 64,128,256,512 --rounds 7 --roots 900
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model directory (default: the shipped one)")
    ap.add_argument("--blocks", default="64,128,256,512", help="comma list of block sizes (roots)")
    ap.add_argument("--roots", type=int, default=900)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        blocks = [int(b) for b in args.blocks.split(",") if b]
    except ValueError:
        blocks = []
    if not blocks or min(blocks) < 1 or args.roots < 1 or args.rounds < 1:
        print("block_size_cost: error: --blocks takes positive integers; --roots and --rounds must be >= 1",
              file=sys.stderr)
        return 2
    import torch  # after the arguments: bad input is refused at once

    from fractal_flood.device import describe
    from fractal_flood.generation.pipeline import load_pipeline
    from fractal_flood.manager import cpu_step
    from fractal_flood.sampling.tokens import SamplingConfig

    torch.set_num_threads(max(1, args.threads))
    pipe = load_pipeline(args.model, device="cpu")
    sampling = SamplingConfig(temperature=0.8)
    pipe.generate("", args.roots, sampling, seed=0, block_roots=blocks[0])  # warm-up
    speeds: dict = {b: [] for b in blocks}
    for r in range(args.rounds):
        texts = set()
        for b in blocks[r % len(blocks):] + blocks[:r % len(blocks)]:  # rotate who goes first
            t0 = time.perf_counter()
            g = pipe.generate("", args.roots, sampling, seed=r, block_roots=b)
            speeds[b].append(g.num_chunks / (time.perf_counter() - t0))
            texts.add(g.text)
        if len(texts) != 1:
            print(f"block_size_cost: error: round {r}: the text depends on the block", file=sys.stderr)
            return 1
    print(f"a request alone, {args.roots} roots, T=0.8, on {describe(torch.device('cpu'))}, "
          f"{torch.get_num_threads()} thread(s), weights {cpu_step.weights_format()}, {args.rounds} rounds "
          f"(the same text at every block size, every round)")
    first = speeds[blocks[0]]
    for b in blocks:
        ratio = statistics.median(s / f for s, f in zip(speeds[b], first))
        print(f"block {b:5d}: {statistics.median(speeds[b]):8,.0f} chunks/s   x{ratio:.3f} of block {blocks[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
