"""What one manager decode step costs, per model directory, and where a batched engine round goes.

For each model directory: the time of one ``ARStream`` step at batch 1 (temperature 0.8)
(and through ``nn.Module`` calls, the path ``Block.decode`` replaced) and of its draw alone
(the output layer and sampling, from a fixed hidden state), with the host inversion of a
1-row CPU draw and with the tensor ops only; medians of alternated rounds.
With ``--engine B``: one engine round of B requests (``--roots`` each) on the first
directory, profiled (cProfile), split into the manager's steps (the slot step's layers and
its draw) and the pooled flood. CPU timings: compare rows of one run only.

Usage: PYTHONPATH=src python scripts/manager_step_cost.py [DIR ...] [--engine 16]
(no DIR: the shipped model).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

from fractal_flood.device import describe
from fractal_flood.generation.engine import Engine, Request
from fractal_flood.generation.pipeline import TextPipeline
from fractal_flood.manager.stream import ARStream
from fractal_flood.models import checkpoint as ckpt
from fractal_flood.models.layers import Block
from fractal_flood.render.base import DecodeOptions
from fractal_flood.sampling import tokens as sampling
from fractal_flood.sampling.tokens import RowSampling, SamplingConfig


def us_per_call(fn, n: int) -> float:
    for _ in range(20):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def step_cost(model_dirs, n: int, rounds: int) -> None:
    """Median over ``rounds`` alternated rounds (each model in turn, so a host's drift hits
    all alike) of a batch-1 step, its draw, and the draw by the tensor ops alone (a 1-row CPU
    draw otherwise inverts on the host, ``host_inversion``: the same ids, fewer calls)."""
    cases = []
    for model_dir in model_dirs:
        m = ckpt.load_model_dir(model_dir, torch.device("cpu"), torch.float32).manager
        stream = ARStream(m, 1, SamplingConfig(temperature=0.8), "cpu", seed=1)
        prompt = torch.tensor([1, 2, 3])
        stream.start(prompt)

        def step(stream=stream, m=m, prompt=prompt):
            if stream.pos >= m.config.context - 1:
                stream.start(prompt)
            stream.generate(1)

        h = torch.randn(1, m.config.d_model)
        def draw(m=m, s=stream, h=h):
            return m.draw(h, s._rows, s._seeds, s._steps)

        cases.append((model_dir, m, step, draw))
    times = {d: {"step": [], "modules": [], "tensor_step": [], "draw": [], "tensor": []} for d, *_ in cases}
    direct = Block.decode
    with torch.no_grad():
        for _ in range(rounds):
            for d, m, step, draw in cases:
                times[d]["step"].append(us_per_call(step, n))
                Block.decode = _module_decode
                try:
                    times[d]["modules"].append(us_per_call(step, n))
                finally:
                    Block.decode = direct
                times[d]["draw"].append(us_per_call(draw, n))
                host_rows, sampling.HOST_DRAW_ROWS = sampling.HOST_DRAW_ROWS, 0
                try:
                    times[d]["tensor_step"].append(us_per_call(step, n))
                    times[d]["tensor"].append(us_per_call(draw, n))
                finally:
                    sampling.HOST_DRAW_ROWS = host_rows
    for d, m, _, _ in cases:
        K = m.config.head_classes
        head = f"{K} classes x {m.config.vocab_size // K}" if K else f"one softmax over {m.config.vocab_size}"
        c = m.config
        med = {k: statistics.median(v) for k, v in times[d].items()}
        print(f"{str(d or 'shipped'):<40} {c.n_layers}x{c.d_model} {head:<28} step {med['step']:6.0f} us "
              f"(through the modules: {med['modules']:4.0f} us, with tensor-op draws: {med['tensor_step']:4.0f} us)   "
              f"draw {med['draw']:5.0f} us (tensor ops only: {med['tensor']:5.0f} us)")


def _module_decode(block, x, mask, cache, pos):
    """``Block.decode`` by ``nn.Module.__call__`` (the path it replaced, bitwise the same)."""
    return block(x, attn_mask=mask, cache=cache, input_pos=pos)


def engine_split(model_dir, B: int, roots: int) -> None:
    md = ckpt.load_model_dir(model_dir, torch.device("cpu"), torch.float32)
    pipe = TextPipeline(md.tokenizer, md.manager, md.renderer, torch.device("cpu"), torch.float32,
                        "flood", DecodeOptions())
    engine = Engine(pipe, max_batch=B, block_roots=roots, pooled_render=True)
    config = SamplingConfig(temperature=0.8)

    def run():
        return engine.run([Request("", roots=roots, sampling=config, seed=i) for i in range(B)],
                          lambda job, block: None)

    run()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(run)
    wall = time.perf_counter() - t0
    cum = {}
    for (file, _, name), (_, _, _, ct, _) in pstats.Stats(prof).stats.items():
        cum[(file.rsplit("/", 1)[-1], name)] = ct
    n = max(1, roots)  # decode steps in the round: one per root
    print(f"engine round, B={B} x {roots} roots (profiled, wall {wall * 1e3:.0f} ms): "
          f"manager steps {cum.get(('slots.py', 'generate'), 0) * 1e3:.0f} ms "
          f"(per step: layers {cum.get(('slots.py', '_forward'), 0) / n * 1e3:.2f} ms, "
          f"attention {cum.get(('slots.py', 'batch_invariant_attention'), 0) / n * 1e3:.2f} ms, "
          f"draw {cum.get(('causal_lm.py', 'draw'), 0) / n * 1e3:.2f} ms), "
          f"pooled flood {cum.get(('flood.py', 'render_pooled'), 0) * 1e3:.0f} ms")


def draw_batches(model_dir, sizes, n: int, rounds: int) -> None:
    """The first directory's manager's draw alone at several batch sizes, with the host
    inversion and by the tensor ops only (alternated rounds, medians): where
    ``tokens.HOST_DRAW_ROWS`` comes from."""
    m = ckpt.load_model_dir(model_dir, torch.device("cpu"), torch.float32).manager
    times = {}
    with torch.no_grad():
        for _ in range(rounds):
            for B in sizes:
                rows = RowSampling.of([SamplingConfig(temperature=0.8)] * B)
                seeds, steps = torch.arange(B) + 1, torch.arange(B) + 3
                h = torch.randn(B, m.config.d_model, generator=torch.Generator().manual_seed(B))
                for host in (True, False):
                    limit, sampling.HOST_DRAW_ROWS = sampling.HOST_DRAW_ROWS, (1 << 30) if host else 0
                    try:
                        t = us_per_call(lambda: m.draw(h, rows, seeds, steps), n)
                    finally:
                        sampling.HOST_DRAW_ROWS = limit
                    times.setdefault((B, host), []).append(t)
    for B in sizes:
        host, tensor = statistics.median(times[B, True]), statistics.median(times[B, False])
        print(f"draw of {B:3d} rows: host inversion {host:6.0f} us, tensor ops only {tensor:6.0f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="*", help="model directories (default: the shipped model)")
    ap.add_argument("--n", type=int, default=300, help="timed calls per figure")
    ap.add_argument("--rounds", type=int, default=7, help="alternated rounds (the medians are printed)")
    ap.add_argument("--engine", type=int, default=0, metavar="B", help="also split one engine round of B requests")
    ap.add_argument("--roots", type=int, default=32, help="roots per request in the engine round")
    ap.add_argument("--draw-batches", default="", metavar="B,B,...",
                    help="also time the first directory's draw alone at these batch sizes")
    args = ap.parse_args()
    print(f"manager step cost on {describe(torch.device('cpu'))}, float32, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    dirs = args.dirs or [None]
    print(f"medians of {args.rounds} alternated rounds of {args.n} calls each")
    step_cost(dirs, args.n, args.rounds)
    if args.draw_batches:
        draw_batches(dirs[0], [int(b) for b in args.draw_batches.split(",")], args.n, args.rounds)
    if args.engine:
        engine_split(dirs[0], args.engine, args.roots)


if __name__ == "__main__":
    main()
