"""Single-stream speed ratios measured in alternation, for a CPU shared with other jobs.

The bench times each row's repeats back to back, so on a shared host a row measured
during a busy minute loses against one measured in a quiet one; its ratios move by 10%
from run to run. Here the contestants take turns, round after round (the order rotates),
and each round gives one ratio per pair from runs seconds apart; the median over rounds is
the estimate, with the quartiles beside it.

Contestants, all single-stream with the bench's settings (temperature 0.8, seed 0, flood
K=1): the model's end-to-end generate of ``--roots`` roots (tokens = chunks), its AR peer
writing ``--peer-tokens`` chunks (when the directory has one), and with ``--baseline-model`` that model's end-to-end
generate (tokens/s against the previous default, divided by the ratio of characters per
manager step). With ``--manager-step``, the manager alone writing ``--roots`` roots in its
stream takes its turns too (its step time with the window slides' re-encoding), and so do
its steps between two slides alone (``contestants.steady_steps``); each is set against
each engine's time a token (which includes its own window re-encoding).
With ``--engines`` (``pip install 'fractal-flood[engines]'``), the same peer
converted to CTranslate2 (``measure/ct2_peer.py``) in float32 and in int8, writing the same
chunks at the same temperature with ``--threads`` intra-op threads, takes its turns too;
with ``--llama-cpp`` (``pip install gguf llama-cpp-python``, built from source, outside CI),
the peer in llama.cpp as GGUF f32 and q8_0 (``llama_cpp_peer.py``) does.

Usage: PYTHONPATH=src python scripts/paired_ratio.py [--model DIR] [--baseline-model DIR] [--rounds 15]
           [--threads 1] [--engines] [--manager-step] [--llama-cpp]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

from fractal_flood.device import describe
from fractal_flood.errors import FractalFloodError
from fractal_flood.manager import cpu_step
from fractal_flood.measure import ct2_peer
from fractal_flood.measure.bench import TEMPERATURE
from fractal_flood.sampling.tokens import SamplingConfig

from contestants import engine, generator, load, peer, quartiles, steady_steps, stream  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: the shipped model)")
    ap.add_argument("--baseline-model", help="the previous default's model directory (tokens/s over it, divided by the characters-per-step ratio)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--roots", type=int, default=900, help="roots per end-to-end generate (the bench's)")
    ap.add_argument("--peer-tokens", type=int, default=1024, help="chunks the AR peer writes (the bench's)")
    ap.add_argument("--threads", type=int, help="torch's threads, and CTranslate2's (default: torch's own)")
    ap.add_argument("--engines", action="store_true",
                    help="also the AR peer in CTranslate2, float32 and int8 (pip install 'fractal-flood[engines]')")
    ap.add_argument("--manager-step", action="store_true",
                    help="also the manager alone writing --roots roots (its step time against each engine's "
                         "time a token)")
    ap.add_argument("--llama-cpp", action="store_true",
                    help="also the AR peer in llama.cpp, GGUF f32 and q8_0 (pip install gguf llama-cpp-python)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    sampling = SamplingConfig(temperature=TEMPERATURE)
    ours = load(args.model)
    runs = {"ours": generator(ours, args.roots, sampling)}
    if ours.peer is not None:
        runs["peer"] = peer(ours, args.peer_tokens, sampling)
    if args.manager_step:
        runs["manager"] = stream(ours.manager, ours.tokenizer.encode("\n"), args.roots, sampling)
        from fractal_flood.corpus.reader import load_corpus
        runs["step"] = steady_steps(ours.manager, ours.tokenizer.encode(load_corpus()[:4000]), sampling)
    if args.baseline_model:
        runs["baseline"] = generator(load(args.baseline_model), args.roots, sampling)
    tmp = tempfile.TemporaryDirectory(prefix="fractal-flood-ct2-")
    if args.engines:
        try:
            ct2_peer.require()
            if ours.peer is None:
                raise FractalFloodError("--engines: the model directory has no AR peer to convert")
            path = ct2_peer.convert(ours.peer, f"{tmp.name}/peer")
        except FractalFloodError as e:
            sys.exit(f"paired_ratio: {e}")
        for ct in ct2_peer.COMPUTE_TYPES:
            runs[f"ct2-{ct}"] = engine(ours, path, ct, torch.get_num_threads(), args.peer_tokens, sampling)
    if args.llama_cpp:
        missing = [m for m in ("gguf", "llama_cpp", "transformers") if importlib.util.find_spec(m) is None]
        if missing or ours.peer is None:
            sys.exit(f"paired_ratio: --llama-cpp needs {', '.join(missing)} (pip install gguf llama-cpp-python "
                     "transformers)" if missing else "paired_ratio: --llama-cpp: the model directory has no AR peer")
        from llama_cpp_peer import GGUF_TYPES, LlamaPeer, write_gguf
        prompt = ours.tokenizer.encode_chunks("\n")
        for kind in GGUF_TYPES:
            p = LlamaPeer(write_gguf(ours.peer, Path(tmp.name) / f"peer-{kind}.gguf", kind), ours.peer.config.context,
                          torch.get_num_threads())
            runs[f"llama-{kind}"] = lambda p=p: (len(p.generate(prompt, args.peer_tokens, TEMPERATURE)), None, None)
            runs[f"llama-{kind}"]()  # warm-up
    weights = cpu_step.weights_format() if cpu_step.wanted() else "float32 (eager step)"
    products = ("int8 activations and int8 (w8a8)" if weights == "w8a8"
                else f"float32 activations, {weights}")
    print(f"paired single-stream ratios on {describe(torch.device('cpu'))}, "
          f"{products} layer weights in ours and our peer's compiled step, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)" + (", the engines at the same threads"
                                                    if args.engines or args.llama_cpp else "")
          + f", {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    names = list(runs)
    engines = [n for n in names if n.startswith(("ct2-", "llama-"))]
    vs_engine = {n: [] for n in engines}
    vs_peer, vs_base = [], []
    step_vs = {n: [] for n in engines}  # the manager's step time / the engine's time a token
    alone_vs = {n: [] for n in engines}  # the same for the step alone, no window slide
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
        for name in engines:
            vs_engine[name].append(got["ours"][0] / got[name][0])
            line += f", {name} {got[name][0]:,.0f} ({vs_engine[name][-1]:.3f}x)"
        if "manager" in got:
            line += (f", manager {1e6 / got['manager'][0]:.1f} us/step with its window slides, "
                     f"{1e6 / got['step'][0]:.1f} alone")
            for name in engines:
                step_vs[name].append(got[name][0] / got["manager"][0])
                alone_vs[name].append(got[name][0] / got["step"][0])
        print(line)
    if vs_peer:
        print(f"ours / AR peer tokens/s: {quartiles(vs_peer)}")
    label = lambda n: (f"CTranslate2 {n[4:]}" if n.startswith("ct2-") else f"llama.cpp {n[6:]}")
    for name in engines:
        print(f"ours / AR peer in {label(name)} tokens/s: {quartiles(vs_engine[name])}")
    if vs_peer and engines:
        for name in engines:
            ratios = [e / p for e, p in zip(vs_engine[name], vs_peer)]  # (ours/engine) / (ours/peer)
            print(f"AR peer (ours) / AR peer in {label(name)} tokens/s: {quartiles(ratios)}")
    for name in engines:
        if step_vs[name]:
            print(f"manager step time (window slides included) / AR peer in {label(name)} time a token: "
                  f"{quartiles(step_vs[name])}")
            print(f"manager step time alone (between slides) / AR peer in {label(name)} time a token: "
                  f"{quartiles(alone_vs[name])}")
    tmp.cleanup()
    if vs_base:
        print(f"ours / baseline tokens/s: {quartiles(vs_base)}; characters per manager step ratio "
              f"{chars_ratio:.3f}; divided: {quartiles([v / chars_ratio for v in vs_base])}")


if __name__ == "__main__":
    main()
