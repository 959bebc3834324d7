"""The flood's CPU time a root by block size, with the renderer's C kernels (the default:
``renderer_kernels.draw``, a whole level in one call) and without (``FRACTAL_FLOOD_RENDER_KERNELS=0``:
the module path, one PyTorch pass a canvas length), taking turns round after round: medians
and their ratio. The roots are the shipped manager's own (one generate); the text of every
render is checked to be the same both ways.

    PYTHONPATH=src python scripts/render_cost.py --blocks 8,32,128,256,1024 --rounds 9
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model directory (default: the shipped one)")
    ap.add_argument("--blocks", default="8,32,128,256,1024", help="comma list of block sizes (roots)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        blocks = [int(b) for b in args.blocks.split(",") if b]
    except ValueError:
        blocks = []
    if not blocks or min(blocks) < 1 or args.rounds < 1 or args.threads < 1:
        print("render_cost: error: --blocks takes positive integers; --rounds and --threads must be >= 1",
              file=sys.stderr)
        return 2
    import torch

    from fractal_flood.generation.pipeline import load_pipeline
    from fractal_flood.models import renderer_kernels
    from fractal_flood.sampling.config import SamplingConfig

    torch.set_num_threads(args.threads)
    if renderer_kernels.library() is None:
        print("render_cost: error: no C compiler built the renderer's kernels", file=sys.stderr)
        return 1
    pipe = load_pipeline(args.model, "cpu")
    roots = pipe.generate("ROMEO:", roots=max(blocks), sampling=SamplingConfig(temperature=0.8), seed=1,
                          block_roots=max(blocks)).root_ids
    decoder = pipe.decoder_for(1)
    times = {(b, k): [] for b in blocks for k in ("1", "0")}
    texts = {}
    before = os.environ.get("FRACTAL_FLOOD_RENDER_KERNELS")
    try:
        for r in range(args.rounds + 1):  # round 0 warms up, untimed
            for b in blocks:
                for k in (("1", "0") if r % 2 else ("0", "1")):
                    os.environ["FRACTAL_FLOOD_RENDER_KERNELS"] = k
                    t0 = time.perf_counter()
                    text = decoder.render(roots[:b]).text
                    if r:
                        times[(b, k)].append(time.perf_counter() - t0)
                    if texts.setdefault(b, text) != text:
                        print(f"render_cost: error: {b} roots render other text with FRACTAL_FLOOD_RENDER_KERNELS={k}",
                              file=sys.stderr)
                        return 1
    finally:
        if before is None:
            os.environ.pop("FRACTAL_FLOOD_RENDER_KERNELS", None)
        else:
            os.environ["FRACTAL_FLOOD_RENDER_KERNELS"] = before
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"flood of the shipped manager's roots, K = 1, temperature 0, CPU {platform.machine()}, "
          f"{args.threads} thread(s), {args.rounds} alternated rounds, {date}; every render's text the same both ways")
    print("| roots | C kernels: ms (us a root) | module path: ms (us a root) | module / C |")
    print("|---:|---:|---:|---:|")
    for b in blocks:
        on, off = statistics.median(times[(b, "1")]), statistics.median(times[(b, "0")])
        print(f"| {b} | {on * 1e3:.2f} ({on / b * 1e6:.1f}) | {off * 1e3:.2f} ({off / b * 1e6:.1f}) "
              f"| {off / on:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
