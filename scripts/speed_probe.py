"""Speed experiments behind docs/log/notebook.md's "predicted / measured" table, one run, one device.

Each probe changes one thing and times it against its baseline in the same process:
  1. manager decode step at batch 1: eager vs CUDA graph vs CUDA graph + torch.compile,
     sampled (temperature 0.8) and greedy;
  2. single-stream end-to-end: the flood on a second CUDA stream (overlap) vs inline;
  3. the flood (K = 1) at a large R: bf16 vs fp32 weights, and bf16 with the renderer's
     transformer under torch.compile.
Usage: PYTHONPATH=src python3 scripts/speed_probe.py [--device cuda] [--quick]
Prints one line per probe and a JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fractal_flood.corpus.reader import load_corpus
from fractal_flood.corpus.streams import TokenStream
from fractal_flood.device import describe, resolve_device
from fractal_flood.generation.pipeline import TextPipeline
from fractal_flood.manager.stream import ARStream
from fractal_flood.measure.timing import device_sync, measure
from fractal_flood.models import checkpoint as ckpt
from fractal_flood.render.base import DecodeOptions
from fractal_flood.render.decoders import make_decoder
from fractal_flood.sampling.tokens import SamplingConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--only-e2e", action="store_true",
                    help="only probe 2, over block sizes (64, 256, 900) and the compiled manager step")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    sync = device_sync(dev)
    bf16 = torch.bfloat16 if cuda else torch.float32
    shipped = ckpt.load_model_dir(None, dev, bf16)
    tok, manager, renderer = shipped.tokenizer, shipped.manager, shipped.renderer
    steps, e2e_roots, R = (16, 24, 64) if args.quick else (512, 900, 16384)
    out = {"device": describe(dev), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"speed probe on {out['device']}, torch {out['torch']}, {out['date']}", flush=True)

    if args.only_e2e:
        e2e_blocks(out, tok, manager, renderer, dev, bf16, sync, e2e_roots, not args.skip_compile)
        print(json.dumps(out))
        return

    # 1. manager step
    prompt = torch.tensor(tok.encode("\n"))
    variants = [("eager", False, False)] + ([("graph", True, False)] if cuda else [])
    if not args.skip_compile:
        variants.append(("graph+compile" if cuda else "compile", cuda, True))
    for temp in (0.8, 0.0):
        for name, graph, comp in variants:
            ar = ARStream(manager, 1, SamplingConfig(temperature=temp), dev, None, graph, 0, compile=comp)

            def run():
                ar.start(prompt)
                return ar.generate(steps)
            t = measure(run, repeats=3, warmup=1, sync=sync)
            us = t.seconds / steps * 1e6
            out[f"manager_step_us/{name}/T={temp}"] = us
            print(f"manager step, batch 1, {name:>13}, temperature {temp}: {us:8.1f} us/step", flush=True)

    # 2. overlap of manager and flood
    for overlap in (True, False):
        pipe = TextPipeline(tok, manager, renderer, dev, bf16, "flood", DecodeOptions(k=1), overlap=overlap)
        sampling = SamplingConfig(temperature=0.8)
        t = measure(lambda: pipe.generate("", e2e_roots, sampling, seed=0), repeats=3, warmup=1, sync=sync)
        g = t.result
        out[f"e2e_single_tokens_per_s/overlap={overlap}"] = g.num_chunks / t.seconds
        print(f"e2e single flood k=1, overlap={overlap!s:>5}: {g.num_chunks / t.seconds:10,.0f} tokens/s "
              f"({t.seconds * 1e3:.1f} ms for {g.num_chunks} tokens)", flush=True)

    # 3. the flood at large R
    roots = TokenStream.split(tok.encode(load_corpus())).val  # the held-out tail
    roots = roots.repeat(-(-R // len(roots)))[:R].to(dev)
    dtypes = [("bf16", torch.bfloat16), ("fp32", torch.float32)] if cuda else [("fp32", torch.float32)]
    compiled = [(f"{dtypes[0][0]}+compile", dtypes[0][1])] if not args.skip_compile else []
    for name, dt in dtypes + compiled:
        model = ckpt.load_model_dir(None, dev, dt, parts=("renderer",)).renderer
        if name.endswith("compile"):
            model._hidden = torch.compile(model._hidden, dynamic=False)
        dec = make_decoder("flood", model, tok.alphabet, DecodeOptions(k=1))
        t = measure(lambda: dec.render(roots), repeats=3, warmup=2, sync=sync)
        res = t.result
        exact = sum(a == tok.root_text(int(r)) for a, r in zip(res.root_texts(), roots.tolist())) / R
        out[f"flood_k1_tokens_per_s/{name}"] = res.num_chunks / t.seconds
        print(f"flood k=1 R={R}, {name:>12}: {res.num_chunks / t.seconds:10,.0f} tokens/s, "
              f"fidelity {exact:.2%}, warm-up {t.warmup_s:.1f} s", flush=True)
    print(json.dumps(out))


def e2e_blocks(out, tok, manager, renderer, dev, dt, sync, roots, with_compile) -> None:
    """Single-stream end-to-end by block size (the flood's fixed cost per block is launch
    bound), overlap on and off, then the compiled manager step at the largest block."""
    sampling = SamplingConfig(temperature=0.8)
    runs = [(b, ov, False) for b in (64, 256, roots) for ov in (True, False)]
    runs += [(256, True, True), (roots, True, True)] if with_compile else []
    for block, overlap, comp in runs:
        pipe = TextPipeline(tok, manager, renderer, dev, dt, "flood", DecodeOptions(k=1),
                            overlap=overlap, compile=comp)
        t = measure(lambda: pipe.generate("", roots, sampling, seed=0, block_roots=block),
                    repeats=5, warmup=1, sync=sync)
        n = t.result.num_chunks
        key = f"e2e_single_tokens_per_s/block={block}/overlap={overlap}/compile={comp}"
        out[key] = n / t.seconds
        print(f"e2e single flood k=1, block {block:>4}, overlap={overlap!s:>5}, compile={comp!s:>5}: "
              f"{n / t.seconds:8,.0f} tokens/s ({t.seconds * 1e3:.1f} ms for {n} tokens)", flush=True)


if __name__ == "__main__":
    main()
