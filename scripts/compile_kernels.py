"""Compile the fused decode step's Triton kernels for a GPU, on a machine without one.

Triton compiles ahead of time for a named target (``GPUTarget("cuda", 90, 32)``: H100 /
H200) down to a cubin with the ``ptxas`` its wheel ships, so the kernels' types, shapes and
constexprs are checked by the real compiler here, not only by the interpreter the CPU tests
run them in. For each kernel, at the block sizes ``FusedStep`` launches for the given model
directory's manager and AR peer, with its warps, and each weight dtype: registers per
thread and local memory per thread (spills; ``cuobjdump -res-usage`` on the cubin), so a
tile too large for the registers shows before a GPU is lent.

Exit status 1 if any kernel fails to compile. Run without ``TRITON_INTERPRET=1``.

Usage: PYTHONPATH=src python scripts/compile_kernels.py [--model DIR] [--arch 90]
       [--dtypes fp32,bf16,fp16] [--warps N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fractal_flood.manager.fused_step import FusedStep, _pow2
from fractal_flood.models import checkpoint as ckpt

W = "W"  # the weights' (and KV cache's) dtype, filled in per run


def kernels(k, manager: dict, peer: dict | None) -> list[tuple[str, object, dict, dict, int]]:
    """(label, kernel, signature, constexprs, warps) for every launch of one step, as
    FusedStep makes them for these configs (``config`` dicts of the model directory's JSON)."""
    C, H, L = manager["d_model"], manager["n_heads"], manager["context"]
    BC, BN = _pow2(C), FusedStep.BLOCK_N
    i32, f32 = "i32", "fp32"
    out = []
    for embed in (True, False):
        out.append((f"qkv_kernel (EMBED={embed})", k.qkv_kernel, {
            "x_ptr": "*fp32", "tok_ptr": "*i64", "pos_ptr": "*i64", "wte_ptr": W, "wpe_ptr": W, "lnw_ptr": W,
            "lnb_ptr": W, "w_ptr": W, "b_ptr": W, "q_ptr": "*fp32", "k_ptr": W, "v_ptr": W, "C": i32, "H": i32,
            "D": i32, "L": i32, "eps": f32, "EMBED": "constexpr", "BLOCK_C": "constexpr", "BLOCK_N": "constexpr"},
            {"EMBED": embed, "BLOCK_C": BC, "BLOCK_N": BN}, FusedStep.warps(BC * BN)))
    out.append(("attention_kernel", k.attention_kernel, {
        "q_ptr": "*fp32", "k_ptr": W, "v_ptr": W, "o_ptr": "*fp32", "pos_ptr": "*i64", "C": i32, "H": i32, "D": i32,
        "L": i32, "scale": f32, "BLOCK_L": "constexpr", "BLOCK_D": "constexpr"},
        {"BLOCK_L": _pow2(L), "BLOCK_D": _pow2(C // H)}, FusedStep.warps(_pow2(L) * _pow2(C // H))))
    for n_in in (C, 4 * C):
        out.append((f"residual_kernel (in {n_in})", k.residual_kernel, {
            "a_ptr": "*fp32", "w_ptr": W, "b_ptr": W, "x_ptr": "*fp32", "N_IN": i32, "C": i32,
            "BLOCK_IN": "constexpr", "BLOCK_N": "constexpr"}, {"BLOCK_IN": _pow2(n_in), "BLOCK_N": BN},
            FusedStep.warps(_pow2(n_in) * BN)))
    out.append(("mlp_in_kernel", k.mlp_in_kernel, {
        "x_ptr": "*fp32", "lnw_ptr": W, "lnb_ptr": W, "w_ptr": W, "b_ptr": W, "h_ptr": "*fp32", "C": i32, "N": i32,
        "eps": f32, "BLOCK_C": "constexpr", "BLOCK_N": "constexpr"}, {"BLOCK_C": BC, "BLOCK_N": BN},
        FusedStep.warps(BC * BN)))
    for cfg in (manager, peer):
        if cfg is None:
            continue
        V, K = cfg["vocab_size"], cfg.get("head_classes") or 0
        if K:
            out.append((f"class_draw_kernel ({K} x {V // K})", k.class_draw_kernel, {
                "x_ptr": "*fp32", "lnw_ptr": W, "lnb_ptr": W, "wc_ptr": W, "wte_ptr": W, "temp_ptr": "*fp32",
                "seeds_ptr": "*i64", "steps_ptr": "*i64", "out_ptr": "*i64", "C": i32, "K": i32, "S": i32,
                "eps": f32, "BLOCK_C": "constexpr", "BLOCK_K": "constexpr", "BLOCK_S": "constexpr"},
                {"BLOCK_C": _pow2(cfg["d_model"]), "BLOCK_K": _pow2(K), "BLOCK_S": _pow2(V // K)},
                FusedStep.warps(_pow2(cfg["d_model"]) * max(_pow2(K), _pow2(V // K)))))
        else:
            out.append((f"logits_kernel ({V})", k.logits_kernel, {
                "x_ptr": "*fp32", "lnw_ptr": W, "lnb_ptr": W, "w_ptr": W, "z_ptr": "*fp32", "C": i32, "V": i32,
                "eps": f32, "BLOCK_C": "constexpr", "BLOCK_N": "constexpr"},
                {"BLOCK_C": _pow2(cfg["d_model"]), "BLOCK_N": FusedStep.LOGITS_BLOCK_N},
                FusedStep.warps(_pow2(cfg["d_model"]) * FusedStep.LOGITS_BLOCK_N)))
            out.append((f"flat_draw_kernel ({V})", k.flat_draw_kernel, {
                "z_ptr": "*fp32", "temp_ptr": "*fp32", "seeds_ptr": "*i64", "steps_ptr": "*i64", "out_ptr": "*i64",
                "V": i32, "BLOCK_V": "constexpr"}, {"BLOCK_V": FusedStep.block_v_for(V)},
                FusedStep.warps(FusedStep.block_v_for(V))))
    return out


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, local memory bytes per thread: spills and stack) of a compiled
    kernel, read by the ``cuobjdump -res-usage`` that Triton's wheel ships."""
    tool = str(Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([tool, "-res-usage", str(path)], capture_output=True, text=True).stdout
    regs, local = re.search(r"REG:(\d+)", text), re.search(r"LOCAL:(\d+)", text)
    return int(regs.group(1)) if regs else -1, int(local.group(1)) if local else -1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: the shipped model)")
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: H100 / H200)")
    ap.add_argument("--dtypes", default="fp32,bf16,fp16", help="weight dtypes, comma separated")
    ap.add_argument("--warps", type=int, choices=(1, 2, 4, 8, 16, 32),
                    help="compile every kernel with this many warps instead of FusedStep's choice")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_kernels: error: unset TRITON_INTERPRET (interpreted kernels do not compile)",
              file=sys.stderr)
        return 2
    from fractal_flood.manager import fused_kernels
    path = Path(args.model) if args.model else ckpt.default_model_dir()
    configs = {p: json.loads((path / f"{p}.json").read_text())["config"]
               for p in ("manager", "peer") if (path / f"{p}.json").is_file()}
    target = GPUTarget("cuda", args.arch, 32)
    print(f"Triton {triton.__version__}, target sm_{args.arch}, model {path}")
    print("| kernel | weights | warps | registers / thread | local bytes / thread (spills) | result |")
    print("|---|---|---:|---:|---:|---|")
    failed = 0
    for dt in args.dtypes.split(","):
        for label, kernel, sig, consts, warps in kernels(fused_kernels, configs["manager"], configs.get("peer")):
            sig = {n: (f"*{dt}" if t == W else t) for n, t in sig.items()}
            try:
                compiled = triton.compile(ASTSource(kernel, sig, consts), target=target,
                                          options={"num_warps": args.warps or warps})
                regs, spill = resource_usage(compiled.asm["cubin"])
                print(f"| {label} | {dt} | {args.warps or warps} | {regs} | {spill} | ok |", flush=True)
            except Exception as e:  # report every kernel, then fail
                failed += 1
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                print(f"| {label} | {dt} | {args.warps or warps} | | | FAILED: {first[:120]} |", flush=True)
    print(f"{failed} failed" if failed else "all compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
