"""Candidate runtimes for the manager's CPU decode step, measured side by side (the engine
issue: "choose the runtime by measurement"). A measurement, not a new default.

Every candidate does the same body: embeddings, every layer (layer norm, qkv, this step's
key and value written into the cache, attention over the row's cache, projection, MLP),
the final layer norm; T = 1, each row at its own position. The output layer and the draw
are not part of it. fp32, one thread everywhere (``torch.set_num_threads(1)``, ONNX
Runtime's intra-op pool of 1, numba without ``parallel``).

- ``eager``: the project's eager step (``SlotManager._forward`` with
  ``FRACTAL_FLOOD_CPU_STEP=eager``: row-invariant linears, batched-matmul attention over
  the span the rows need): the reference for exactness.
- ``c``: the shipped compiled step (``manager/cpu_step.c`` via ctypes, ``CpuStep``).
- ``numba``: the C step's algorithm written as ``@njit(cache=True)`` kernels (same float32
  operations in the same order: the same lanes, the same polynomial exponential).
- ``ort`` / ``ort-io``: the step as a functional graph (``FunctionalStep``: one cache
  input per layer and kind, the new keys and values out; attention reads the cache up to
  the batch's furthest position rounded up to 16 slots, the eager step's span, a dynamic
  dimension, where the C step reads each row's slots 0..pos), exported with
  ``torch.onnx.export(dynamo=True)`` with a dynamic batch, run by an ONNX Runtime session
  (1 intra-op thread, all graph optimisations); ``ort-io`` binds inputs and outputs to the
  torch tensors' memory (IO binding), ``ort`` passes numpy views. The new keys and values
  are written into the cache on the host (two index_put, timed with the step).
- ``inductor``: ``FunctionalStep`` with fixed shapes (all ``context`` slots, masked) through
  ``torch.compile`` with max-autotune's options (no CUDA graphs), inductor's C++ wrapper
  (``cpp_wrapper = True``) and ``freezing`` (weights as constants), one graph per batch
  size; the same host cache write. ``inductor-cpp``: the matrix products limited to
  inductor's own C++ GEMM template (``max_autotune_gemm_backends = "CPP"``, no MKL).

Printed: step time at batch 1 and 32 (alternated rounds, medians, and each candidate's
median per-round ratio to ``c``); first use (build + first steps at both batch sizes, in a
fresh process: with an empty cache, then again with the cache the first one left, so
"cached across processes" is measured, not assumed); the import time; the installed size
of the candidate's extra distributions (summed from their installed file lists); exactness
(max |h - h_eager| over ``--steps`` steps at batch 32, rows at positions offset 0..31) and
batch invariance (rows 0 and 31 run alone for the same steps: bitwise equal to their rows
in the batch of 32 at every step?). A candidate whose package is missing prints "not
installed" and is skipped.

Needs (only for their candidates): numba; onnxruntime, onnx and onnxscript; a C++ compiler
for inductor. Not project dependencies: ``pip install numba onnxruntime onnx onnxscript``.

Usage: PYTHONPATH=src python scripts/step_candidates.py [--model DIR] [--rounds 7]
       [--candidates eager,c,numba,ort,ort-io,inductor,inductor-cpp] [--steps 200]
       [--reps 200,20] [--no-first-use] [--cache DIR]

(docs/log/notebook.md, 2026-12-07: ``--rounds 15``, all candidates; the run takes ~12 min on
2 cores, most of it inductor's compiles.)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fractal_flood.device import describe  # noqa: E402
from fractal_flood.manager import cpu_step  # noqa: E402
from fractal_flood.manager.slots import SlotManager  # noqa: E402

from paired_ratio import load, quartiles  # noqa: E402  (scripts/ is on sys.path)

CANDIDATES = ("eager", "c", "numba", "ort", "ort-io", "inductor", "inductor-cpp")
NEEDS = {"numba": ("numba",), "ort": ("onnxruntime", "onnx", "onnxscript"),
         "ort-io": ("onnxruntime", "onnx", "onnxscript")}
# extra distributions each candidate installs: (to run, to build) (c and inductor: none, a
# system C / C++ compiler)
DISTS = {"numba": (("numba", "llvmlite"), ()),
         "ort": (("onnxruntime", "flatbuffers", "protobuf"), ("onnx", "onnxscript", "onnx_ir", "ml_dtypes")),
         "ort-io": (("onnxruntime", "flatbuffers", "protobuf"), ("onnx", "onnxscript", "onnx_ir", "ml_dtypes"))}
BATCHES = (1, 32)


def installed(name: str) -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in NEEDS.get(name, ()))
    except (ImportError, ValueError):  # a broken install counts as none
        return False


def dist_mib(names) -> float:
    total = 0
    for n in names:
        try:
            d = importlib.metadata.distribution(n)
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in d.files or ():
            p = Path(d.locate_file(f))
            if p.is_file():
                total += p.stat().st_size
    return total / 2 ** 20


class Caches:
    """Keys and values of every layer, (layers, B, heads, L, hd), and per-layer views."""

    def __init__(self, cfg, B: int):
        hd = cfg.d_model // cfg.n_heads
        self.K = torch.zeros(cfg.n_layers, B, cfg.n_heads, cfg.context, hd)
        self.V = torch.zeros_like(self.K)
        self.k, self.v = list(self.K.unbind(0)), list(self.V.unbind(0))
        self.rows = torch.arange(B)

    def write(self, pos: torch.Tensor, knew: torch.Tensor, vnew: torch.Tensor) -> None:
        """knew, vnew (layers, B, heads, hd): row b's at slot pos[b] of every layer."""
        self.K.permute(1, 3, 0, 2, 4)[self.rows, pos] = knew.transpose(0, 1)
        self.V.permute(1, 3, 0, 2, 4)[self.rows, pos] = vnew.transpose(0, 1)


