"""Reduced-precision weights for the compiled CPU step: held-out bits per character beside
tokens/s, per weight format (``models/weight_formats.py``: fp32, bf16, int8).

Quality: the manager's and the AR peer's held-out bits per character (``fractal-flood
eval``'s figures, ``evaluate.language_model_quality``) of a copy of each model whose layer
matrices are the format's dequantised weights, the very numbers the compiled step
multiplies by (bit for bit, tested).

Speed: the shipped model's end-to-end generate of ``--roots`` roots, its manager alone
writing ``--roots`` roots (a batch-1 stream, no flood: the step itself), and its AR peer
writing ``--peer-tokens`` chunks (the bench's sampling: temperature 0.8, seed 0; flood K=1), on the
compiled step (``FRACTAL_FLOOD_CPU_STEP=native``) with each format
(``FRACTAL_FLOOD_CPU_WEIGHTS``), taking turns round after round; medians, and the median of
the per-round ratios to fp32.

Usage: PYTHONPATH=src python scripts/weight_formats.py [--model DIR] [--rounds 5] [--threads 1]
       [--formats fp32,bf16,int8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from fractal_flood.corpus.reader import load_corpus
from fractal_flood.corpus.streams import TokenStream
from fractal_flood.device import describe
from fractal_flood.manager import cpu_step
from fractal_flood.measure.evaluate import language_model_quality
from fractal_flood.models import weight_formats
from fractal_flood.sampling.tokens import SamplingConfig

from contestants import generator, load, peer, quartiles, stream  # noqa: E402  (scripts/ is on sys.path)


def manager_stream(m, n: int, sampling: SamplingConfig):
    """-> run() returning (roots, None, None) of the manager alone writing n roots."""
    return stream(m.manager, m.tokenizer.encode("\n"), n, sampling)


def use(fmt: str) -> None:
    os.environ.update({"FRACTAL_FLOOD_CPU_STEP": "native", "FRACTAL_FLOOD_ROWWISE": "kernel",
                       "FRACTAL_FLOOD_CPU_WEIGHTS": fmt})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: the shipped model)")
    ap.add_argument("--corpus", help="the corpus the model was trained on (default: the shipped one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--roots", type=int, default=600)
    ap.add_argument("--peer-tokens", type=int, default=600)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--formats", default=",".join(weight_formats.FORMATS),
                    help="comma-separated, from: " + ", ".join(weight_formats.FORMATS))
    args = ap.parse_args()
    names = [n for n in args.formats.split(",") if n]
    if not names or any(n not in weight_formats.FORMATS for n in names) or len(set(names)) != len(names):
        ap.error(f"--formats: distinct names from {', '.join(weight_formats.FORMATS)}")
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    torch.set_num_threads(args.threads)
    if cpu_step.library() is None:
        raise SystemExit("error: no C compiler built the CPU kernels; nothing to compare")
    m = load(args.model)
    print(f"weight formats of the compiled CPU step on {describe(torch.device('cpu'))}, float32 sums, "
          f"{args.threads} torch thread(s), torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")

    text = load_corpus(args.corpus)
    roots = TokenStream.split(m.tokenizer.encode(text)).val
    for fmt in names:
        manager = weight_formats.dequantized_model(m.manager, fmt)
        peer_model = weight_formats.dequantized_model(m.peer, fmt) if m.peer is not None else None
        q = language_model_quality(m.tokenizer, manager, peer_model, roots, torch.device("cpu"))
        line = f"{fmt}: held-out bits/char manager {q['manager']['bpc']:.4f}"
        if "peer" in q:
            line += f", AR peer {q['peer']['bpc']:.4f}"
        print(line, flush=True)

    sampling = SamplingConfig(temperature=0.8)
    runs = {}
    for fmt in names:
        use(fmt)
        runs[("e2e", fmt)] = generator(m, args.roots, sampling)
        runs[("manager", fmt)] = manager_stream(m, args.roots, sampling)
        if m.peer is not None:
            runs[("peer", fmt)] = peer(m, args.peer_tokens, sampling)
    works = list(dict.fromkeys(w for w, _ in runs))
    speeds: dict = {key: [] for key in runs}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        line = []
        for work in works:
            got = {}
            for fmt in order:
                use(fmt)
                t0 = time.perf_counter()
                tokens, _, _ = runs[(work, fmt)]()
                got[fmt] = tokens / (time.perf_counter() - t0)
                speeds[(work, fmt)].append(got[fmt])
            line.append(f"{work} " + " / ".join(f"{got[n]:,.0f}" for n in names))
        print(f"round {r + 1:2d} ({' '.join(names)}): " + "; ".join(line), flush=True)
    for work in works:
        med = {n: statistics.median(speeds[(work, n)]) for n in names}
        print(f"{work}: median tokens/s " + ", ".join(f"{n} {med[n]:,.0f}" for n in names))
        for n in names[1:]:
            ratios = [a / b for a, b in zip(speeds[(work, n)], speeds[(work, names[0])])]
            print(f"  {n} / {names[0]}: {quartiles(ratios)}")


if __name__ == "__main__":
    main()
