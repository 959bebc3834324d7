"""Single-stream speed ratios measured in alternation, for a CPU shared with other jobs.

The bench times each row's repeats back to back, so on a shared host a row measured
during a busy minute loses against one measured in a quiet one; its ratios move by 10%
from run to run. Here the contestants take turns, round after round (the order rotates),
and each round gives one ratio per pair from runs seconds apart; the median over rounds is
the estimate, with the quartiles beside it.

Contestants, all single-stream with the bench's settings (temperature 0.8, seed 0, flood
K=1): the model's end-to-end generate of ``--roots`` roots (tokens = chunks), its AR peer
writing ``--peer-tokens`` chunks (when the directory has one), and with ``--baseline-model`` that model's end-to-end
generate (issue 9: tokens/s against the previous default, divided by the ratio of
characters per manager step).

Usage: PYTHONPATH=src python scripts/paired_ratio.py [--model DIR] [--baseline-model DIR] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fractal_flood.device import describe
from fractal_flood.generation.pipeline import TextPipeline
from fractal_flood.manager.stream import ARStream
from fractal_flood.measure.bench import TEMPERATURE
from fractal_flood.models import checkpoint as ckpt
from fractal_flood.render.base import DecodeOptions
from fractal_flood.sampling.tokens import SamplingConfig


def load(model_dir):
    """A model directory on the CPU in fp32, with its AR peer when it has one."""
    return ckpt.load_model_dir(model_dir, torch.device("cpu"), torch.float32, optional=("peer",))


def generator(m, roots: int, sampling: SamplingConfig):
    """-> run() returning (tokens, characters, manager steps) of one end-to-end generate."""
    pipe = TextPipeline(m.tokenizer, m.manager, m.renderer, torch.device("cpu"), torch.float32, "flood",
                        DecodeOptions(k=1))

    def run():
        g = pipe.generate("", roots, sampling, seed=0)
        return g.num_chunks, len(g.text), g.manager_steps
    run()  # warm-up
    return run


def peer(m, n: int, sampling: SamplingConfig):
    stream = ARStream(m.peer, 1, sampling, "cpu", seed=0)
    prompt = torch.tensor(m.tokenizer.encode_chunks("\n"))

    def run():
        stream.start(prompt)
        stream.generate(n)
        return n, None, None
    run()
    return run


def quartiles(xs: list) -> str:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"median {q[1]:.3f} (quartiles {q[0]:.3f} - {q[2]:.3f}, {len(xs)} rounds)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: the shipped model)")
    ap.add_argument("--baseline-model", help="the previous default's model directory (issue 9's ratio)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--roots", type=int, default=900, help="roots per end-to-end generate (the bench's)")
    ap.add_argument("--peer-tokens", type=int, default=1024, help="chunks the AR peer writes (the bench's)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    sampling = SamplingConfig(temperature=TEMPERATURE)
    ours = load(args.model)
    runs = {"ours": generator(ours, args.roots, sampling)}
    if ours.peer is not None:
        runs["peer"] = peer(ours, args.peer_tokens, sampling)
    if args.baseline_model:
        runs["baseline"] = generator(load(args.baseline_model), args.roots, sampling)
    print(f"paired single-stream ratios on {describe(torch.device('cpu'))}, float32, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    names = list(runs)
    vs_peer, vs_base = [], []
    chars_ratio = None
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        got = {}
        for name in order:
            t0 = time.perf_counter()
            tokens, chars, steps = runs[name]()
            got[name] = (tokens / (time.perf_counter() - t0), chars, steps)
        line = f"round {r + 1:2d} ({' '.join(order)}): ours {got['ours'][0]:,.0f} tokens/s"
        if "peer" in got:
            vs_peer.append(got["ours"][0] / got["peer"][0])
            line += f", peer {got['peer'][0]:,.0f} ({vs_peer[-1]:.3f}x)"
        if "baseline" in got:
            (_, c1, s1), (_, c0, s0) = got["ours"], got["baseline"]
            chars_ratio = (c1 / s1) / (c0 / s0)
            vs_base.append(got["ours"][0] / got["baseline"][0])
            line += f", baseline {got['baseline'][0]:,.0f} ({vs_base[-1]:.3f}x)"
        print(line)
    if vs_peer:
        print(f"ours / AR peer tokens/s: {quartiles(vs_peer)}")
    if vs_base:
        print(f"ours / baseline tokens/s: {quartiles(vs_base)}; characters per manager step ratio "
              f"{chars_ratio:.3f}; divided: {quartiles([v / chars_ratio for v in vs_base])}")


if __name__ == "__main__":
    main()