class FunctionalStep(torch.nn.Module):
    """The decode step as a pure function for exporters and compilers: tok, pos (B,) long,
    each layer's keys then each layer's values (B, heads, L, hd) -> hidden (B, C), new
    keys and values (layers, B, heads, hd). (One input per layer: a stacked cache indexed
    by layer exports as a Split that copies the whole cache every step.) Fixed shapes: each query scores all L cache slots, those at or above its
    position masked, plus this step's own key (not yet in the cache; the caller writes it
    at slot pos), one softmax over the L + 1 scores. No copy of the cache is made.

    ``spanned``: the first argument after pos is a tensor whose length S is how many cache
    slots to read (the eager step's span: the batch's furthest position rounded up to 16
    slots), a dynamic dimension of the exported graph."""

    def __init__(self, model, spanned: bool = False):
        super().__init__()
        self.m, self.spanned = model, spanned

    def forward(self, tok, pos, *kv):
        m = self.m
        if self.spanned:
            S = kv[0].shape[0]
            kv = tuple(t[:, :, :S] for t in kv[1:])
        cfg = m.config
        C, nh = cfg.d_model, cfg.n_heads
        hd = C // nh
        B = tok.shape[0]
        K, V = kv[:len(m.blocks)], kv[len(m.blocks):]
        slots = torch.arange(K[0].shape[2], device=tok.device)
        before = (slots[None, :] < pos[:, None])[:, None, None, :]  # (B, 1, 1, L): earlier slots
        x = F.embedding(tok, m.wte.weight) + F.embedding(pos, m.wpe.weight)
        knew, vnew = [], []
        for i, b in enumerate(m.blocks):
            a = b.attn
            h = F.layer_norm(x, (C,), b.ln_1.weight, b.ln_1.bias, b.ln_1.eps)
            q, k, v = F.linear(h, a.c_attn.weight, a.c_attn.bias).split(C, dim=1)
            q, k, v = (t.reshape(B, nh, 1, hd) for t in (q, k, v))
            scale = 1.0 / hd ** 0.5
            old = (q @ K[i].transpose(-1, -2)).masked_fill(~before, float("-inf"))  # (B, nh, 1, L)
            own = (q * k).sum(-1, keepdim=True)  # (B, nh, 1, 1)
            p = (torch.cat([old, own], -1) * scale).softmax(-1)
            y = (p[..., :-1] @ V[i] + p[..., -1:] * v).reshape(B, C)
            x = x + F.linear(y, a.c_proj.weight, a.c_proj.bias)
            h = F.layer_norm(x, (C,), b.ln_2.weight, b.ln_2.bias, b.ln_2.eps)
            x = x + F.linear(F.gelu(F.linear(h, b.mlp.c_fc.weight, b.mlp.c_fc.bias), approximate="tanh"),
                             b.mlp.c_proj.weight, b.mlp.c_proj.bias)
            knew.append(k.reshape(B, nh, hd))
            vnew.append(v.reshape(B, nh, hd))
        return F.layer_norm(x, (C,), m.ln_f.weight, m.ln_f.bias, m.ln_f.eps), torch.stack(knew), torch.stack(vnew)


