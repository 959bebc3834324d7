"""Peak memory of ``fractal-flood train`` against corpus size.

Builds synthetic corpora in a temporary directory from the shipped TinyShakespeare: N copies
in one file, copy 0 the text itself and copy k its lines in an order shuffled with seed k
(so the copies are different text over the same alphabet). Trains the tiny preset (all
three parts) on each in a fresh process and prints that process's peak resident set size
(``getrusage``'s ru_maxrss), tokenizer training and tokenization included.

    PYTHONPATH=src python scripts/peak_memory.py --copies 1 20
    PYTHONPATH=src python scripts/peak_memory.py --phases --copies 1 20 40   # where it grows
    PYTHONPATH=/path/to/other/checkout/src python scripts/peak_memory.py ...   # compare code

Nothing is written outside the temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from fractal_flood.cli.main import main
t0 = time.perf_counter()
rc = main(sys.argv[1:])
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print("PEAK " + json.dumps({"rc": rc, "peak_mib": peak_kib / 1024, "seconds": time.perf_counter() - t0}))
"""


PHASES = r"""
import json, resource, sys
from pathlib import Path
from fractal_flood.corpus.reader import open_corpus
from fractal_flood.corpus.shards import build
from fractal_flood.hierarchy.tokenizer import HierarchicalTokenizer
from fractal_flood.train.run import TOKENIZER_SAMPLE_CHARS
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
corpus, out = open_corpus(sys.argv[1]), Path(sys.argv[2])
row = {"imports": peak()}
tok = HierarchicalTokenizer.train(corpus.lines(TOKENIZER_SAMPLE_CHARS), 128, 192, alphabet=corpus.alphabet())
row["tokenizer"] = peak()
build(corpus, tok, {}, out, progress=False)
row["shards"] = peak()
print("PEAK " + json.dumps(row))
"""


def build_corpus(path: Path, copies: int) -> int:
    from fractal_flood.corpus.reader import load_corpus
    lines = load_corpus().splitlines(keepends=True)
    chars = 0
    with open(path, "w", encoding="utf-8") as f:
        for k in range(copies):
            order = list(lines)
            if k:
                random.Random(k).shuffle(order)
            for line in order:
                f.write(line)
                chars += len(line)
    return chars


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 20])
    ap.add_argument("--steps", type=int, default=20, help="steps per part")
    ap.add_argument("--phases", action="store_true",
                    help="instead of training, the peak after each step that reads the corpus: "
                         "tokenizer training (tiny sizes), then tokenizing into shards")
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.copies:
            corpus = Path(tmp) / f"corpus-{n}x.txt"
            chars = build_corpus(corpus, n)
            out = Path(tmp) / f"model-{n}x"
            if args.phases:
                cmd = [sys.executable, "-c", PHASES, str(corpus), str(out)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                peak = [json.loads(line[5:]) for line in proc.stdout.splitlines() if line.startswith("PEAK ")]
                if proc.returncode or not peak:
                    print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
                    return 1
                print(f"{n:>3}x corpus: {chars:>11,} chars, peak RSS after imports {peak[0]['imports']:6.1f} MiB, "
                      f"after the tokenizer {peak[0]['tokenizer']:6.1f} MiB, after the shards "
                      f"{peak[0]['shards']:6.1f} MiB", flush=True)
                continue
            cmd = [sys.executable, "-c", CHILD, "train", "--preset", "tiny", "--corpus", str(corpus),
                   "--out", str(out), "--parts", "renderer,manager,peer", "--steps", str(args.steps),
                   "--lm-steps", str(args.steps), "--device", "cpu", "--no-progress",
                   "--keep-below-bar"]  # a memory probe: its few steps are far below the bars
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            peak = [json.loads(line[5:]) for line in proc.stdout.splitlines() if line.startswith("PEAK ")]
            if proc.returncode or not peak:
                print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
                return 1
            print(f"{n:>3}x corpus: {chars:>11,} chars, peak RSS {peak[0]['peak_mib']:7.1f} MiB, "
                  f"{peak[0]['seconds']:6.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
