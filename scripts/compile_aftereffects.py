"""Does torch.compile slow later, uncompiled work in the same process, and what undoes it?

docs/log/notebook.md ("open observations") saw uncompiled single-stream rows run ~28% slower after a
compiled manager step in the same process on an H200. This script runs, in ONE process,
the same three uncompiled measurements in phases, in this order:
  fresh        first measurement
  fresh again  a control: the same, again, with nothing compiled (is it just "later"?)
  compiled     a compiled manager step (ARStream compile=True, in its CUDA graph) is built,
               run and kept alive; its own step time is reported
  after        the uncompiled measurements again
  released     the compiled stream dropped, gc.collect(), torch.cuda.empty_cache()
  reset        torch._dynamo.reset() (drops compiled code and guards)
  no workers   torch._inductor's compile worker processes shut down
  gc frozen    gc.freeze(): the objects compiling left behind leave the collector's scans
Measurements: the uncompiled manager step (CUDA graph on a GPU, eager on a CPU), a flood-only
render of a fixed block of held-out roots, and single-stream end-to-end tokens/s
(TextPipeline, block 256). Each phase also prints what compile could have left behind:
threads (and their names), child processes, Python objects, CUDA memory and allocator retries, dynamo
counters, matmul precision, the eval-frame callback. The phase after which the slowdown
disappears names its cause. Last line: JSON.

Usage: PYTHONPATH=src python3 scripts/compile_aftereffects.py [--device cuda] [--quick] [--no-compile]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time

import torch

from fractal_flood.corpus.reader import load_corpus
from fractal_flood.device import describe, resolve_device, resolve_dtype
from fractal_flood.errors import FractalFloodError
from fractal_flood.generation.pipeline import TextPipeline
from fractal_flood.manager.stream import ARStream
from fractal_flood.measure.timing import device_sync, measure
from fractal_flood.models import checkpoint as ckpt
from fractal_flood.render.base import DecodeOptions
from fractal_flood.render.decoders import make_decoder
from fractal_flood.sampling.tokens import SamplingConfig


def child_processes() -> int:
    me, n = str(os.getpid()), 0
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    n += f.read().rsplit(")", 1)[1].split()[1] == me  # field 4: the parent's pid
            except (OSError, IndexError):
                pass
    return n


def leftovers(device) -> dict:
    """State that torch.compile might leave behind in this process."""
    out = {"threads": threading.active_count(),
           "thread_names": sorted(t.name for t in threading.enumerate()),
           "os_threads": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None,
           "child_processes": child_processes(), "gc_objects": len(gc.get_objects()),
           "torch_threads": torch.get_num_threads(),
           "float32_matmul_precision": torch.get_float32_matmul_precision(),
           "cudnn_benchmark": torch.backends.cudnn.benchmark}
    if "torch._dynamo" in sys.modules:
        from torch._C._dynamo import eval_frame
        from torch._dynamo.utils import counters
        out["eval_frame_callback"] = repr(eval_frame.get_eval_frame_callback())
        out["dynamo_unique_graphs"] = counters["stats"]["unique_graphs"]
        out["dynamo_frames"] = dict(counters["frames"])
        out["dynamo_recompiles"] = sum(counters["recompiles"].values()) if "recompiles" in counters else 0
    if device.type == "cuda":
        s = torch.cuda.memory_stats(device)
        out.update({"cuda_allocated_mb": s.get("allocated_bytes.all.current", 0) / 2**20,
                    "cuda_reserved_mb": s.get("reserved_bytes.all.current", 0) / 2**20,
                    "cuda_alloc_retries": s.get("num_alloc_retries", 0),
                    "cuda_device_allocs": s.get("num_device_alloc", 0),
                    "allow_tf32": torch.backends.cuda.matmul.allow_tf32})
    return out


class Probe:
    def __init__(self, args):
        self.dev = resolve_device(args.device)
        self.dt = resolve_dtype("auto", self.dev)
        self.cuda = self.dev.type == "cuda"
        self.sync = device_sync(self.dev)
        d = ckpt.default_model_dir()
        self.tok = ckpt.load_tokenizer(d)
        self.manager, _ = ckpt.load_manager(d, self.tok, self.dev, self.dt)
        self.renderer, _ = ckpt.load_renderer(d, self.tok, self.dev, self.dt)
        self.steps, self.roots, self.repeats = (16, 24, 2) if args.quick else (256, 900, 5)
        text = load_corpus()
        self.block = torch.tensor(self.tok.encode(text[-len(text) // 20:])[:self.roots], device=self.dev)
        self.prompt = torch.tensor(self.tok.encode("\n"))
        self.sampling = SamplingConfig(temperature=0.8)

    def step_us(self, compile: bool = False, keep: bool = False):
        ar = ARStream(self.manager, 1, self.sampling, self.dev, None, self.cuda, 0, compile=compile)

        def run():
            ar.start(self.prompt)
            return ar.generate(self.steps)
        t = measure(run, repeats=self.repeats, warmup=1, sync=self.sync)
        return t.seconds / self.steps * 1e6, (ar if keep else None)

    def measure_all(self) -> dict:
        step, _ = self.step_us()
        dec = make_decoder("flood", self.renderer, self.tok.alphabet, DecodeOptions(k=1))
        flood = measure(lambda: dec.render(self.block), repeats=self.repeats, warmup=1, sync=self.sync)
        pipe = TextPipeline(self.tok, self.manager, self.renderer, self.dev, self.dt, "flood", DecodeOptions(k=1))
        e2e = measure(lambda: pipe.generate("", self.roots, self.sampling, seed=0), repeats=self.repeats,
                      warmup=1, sync=self.sync)
        return {"manager_step_us": step, "flood_ms": flood.seconds * 1e3,
                "e2e_tokens_per_s": e2e.result.num_chunks / e2e.seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile phases (smoke run)")
    args = ap.parse_args(argv)
    try:
        p = Probe(args)
    except FractalFloodError as e:
        print(f"compile_aftereffects: error: {e}", file=sys.stderr)
        return 2
    print(f"compile after-effects on {describe(p.dev)}, {p.dt}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; {p.steps} manager steps, "
          f"{p.roots} roots, median of {p.repeats}", flush=True)
    phases = []

    def phase(name, extra=None):
        row = {"phase": name, **p.measure_all(), **(extra or {}), "leftovers": leftovers(p.dev)}
        phases.append(row)
        print(f"{name:>12}: manager step {row['manager_step_us']:8.1f} us, flood {row['flood_ms']:8.2f} ms, "
              f"e2e {row['e2e_tokens_per_s']:8,.0f} tokens/s | {json.dumps(row['leftovers'])}", flush=True)

    phase("fresh")
    phase("fresh again")
    if not args.no_compile:
        t0 = time.perf_counter()
        compiled_us, keep = p.step_us(compile=True, keep=True)
        print(f"compiled manager step: {compiled_us:.1f} us (first call + timing {time.perf_counter() - t0:.1f} s)",
              flush=True)
        phase("after", {"compiled_step_us": compiled_us})
        del keep
        gc.collect()
        if p.cuda:
            torch.cuda.empty_cache()
        phase("released")
        torch._dynamo.reset()
        phase("reset")
        from torch._inductor import async_compile
        if hasattr(async_compile, "shutdown_compile_workers"):
            async_compile.shutdown_compile_workers()
            phase("no workers")
        gc.collect()
        gc.freeze()  # the ~300k objects compiling imported no longer scanned by each collection
        phase("gc frozen")
    print(json.dumps({"device": describe(p.dev), "torch": torch.__version__, "phases": phases}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