# ---- candidates: each make(model, B, caches, ctx) -> step(tok, pos) -> hidden (B, C) ------

def make_eager(model, B, caches, ctx):
    old = os.environ.get("FRACTAL_FLOOD_CPU_STEP")
    os.environ["FRACTAL_FLOOD_CPU_STEP"] = "eager"
    try:
        sm = SlotManager(model, B, "cpu")
    finally:
        if old is None:
            del os.environ["FRACTAL_FLOOD_CPU_STEP"]
        else:
            os.environ["FRACTAL_FLOOD_CPU_STEP"] = old
    assert sm._native is None
    sm.k, sm.v = caches.k, caches.v

    def step(tok, pos):
        return sm._forward(tok[:, None], pos[:, None], B, last=int(pos.max()))[:, -1]
    return step


def make_c(model, B, caches, ctx):
    if not cpu_step.usable(model, torch.device("cpu"), torch.float32):
        raise RuntimeError("no C compiler built the CPU decode step")
    s = cpu_step.CpuStep(model, caches.k, caches.v, weights="fp32")  # every candidate: float32 weights
    return s.hidden


def make_numba(model, B, caches, ctx):
    from step_candidates_numba import step as kernel  # compiled, or loaded from its cache, on first call
    cfg, m = model.config, model
    C, L = cfg.d_model, cfg.context

    def arr(t):
        return np.ascontiguousarray(t.detach().numpy())

    def stack(get, transpose=False):
        return np.ascontiguousarray(np.stack([arr(get(b).t() if transpose else get(b)) for b in m.blocks]))

    w = (arr(m.wte.weight), arr(m.wpe.weight), arr(m.ln_f.weight), arr(m.ln_f.bias),
         stack(lambda b: b.ln_1.weight), stack(lambda b: b.ln_1.bias),
         stack(lambda b: b.attn.c_attn.weight, True), stack(lambda b: b.attn.c_attn.bias),
         stack(lambda b: b.attn.c_proj.weight, True), stack(lambda b: b.attn.c_proj.bias),
         stack(lambda b: b.ln_2.weight), stack(lambda b: b.ln_2.bias),
         stack(lambda b: b.mlp.c_fc.weight, True), stack(lambda b: b.mlp.c_fc.bias),
         stack(lambda b: b.mlp.c_proj.weight, True), stack(lambda b: b.mlp.c_proj.bias),
         caches.K.numpy(), caches.V.numpy())
    eps = np.float32(m.ln_f.eps)
    z = np.zeros
    scratch = (z((B, C), np.float32), z((B, C), np.float32), z((B, 3 * C), np.float32), z((B, C), np.float32),
               z((B, 4 * C), np.float32), z((B, C), np.float32), z(L, np.float32), z(C, np.float32),
               z(16, np.float32))

    def step(tok, pos):
        out = torch.empty(tok.shape[0], C)
        kernel(*w, tok.numpy(), pos.numpy(), eps, out.numpy(), *scratch)
        return out
    return step


