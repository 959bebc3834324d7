"""Where one single-stream ``generate`` spends its time, phase by phase.

Wall-clock timers are put around the functions one generate goes through (each timer costs
~1 us, counted in the phase it wraps), the generate runs ``--repeats`` times after one
warm-up, and the split is printed as seconds, share and microseconds per root:

- start-up: importing torch and the package, loading the model (measured once, first);
- manager, compiled: the C loop of steps up to a window slide (``decode_draw_steps``, the
  default), or one C call a step (``decode_and_draw``; ``decode_step`` where the draw is
  Python's);
- manager, Python: ``ARStream.generate`` minus the C calls and window slides (argument
  conversion, the buffers' updates, the loop);
- manager, window slides and the prompt's prefill (``CpuStep.prefill``: the compiled step's
  operations over the positions in one C call; the eager batched forward with the eager step);
- render: ``decoder.render`` (the flood over each block's roots, its text);
- text limit: stop strings and ``max_chars`` over each block's text;
- the rest: ``TextPipeline.run`` minus all of the above (per-block Python, the generator).

    PYTHONPATH=src python scripts/profile_generate.py --roots 900 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections import defaultdict

T_START = time.perf_counter()
import torch  # noqa: E402

T_TORCH = time.perf_counter()
from fractal_flood.generation import pipeline as pipeline_mod  # noqa: E402
from fractal_flood.generation.text_limit import TextLimit  # noqa: E402
from fractal_flood.manager import cpu_step  # noqa: E402
from fractal_flood.manager.stream import ARStream  # noqa: E402
from fractal_flood.sampling.tokens import SamplingConfig  # noqa: E402

T_IMPORTS = time.perf_counter()

TOTALS: dict = defaultdict(float)
CALLS: dict = defaultdict(int)


def timed(name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TOTALS[name] += time.perf_counter() - t0
            CALLS[name] += 1
    return wrapper


def instrument(pipe) -> None:
    """Timers around the phases (class attributes, so every stream and decoder gets them)."""
    ARStream.generate = timed("stream.generate", ARStream.generate)
    ARStream._slide = timed("stream.slide", ARStream._slide)
    ARStream.start = timed("stream.start", ARStream.start)
    TextLimit.feed = timed("text_limit", TextLimit.feed)
    pipeline_mod.TextPipeline.run = timed("pipeline.run", pipeline_mod.TextPipeline.run)
    lib = cpu_step.library()
    if lib is not None:
        lib.decode_and_draw = timed("c.decode_and_draw", lib.decode_and_draw)
        lib.decode_step = timed("c.decode_step", lib.decode_step)
        lib.decode_draw_steps = timed("c.decode_draw_steps", lib.decode_draw_steps)
    original = pipe.decoder_for

    def decoder_for(*args, **kwargs):
        decoder = original(*args, **kwargs)
        decoder.render = timed("render", decoder.render)
        return decoder
    pipe.decoder_for = decoder_for


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model directory (default: the shipped one)")
    ap.add_argument("--roots", type=int, default=900)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt", default="ROMEO:")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = ap.parse_args(argv)
    if args.roots < 1 or args.repeats < 1:
        print("profile_generate: error: --roots and --repeats must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))

    t0 = time.perf_counter()
    pipe = pipeline_mod.load_pipeline(args.model, device="cpu")
    t_load = time.perf_counter() - t0
    sampling = SamplingConfig(temperature=0.8)
    pipe.generate(args.prompt, args.roots, sampling, seed=1)  # warm-up: the C library, caches
    instrument(pipe)
    chunks = chars = roots = 0
    t0 = time.perf_counter()
    for r in range(args.repeats):
        g = pipe.generate(args.prompt, args.roots, sampling, seed=1 + r)
        chunks, chars, roots = chunks + g.num_chunks, chars + len(g.text), roots + g.manager_steps
    wall = time.perf_counter() - t0

    c_calls = TOTALS["c.decode_draw_steps"] + TOTALS["c.decode_and_draw"] + TOTALS["c.decode_step"]
    rows = [
        ("manager, compiled loop of steps", TOTALS["c.decode_draw_steps"]),
        ("manager, compiled call (body + draw)", TOTALS["c.decode_and_draw"]),
        ("manager, compiled call (body only)", TOTALS["c.decode_step"]),
        ("manager, Python around the C calls", TOTALS["stream.generate"] - c_calls - TOTALS["stream.slide"]),
        ("manager, window slides", TOTALS["stream.slide"]),
        ("manager, prompt prefill and reset", TOTALS["stream.start"]),
        ("render (flood, text)", TOTALS["render"]),
        ("text limit", TOTALS["text_limit"]),
    ]
    accounted = sum(s for _, s in rows)
    rows.append(("the rest (per-block Python, generator)", TOTALS["pipeline.run"] - accounted))
    rows.append(("outside run (request, generate())", wall - TOTALS["pipeline.run"]))

    print(f"{args.repeats} x generate({args.prompt!r}, {args.roots} roots, T=0.8) on the CPU "
          f"({torch.get_num_threads()} thread(s), weights {cpu_step.weights_format()}, step {cpu_step.mode()}): "
          f"{roots} manager steps, {chunks} chunks, {chars} characters in {wall:.3f} s "
          f"= {chunks / wall:,.0f} chunks/s, {1e6 * wall / roots:.0f} us per root")
    print(f"start-up, once: import torch {T_TORCH - T_START:.3f} s, the package {T_IMPORTS - T_TORCH:.3f} s, "
          f"load the model {t_load:.3f} s")
    print(f"{'phase':42} {'seconds':>8} {'share':>7} {'us/root':>8}")
    for name, s in rows:
        print(f"{name:42} {s:8.3f} {100 * s / wall:6.1f}% {1e6 * s / roots:8.1f}")
    print(f"{'total':42} {wall:8.3f} {100.0:6.1f}% {1e6 * wall / roots:8.1f}")
    print(f"calls: {dict(CALLS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
