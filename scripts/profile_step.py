"""Profile the manager's decode step at batch 1 with torch.profiler: which kernels (GPU) or
operators (CPU) one step runs, how often, and how long each takes.

For each mode (eager: the PyTorch reference step, every linear layer a library call, so
its operators show; on CUDA also the CUDA graph, ``compile``: the compiled step in the
graph, ``fused``: the Triton step of ``fused_step.py`` in the graph) it warms the stream
up, then profiles ``--steps`` decode steps and prints:
  - a table of kernels (CUDA) or aten operators (CPU), sorted by time: calls per step, time
    per step, time per call, share of the step;
  - per step: wall time, summed kernel time, kernel launches. A kernel sum far below the
    wall time means the step is bound by launches and host work, not by the GPU.
The last line is JSON with every figure. Runs on the CPU too (``--device cpu``).

Usage: PYTHONPATH=src python3 scripts/profile_step.py [--device cuda] [--modes eager,graph,compile,fused]
       [--steps 64] [--model DIR] [--tiny] [--rows 25] [--trace DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from fractal_flood.device import describe, resolve_device, resolve_dtype, synchronize
from fractal_flood.errors import FractalFloodError
from fractal_flood.manager.stream import ARStream
from fractal_flood.models import checkpoint as ckpt
from fractal_flood.models.causal_lm import CausalLM
from fractal_flood.models.config import CausalLMConfig
from fractal_flood.sampling import tokens as sampling
from fractal_flood.sampling.tokens import SamplingConfig

MODES = ("eager", "graph", "compile", "fused")


def load_model(args, device, dtype) -> tuple[CausalLM, torch.Tensor, str]:
    if args.tiny:  # random weights, seconds on a CPU: for the test and a smoke run
        torch.manual_seed(0)
        model = CausalLM(CausalLMConfig(vocab_size=64, n_layers=2, d_model=32, n_heads=4, context=32))
        return model.to(device=device, dtype=dtype).eval(), torch.tensor([1, 2, 3]), "tiny (random)"
    model_dir = Path(args.model) if args.model else ckpt.default_model_dir()
    tok = ckpt.load_tokenizer(model_dir)
    model, _ = ckpt.load_manager(model_dir, tok, device, dtype)
    return model, torch.tensor(tok.encode("\n")), str(model_dir)


def _self_time(evt, cuda: bool) -> float:
    """Self time in us: on the device for a kernel, on the host for an operator."""
    if cuda:
        return float(getattr(evt, "self_device_time_total", getattr(evt, "self_cuda_time_total", 0.0)))
    return float(evt.self_cpu_time_total)


def kernel_table(prof, steps: int, cuda: bool) -> list[dict]:
    """Kernels (CUDA) or aten operators (CPU) of the profiled steps, costliest first."""
    by_name = defaultdict(lambda: [0, 0.0])
    for evt in prof.key_averages():
        if cuda:
            if evt.device_type != torch.autograd.DeviceType.CUDA:
                continue
        elif not evt.key.startswith("aten::"):
            continue
        t = _self_time(evt, cuda)
        if t <= 0 and cuda:
            continue
        by_name[evt.key][0] += evt.count
        by_name[evt.key][1] += t
    total = sum(t for _, t in by_name.values()) or 1.0
    rows = [{"name": name, "calls_per_step": n / steps, "us_per_step": t / steps,
             "us_per_call": t / max(n, 1), "share": t / total}
            for name, (n, t) in by_name.items()]
    return sorted(rows, key=lambda r: -r["us_per_step"])


# operators that only make views or metadata (no kernel on a GPU)
VIEWS = {"aten::view", "aten::_unsafe_view", "aten::_reshape_alias", "aten::reshape", "aten::as_strided",
         "aten::transpose", "aten::t", "aten::permute", "aten::expand", "aten::select", "aten::slice",
         "aten::split", "aten::narrow", "aten::unsqueeze", "aten::squeeze", "aten::unflatten", "aten::flatten",
         "aten::alias", "aten::detach", "aten::empty", "aten::empty_strided", "aten::empty_like",
         "aten::contiguous", "aten::to", "aten::_to_copy", "aten::lift_fresh", "aten::resolve_conj",
         "aten::resolve_neg", "aten::result_type", "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero"}


def work_operators(prof, steps: int) -> float:
    """Operators per step that do work themselves (on a GPU: at least one kernel each): aten
    operators other than views whose own aten calls are views only (a ``linear`` counts
    through its ``addmm``, not twice)."""
    n = 0
    for evt in prof.events():
        if evt.name.startswith("aten::") and evt.name not in VIEWS and not any(
                c.name.startswith("aten::") and c.name not in VIEWS for c in evt.cpu_children):
            n += 1
    return n / steps


REFERENCE = {"FRACTAL_FLOOD_ROWWISE": "blas", "FRACTAL_FLOOD_CPU_STEP": "eager"}


def profile_mode(model, prompt, mode: str, device, steps: int, warmup: int, trace_dir) -> dict:
    if mode == "eager":  # the reference step: library linear layers, no compiled CPU step
        saved = {k: os.environ.get(k) for k in REFERENCE}
        os.environ.update(REFERENCE)
        try:
            return _profile_mode(model, prompt, mode, device, steps, warmup, trace_dir)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return _profile_mode(model, prompt, mode, device, steps, warmup, trace_dir)


def _profile_mode(model, prompt, mode: str, device, steps: int, warmup: int, trace_dir) -> dict:
    cuda = device.type == "cuda"
    stream = ARStream(model, 1, SamplingConfig(temperature=0.8), device, None,
                      cuda_graph=mode != "eager", seed=0, compile=mode == "compile", fused=mode == "fused")
    stream.start(prompt.to(device))
    # stay inside one window: a slide (re-prefill) would be profiled as part of a step
    room = model.config.context - prompt.numel()
    if warmup + steps >= room:
        raise FractalFloodError(f"--steps {steps} + warm-up {warmup} do not fit the context "
                                f"({model.config.context}) after the prompt; use fewer steps")
    stream.generate(warmup)
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        stream.generate(steps)
        synchronize(device)
        wall = time.perf_counter() - t0
    if trace_dir:
        Path(trace_dir).mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(Path(trace_dir) / f"profile_step_{mode}.json"))
    # the profiler's own overhead inflates the wall time: time the same steps unprofiled too
    stream.start(prompt.to(device))
    stream.generate(warmup)
    synchronize(device)
    t0 = time.perf_counter()
    stream.generate(steps)
    synchronize(device)
    plain = time.perf_counter() - t0
    rows = kernel_table(prof, steps, cuda)
    launches = sum(r["calls_per_step"] for r in rows) if cuda else None
    return {"mode": mode, "steps": steps, "step_us": plain / steps * 1e6,
            "step_us_profiled": wall / steps * 1e6,
            "kernel_us_per_step": sum(r["us_per_step"] for r in rows) if cuda else None,
            "kernels_per_step": launches, "work_ops_per_step": work_operators(prof, steps), "rows": rows}


def print_mode(res: dict, cuda: bool, limit: int) -> None:
    what = "kernel" if cuda else "operator (self CPU time)"
    print(f"\n## {res['mode']}: {res['step_us']:.1f} us/step unprofiled, "
          f"{res['step_us_profiled']:.1f} us/step under the profiler", flush=True)
    print(f"operators doing work per step {res['work_ops_per_step']:.1f} (aten operators other than "
          "views whose own aten calls are views only)")
    if cuda:
        busy = res["kernel_us_per_step"]
        print(f"kernels per step {res['kernels_per_step']:.1f}, kernel time per step {busy:.1f} us "
              f"({busy / res['step_us'] * 100:.0f}% of the unprofiled step)")
    print(f"| {what} | calls/step | us/step | us/call | share |")
    print("|---|---:|---:|---:|---:|")
    for r in res["rows"][:limit]:
        name = r["name"] if len(r["name"]) <= 90 else r["name"][:87] + "..."
        print(f"| `{name}` | {r['calls_per_step']:.1f} | {r['us_per_step']:.2f} | {r['us_per_call']:.2f} "
              f"| {r['share'] * 100:.1f}% |")
    if len(res["rows"]) > limit:
        rest = res["rows"][limit:]
        print(f"| ({len(rest)} more) | {sum(r['calls_per_step'] for r in rest):.1f} "
              f"| {sum(r['us_per_step'] for r in rest):.2f} | | {sum(r['share'] for r in rest) * 100:.1f}% |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    ap.add_argument("--modes", help="comma list of eager, graph, compile, fused "
                                    "(default: eager,graph on CUDA, eager on the CPU)")
    ap.add_argument("--steps", type=int, default=64, help="decode steps profiled per mode")
    ap.add_argument("--warmup", type=int, default=16, help="decode steps before profiling")
    ap.add_argument("--model", help="model directory (default: the shipped model)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random manager instead (tests)")
    ap.add_argument("--rows", type=int, default=25, help="table rows per mode")
    ap.add_argument("--trace", help="also write a Chrome trace per mode into this folder")
    ap.add_argument("--tensor-draw", action="store_true",
                    help="on the CPU, draw by tensor ops as a GPU does (no host inversion or host hash)")
    args = ap.parse_args(argv)
    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
        cuda = device.type == "cuda"
        modes = args.modes.split(",") if args.modes else (["eager", "graph"] if cuda else ["eager"])
        for m in modes:
            if m not in MODES:
                raise FractalFloodError(f"unknown mode {m!r} (choose from: {', '.join(MODES)})")
            if m != "eager" and not cuda:
                raise FractalFloodError(f"mode {m!r} needs a CUDA device (the compiled and fused "
                                        "steps are profiled inside their CUDA graphs)")
        if args.steps < 1 or args.warmup < 1:
            raise FractalFloodError("--steps and --warmup must be >= 1")
        model, prompt, source = load_model(args, device, dtype)
        if args.tensor_draw:
            sampling.HOST_DRAW_ROWS = sampling.HOST_HASH_ROWS = 0
        print(f"profile of one manager decode step, batch 1: {source} on {describe(device)}, {dtype}, "
              f"torch {torch.__version__}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}", flush=True)
        results = []
        for m in modes:
            res = profile_mode(model, prompt, m, device, args.steps, args.warmup, args.trace)
            print_mode(res, cuda, args.rows)
            results.append(res)
    except FractalFloodError as e:
        print(f"profile_step: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"device": describe(device), "dtype": str(dtype), "torch": torch.__version__,
                      "model": source, "modes": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