def span(pos: torch.Tensor, L: int, step: int = 16) -> int:
    """Cache slots the step reads: the furthest position + 1, rounded up to ``step`` (the
    eager step's rule, ``slots.span_step``)."""
    return min(L, -(-(int(pos.max()) + 1) // step) * step)


def kv_names(n_layers: int) -> list:
    return [f"k{i}" for i in range(n_layers)] + [f"v{i}" for i in range(n_layers)]


def onnx_path(model, ctx) -> Path:
    """The exported step (dynamic batch), made once per cache folder."""
    path = Path(ctx["cache"]) / "onnx" / "manager_step.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg = model.config
        B = 2
        nl = cfg.n_layers
        ex = (torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long), torch.zeros(48), *(
            torch.zeros(B, cfg.n_heads, cfg.context, cfg.d_model // cfg.n_heads) for _ in range(2 * nl)))
        batch, span = torch.export.Dim("batch", max=4096), torch.export.Dim("span", min=2, max=cfg.context)
        tmp = path.with_suffix(".tmp.onnx")
        torch.onnx.export(FunctionalStep(model, spanned=True).eval(), ex, str(tmp), dynamo=True, external_data=False,
                          input_names=["tok", "pos", "span", *kv_names(nl)], output_names=["hidden", "knew", "vnew"],
                          dynamic_shapes=({0: batch}, {0: batch}, ({0: span}, *({0: batch} for _ in range(2 * nl)))),
                          verbose=False)
        os.replace(tmp, path)
    return path


def ort_session(model, ctx):
    if "ort" not in ctx:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        ctx["ort"] = ort.InferenceSession(str(onnx_path(model, ctx)), so, providers=["CPUExecutionProvider"])
    return ctx["ort"]


def make_ort(model, B, caches, ctx):
    sess = ort_session(model, ctx)
    feed = dict(zip(kv_names(model.config.n_layers), (t.numpy() for t in caches.k + caches.v)))
    spans = np.zeros(model.config.context, np.float32)
    L = model.config.context

    def step(tok, pos):
        h, kn, vn = sess.run(None, {"tok": tok.numpy(), "pos": pos.numpy(), "span": spans[:span(pos, L)], **feed})
        caches.write(pos, torch.from_numpy(kn), torch.from_numpy(vn))
        return torch.from_numpy(h)
    return step


def make_ort_io(model, B, caches, ctx):
    sess = ort_session(model, ctx)
    cfg = model.config
    nl, nh, hd = cfg.n_layers, cfg.n_heads, cfg.d_model // cfg.n_heads
    tok_b, pos_b = torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
    h = torch.empty(B, cfg.d_model)
    spans = torch.zeros(cfg.context)
    kn, vn = torch.empty(nl, B, nh, hd), torch.empty(nl, B, nh, hd)
    io = sess.io_binding()
    for name, t in zip(["tok", "pos", *kv_names(nl)], [tok_b, pos_b, *caches.k, *caches.v]):
        io.bind_input(name, "cpu", 0, np.int64 if t.dtype == torch.long else np.float32, list(t.shape),
                      t.data_ptr())
    for name, t in (("hidden", h), ("knew", kn), ("vnew", vn)):
        io.bind_output(name, "cpu", 0, np.float32, list(t.shape), t.data_ptr())

    def step(tok, pos):
        tok_b.copy_(tok)
        pos_b.copy_(pos)
        io.bind_input("span", "cpu", 0, np.float32, [span(pos, cfg.context)], spans.data_ptr())
        sess.run_with_iobinding(io)
        caches.write(pos, kn, vn)
        return h.clone()
    return step


# torch.compile(mode="max-autotune-no-cudagraphs")'s options, with the C++ wrapper and frozen
# weights; "inductor-cpp" lets the matrix products choose only among inductor's own C++ GEMM
# template (no MKL), so a batch of 1 and one of 32 cannot take different libraries
# (cpp_wrapper and freezing are set in the global config: as compile options, freezing is not
# applied and the weights stay graph inputs)
INDUCTOR = {"max_autotune": True, "coordinate_descent_tuning": True, "triton.cudagraphs": False}
INDUCTOR_CPP = dict(INDUCTOR, max_autotune_gemm_backends="CPP")


def make_inductor(model, B, caches, ctx, name="inductor", options=INDUCTOR):
    if name not in ctx:
        import torch._inductor.config as ic
        ic.cpp_wrapper = ic.freezing = True
        torch._dynamo.config.cache_size_limit = 64
        ctx[name] = torch.compile(FunctionalStep(model).eval(), options=options, dynamic=False, fullgraph=True)
    fn = ctx[name]

    def step(tok, pos):
        h, kn, vn = fn(tok, pos, *caches.k, *caches.v)
        caches.write(pos, kn, vn)
        return h
    return step


def make_inductor_cpp(model, B, caches, ctx):
    return make_inductor(model, B, caches, ctx, "inductor-cpp", INDUCTOR_CPP)


MAKERS = {"eager": make_eager, "c": make_c, "numba": make_numba, "ort": make_ort, "ort-io": make_ort_io,
          "inductor": make_inductor, "inductor-cpp": make_inductor_cpp}


# ---- measurements ----------------------------------------------------------------------------

def timing_positions(B: int, context: int = 256) -> torch.Tensor:
    """Rows at positions 100 .. 100 + B - 1 (past a third of the shipped context, each its
    own), lower for a shorter context."""
    first = max(0, min(100, context - B))
    return torch.arange(first, first + B)


def filled(cfg, B: int) -> Caches:
    c = Caches(cfg, B)
    g = torch.Generator().manual_seed(1)
    c.K.copy_(torch.randn(c.K.shape, generator=g) * 0.5)
    c.V.copy_(torch.randn(c.V.shape, generator=g) * 0.5)
    return c


def trajectory(make, model, tokens: torch.Tensor, offsets: torch.Tensor, ctx) -> torch.Tensor:
    """Hidden states (steps, B, C) of rows fed tokens (steps, B) at positions offsets + t,
    from empty caches."""
    steps, B = tokens.shape
    step = make(model, B, Caches(model.config, B), ctx)
    out = []
    for t in range(steps):
        out.append(step(tokens[t].contiguous(), (offsets + t).contiguous()).clone())
    return torch.stack(out)


def exactness(names, model, steps: int, ctx, reference=None) -> dict:
    cfg = model.config
    B = 32
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (steps, B), generator=g)
    offsets = torch.arange(B)  # row b at positions b .. b + steps - 1
    if offsets[-1] + steps > cfg.context:
        raise SystemExit(f"--steps {steps}: rows would run past the context of {cfg.context}")
    ref = reference if reference is not None else trajectory(make_eager, model, tokens, offsets, ctx)
    got = {}
    for name in names:
        h = ref if name == "eager" else trajectory(MAKERS[name], model, tokens, offsets, ctx)
        alone = all(torch.equal(trajectory(MAKERS[name], model, tokens[:, r:r + 1], offsets[r:r + 1], ctx)[:, 0],
                                h[:, r]) for r in (0, B - 1))
        got[name] = {"max_abs_vs_eager": float((h - ref).abs().max()), "batch_invariant": alone,
                     "hidden": h}
    c = got.get("c")
    for name, d in got.items():
        d["bitwise_c"] = None if c is None else bool(torch.equal(d["hidden"], c["hidden"]))
    return got


def first_use(name: str, cache: Path, model_dir) -> dict:
    """Build + first steps at batch 1 and 32 in fresh processes: empty cache, then cached."""
    out = {}
    cache = cache / name  # each candidate's own: ort-io's first use exports its own graph
    env = dict(os.environ, **cache_env(cache))
    for label in ("cold", "cached"):
        cmd = [sys.executable, __file__, "--probe", name, "--cache", str(cache)]
        if model_dir:
            cmd += ["--model", model_dir]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        if done.returncode != 0 or not line.startswith("{"):
            out[label] = None
            out["error"] = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            continue
        got = json.loads(line)
        out[label] = got["first_use_s"]
        out["import_s"] = got["import_s"]
    return out


def cache_env(cache: Path) -> dict:
    return {"NUMBA_CACHE_DIR": str(cache / "numba"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
            "FRACTAL_FLOOD_CACHE": str(cache / "c")}


def probe(name: str, args) -> None:
    """One process's first use of one candidate; prints one JSON line."""
    t0 = time.perf_counter()
    for mod in NEEDS.get(name, ()) + (("torch._inductor.config",) if name.startswith("inductor") else ()):
        importlib.import_module(mod)
    import_s = time.perf_counter() - t0
    model = load(args.model).manager
    ctx = {"cache": args.cache}
    caches = {B: filled(model.config, B) for B in BATCHES}
    t0 = time.perf_counter()
    for B in BATCHES:
        step = MAKERS[name](model, B, caches[B], ctx)
        step(torch.zeros(B, dtype=torch.long), timing_positions(B, model.config.context))
    print(json.dumps({"first_use_s": time.perf_counter() - t0, "import_s": import_s}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: the shipped model); its manager is measured")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=200, help="steps of the exactness run")
    ap.add_argument("--reps", default="200,20", help="steps timed per round at batch 1, batch 32")
    ap.add_argument("--no-first-use", action="store_true", help="skip the fresh-process compile probes")
    ap.add_argument("--cache", help="cache folder for every candidate's build (default: a new temporary one)")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)  # inference only (and inductor's freezing needs it)
    if args.probe:
        args.cache = Path(args.cache)
        probe(args.probe, args)
        return
    cache = Path(args.cache or tempfile.mkdtemp(prefix="step_candidates-"))
    # this process loads what the probes built (inductor-cpp: inductor's folder, so it compiles)
    os.environ.update({key: cache_env(cache / name)[key] for name, key in (
        ("c", "FRACTAL_FLOOD_CACHE"), ("numba", "NUMBA_CACHE_DIR"), ("inductor", "TORCHINDUCTOR_CACHE_DIR"))})
    names = []
    for name in args.candidates.split(","):
        if name not in MAKERS:
            ap.error(f"unknown candidate {name!r} (choose from {', '.join(CANDIDATES)})")
        if not installed(name):
            print(f"{name}: not installed ({', '.join(NEEDS[name])}); skipped")
            continue
        names.append(name)
    print(f"Manager decode step candidates on {describe(torch.device('cpu'))}, float32, 1 thread, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    for n in names:
        if n in DISTS:
            print(f"  {n}: " + ", ".join(f"{d} {importlib.metadata.version(d)}" for d in DISTS[n][0] + DISTS[n][1]))
    first = {}
    if not args.no_first_use:
        for n in names:
            if n != "eager":
                first[n] = first_use(n, cache, args.model)
                print(f"first use {n}: {first[n]}", flush=True)
    model = load(args.model).manager
    cfg = model.config
    print(f"manager: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, context {cfg.context}")
    ctx = {"cache": cache / "ort"}
    exact = exactness(names, model, args.steps, ctx)
    for n in names:
        e = exact[n]
        print(f"exactness {n}: max |h - eager| {e['max_abs_vs_eager']:.3g}, batch-invariant "
              f"{e['batch_invariant']}, bitwise = c {e['bitwise_c']}", flush=True)

    reps = dict(zip(BATCHES, map(int, args.reps.split(","))))
    steps, toks = {}, {}
    for B in BATCHES:
        toks[B] = (torch.randint(0, cfg.vocab_size, (B,), generator=torch.Generator().manual_seed(2)),
                   timing_positions(B, cfg.context))
        for n in names:
            steps[(n, B)] = MAKERS[n](model, B, filled(cfg, B), ctx)
            for _ in range(3):
                steps[(n, B)](*toks[B])
    times = {key: [] for key in steps}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        line = []
        for B in BATCHES:
            for n in order:
                step = steps[(n, B)]
                t0 = time.perf_counter()
                for _ in range(reps[B]):
                    step(*toks[B])
                times[(n, B)].append((time.perf_counter() - t0) / reps[B] * 1e6)
            line.append(f"B={B} " + " / ".join(f"{times[(n, B)][-1]:,.0f}" for n in names))
        print(f"round {r + 1:2d} us/step ({' '.join(names)}): " + "; ".join(line), flush=True)

    print()
    print(f"| candidate | step B=1 (us) | step B=32 (us) | / c at B=1 | / c at B=32 | first use, empty cache (s) "
          f"| first use, cached (s) | import (s) | extra install (MiB: run + build) | max abs vs eager "
          f"({args.steps} steps) | batch-invariant | bitwise = c |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for n in names:
        med = {B: statistics.median(times[(n, B)]) for B in BATCHES}
        rel = {}
        for B in BATCHES:
            if "c" in names:
                rs = [a / b for a, b in zip(times[(n, B)], times[("c", B)])]
                rel[B] = f"{statistics.median(rs):.2f}"
            else:
                rel[B] = "-"
        f = first.get(n, {})

        def s(v):
            return "-" if v is None else f"{v:.2f}"
        run_mib, build_mib = (dist_mib(DISTS[n][0]), dist_mib(DISTS[n][1])) if n in DISTS else (0.0, 0.0)
        e = exact[n]
        print(f"| {n} | {med[1]:,.0f} | {med[32]:,.0f} | {rel[1]} | {rel[32]} | {s(f.get('cold'))} | "
              f"{s(f.get('cached'))} | {s(f.get('import_s'))} | {run_mib:.0f} + {build_mib:.0f} | "
              f"{e['max_abs_vs_eager']:.2g} | {'yes' if e['batch_invariant'] else 'NO'} | "
              f"{'-' if e['bitwise_c'] is None else ('yes' if e['bitwise_c'] else 'no')} |")
    for B in BATCHES:
        if "c" in names:
            for n in names:
                if n != "c":
                    print(f"B={B} {n} / c: {quartiles([a / b for a, b in zip(times[(n, B)], times[('c', B)])])}")
    print(f"cache folder: {cache}")


if __name__ == "__main__":
    main()
