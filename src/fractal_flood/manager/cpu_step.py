"""The decode step compiled for the CPU: every layer of one step, and the draw, in one C call.

The eager step (``CausalLM.hidden_cached``, the slot cache's forward) runs ~80 PyTorch
operators a step, each paying its dispatch; at batch 1 on a CPU that, not the arithmetic,
is most of the step. ``CpuStep.hidden`` runs the whole body (embeddings, every layer, the
final layer norm) as one call into ``cpu_step.c``, built on first use (``native.build``),
writing each row's key and value into the same cache tensors the eager path uses, so the
two can take turns. ``CpuStep.step`` runs the body,
then the output layer and each row's draw (``cpu_draw.c``: the class-factored head or one
softmax, the counter-based uniform, the inversion; temperature > 0 and greedy rows), in the
same call: one call a step. Rows that ask for top-k or top-p keep the Python draw
(``CausalLM.draw`` over the step's hidden states: its sort stays in PyTorch).

Exactness: the eager step is the reference. The compiled one uses the same linear layers
bit for bit (``rowwise_linear.c``), and its own layer norm, attention and GELU, which sum
in another order and take the exponential from a polynomial: hidden states agree with the
eager step's to about 1e-6 (tests: within 1e-5 over hundreds of steps), so a draw that
falls within that of a tie can go the other way. The C draw repeats the Python draw's
operations (the same linear kernel, PyTorch's softmax kernel as this CPU runs it, a running
sum in double as PyTorch's CPU cumsum, the same uniform and inversion), so from the same
hidden states it draws the Python draw's ids bit for bit on x86 CPUs (``softmax_kernel``;
tested); elsewhere its probabilities agree to the last bits, and only a target that close
to a slice's edge can land on the neighbour. Greedy rows take the first highest score, as
``argmax``. Each row is computed alone, so a row's result is the same in any batch, bit for
bit.

A stream (``ARStream``) hands its steps to C up to each window slide (``steps``: one call
for up to a context of tokens, the loop, the window's bookkeeping and the step counters in
C); the engine's slot cache calls ``step`` once a step (its rows join and leave between
steps).

``FRACTAL_FLOOD_CPU_STEP`` picks the path: ``native`` (the default: body and draw in C, a
stream's steps looped in C), ``step`` (one C call a step, the loop in Python: the previous
default, for comparison), ``body`` (the body in C, the draw in Python) or ``eager`` (the
reference: PyTorch layers, the Python draw); without a C compiler it is ``eager``.

``FRACTAL_FLOOD_CPU_WEIGHTS`` picks how the layers' matrices are stored (``models/weight_formats.py``):
``bf16`` by default (the upper half of each float32; the shipped models' held-out bits per
character within 0.0001 of float32's), ``int8`` (one scale per output channel; within
0.0002), ``fp32`` or ``w8a8``. The step over int8 or
bf16 matrices is the float32 step over the dequantised matrices, bit for bit, so every
statement above holds of it against a model holding those; against the float32 model itself
(the eager step, the references) only ``fp32`` is held to the tolerances above (the test
suite runs ``fp32``: tests/conftest.py).

``w8a8`` (``models/w8a8_linear.py``: int8 activations too, the sums in integers, VNNI
instructions where the CPU has them) writes ~1.4x int8's steps and is within 0.0004 bits/char of
float32 (2026-12-07), but not the default: its products quantise their inputs, so where the
step's layer norm, attention or GELU differ from PyTorch's in the last bits (above) an
activation can round to the neighbouring integer, and its streams part from the eager model
of the format's at such a near-tie after tens to hundreds of steps (int8's, tested, do not
over 512). Its rows stay batch-invariant (integer sums are exact).

Prefills (a prompt, a window slide) run in the same C code (``CpuStep.prefill``): the
prompt's positions as rows of one call, each writing its key and value before it attends,
so a prefill writes the bits of its steps one position at a time, in a stream's row and in a
slot's row alike (tested), in the stream's weight format.
"""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path
from typing import Optional, Sequence

import torch

from .. import native
from ..errors import SettingError
from ..models.causal_lm import CausalLM
from ..models import rowwise_linear, weight_formats
from ..models.rowwise_linear import SOURCE as LINEAR_SOURCE
from ..models.w8a8_linear import SOURCE as W8A8_SOURCE

SOURCE = Path(__file__).with_name("cpu_step.c")
DRAW_SOURCE = Path(__file__).with_name("cpu_draw.c")
MATH_HEADER = Path(__file__).parents[1] / "models" / "cpu_math.h"  # cpu_step.c includes it
MODES = ("native", "step", "body", "eager")

_library: Optional[ctypes.CDLL] = None


def library() -> Optional[ctypes.CDLL]:
    global _library
    if _library is None:
        lib = native.build("cpu_step", [SOURCE, DRAW_SOURCE, LINEAR_SOURCE, W8A8_SOURCE], headers=[MATH_HEADER])
        if lib is not None:
            p, n = ctypes.c_void_p, ctypes.c_int64
            lib.decode_step.argtypes = [p, n, n, p, p, n, n, n, n, n, ctypes.c_float, p]
            lib.decode_step.restype = ctypes.c_int
            lib.decode_prefill.argtypes = [p, n, n, p, n, n, n, n, n, ctypes.c_float, p]
            lib.decode_prefill.restype = ctypes.c_int
            lib.decode_and_draw.argtypes = [p, n, n, p, p, n, n, n, n, n, ctypes.c_float, p, p, p, p, p, p]
            lib.decode_and_draw.restype = ctypes.c_int
            lib.decode_draw_steps.argtypes = [p, n, n, p, n, n, n, n, n, n, ctypes.c_float, p, p, p, p, p,
                                              n, p, n, p, n]
            lib.decode_draw_steps.restype = ctypes.c_int
            lib.decode_draw_slots.argtypes = [p, n, n, p, p, n, n, n, n, n, ctypes.c_float, p, p, p, p, p,
                                              p, n, n, p, n]
            lib.decode_draw_slots.restype = ctypes.c_int
            lib.exp_both.argtypes = [p, n, p, p]
            lib.exp_both.restype = None
            lib.attention_scores_both.argtypes = [p, p, n, n, ctypes.c_float, p, p]
            lib.attention_scores_both.restype = None
            lib.draw_rows.argtypes = [p, n, n, n, n, p, p, n, n, p, p, p, p]
            lib.draw_rows.restype = ctypes.c_int
            lib.softmax_rows.argtypes = [p, n, n, p, n, n, p, p]
            lib.softmax_rows.restype = None
            lib.row_uniforms.argtypes = [p, p, n, p]
            lib.row_uniforms.restype = None
            _library = lib
    return _library


def softmax_kernel() -> tuple[int, int]:
    """(lanes, simd) of the softmax PyTorch runs on this CPU (``cpu_draw.c``'s
    ``softmax_cdf`` computes it the same way): AVX-512 16 lanes and AVX2 8, each with SLEEF's
    exp and a halving fold; the generic kernel 8 lanes, libm's exp, a fold in lane order.
    Other CPUs (ARM, POWER, s390x) get (16, 1): the same probabilities to the last bits only."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return (16, 1)
    cap = torch.backends.cpu.get_cpu_capability()
    return {"AVX512": (16, 1), "AVX2": (8, 1), "DEFAULT": (8, 0)}.get(cap, (16, 1))


def mode() -> str:
    """``FRACTAL_FLOOD_CPU_STEP`` (default ``native``): ``native``, ``step``, ``body`` or ``eager``."""
    asked = os.environ.get("FRACTAL_FLOOD_CPU_STEP", "native")
    if asked not in MODES:
        raise SettingError(f"FRACTAL_FLOOD_CPU_STEP={asked!r}: choose from {', '.join(MODES)}")
    return asked


WEIGHT_CODES = {"fp32": 0, "bf16": 1, "int8": 2, "w8a8": 3}  # cpu_step.c's wfmt
# the fastest format whose held-out bits per character stay within 0.01 of float32's, for
# the shipped manager and AR peer, among those whose compiled streams keep the eager
# stream's tokens, on the project's CPU (scripts/weight_formats.py, 2-core AMD EPYC,
# 2026-12-07: bf16 +0.0000 and +0.0001 bits/char, the manager 1.16x and end to end 1.08x
# float32's, int8 1.03x and 1.05x; on the earlier Xeon int8 led, 1.26x end to end; w8a8,
# faster, parts from its eager model at near-ties: above)
DEFAULT_WEIGHTS = "bf16"


def weights_format() -> str:
    """``FRACTAL_FLOOD_CPU_WEIGHTS`` (default ``DEFAULT_WEIGHTS``): how the compiled step
    stores each layer's matrices, ``fp32``, ``bf16``, ``int8`` or ``w8a8`` (``models/weight_formats.py``)."""
    asked = os.environ.get("FRACTAL_FLOOD_CPU_WEIGHTS", DEFAULT_WEIGHTS)
    if asked not in weight_formats.FORMATS:
        raise SettingError(f"FRACTAL_FLOOD_CPU_WEIGHTS={asked!r}: choose from {', '.join(weight_formats.FORMATS)}")
    return asked


def wanted() -> bool:
    """Whether the compiled step is asked for (``native`` or ``body``)."""
    return mode() != "eager"


def usable(model: CausalLM, device: torch.device, dtype: Optional[torch.dtype]) -> bool:
    """The compiled step runs this model here: a CPU, float32 weights and cache, asked for,
    and a C compiler built it."""
    dtype = dtype or model.wte.weight.dtype
    rowwise_linear.mode()  # an unknown FRACTAL_FLOOD_ROWWISE is one clear error whichever path runs
    return (torch.device(device).type == "cpu" and not model.training and dtype == torch.float32
            and model.wte.weight.dtype == torch.float32 and model.wte.weight.device.type == "cpu"
            and wanted() and library() is not None)


class CpuStep:
    """``hidden(tok, pos, row0)``: final hidden states (M, C) of M rows' pending tokens at
    their positions, keys and values written into cache rows row0 .. row0 + M - 1.
    ``step(...)``: the same and each row's next token, in one call.

    ``draws``: whether callers should take ``step`` (the C draw; ``FRACTAL_FLOOD_CPU_STEP``
    ``native``) or ``hidden`` and the model's Python draw (``body``). ``weights``: how the
    layers' matrices are stored (``weight_formats``; default ``FRACTAL_FLOOD_CPU_WEIGHTS``):
    the step over bf16 or int8 matrices is the float32 step over ``weight_formats.dequantized``
    ones, bit for bit."""

    def __init__(self, model: CausalLM, k_caches: Sequence[torch.Tensor], v_caches: Sequence[torch.Tensor],
                 draws: Optional[bool] = None, weights: Optional[str] = None):
        cfg = model.config
        self.lib = library()
        if self.lib is None:
            raise RuntimeError("no C compiler built the CPU decode step")
        norms = [model.ln_f] + [n for b in model.blocks for n in (b.ln_1, b.ln_2)]
        if len({n.eps for n in norms}) != 1:
            raise ValueError("the compiled step takes one layer-norm epsilon for every layer")
        for c in (*k_caches, *v_caches):
            if c.dtype != torch.float32 or not c.is_contiguous() or c.device.type != "cpu":
                raise ValueError("the compiled step needs contiguous float32 CPU caches")
        self.model, self.k, self.v = model, list(k_caches), list(v_caches)
        self.C, self.heads, self.L, self.eps = cfg.d_model, cfg.n_heads, cfg.context, float(norms[0].eps)
        self.draws = mode() in ("native", "step") if draws is None else draws
        self.weights = weight_formats.check(weights) if weights is not None else weights_format()
        self._wfmt = WEIGHT_CODES[self.weights]
        self._weights = [p for p in model.parameters()]
        self._hidden: Optional[torch.Tensor] = None  # slot_step's output buffer
        self._pack()

    def _pack(self) -> None:
        m = self.model
        keep: list = []

        def ptr(t: torch.Tensor) -> int:
            t = t.detach().contiguous()
            keep.append(t)
            return t.data_ptr()

        def matrix(w: torch.Tensor) -> tuple[int, int]:  # (weights, scales or 0) as stored
            wt, scale = weight_formats.stored(w, self.weights)
            return ptr(wt), (ptr(scale) if scale is not None else 0)

        def widened(w: torch.Tensor) -> int:  # bf16 and int8: the float32 the tiles widen to
            if self.weights not in ("bf16", "int8"):
                return 0
            return ptr(weight_formats.dequantized(w, self.weights).t())

        ptrs = [ptr(m.wte.weight), ptr(m.wpe.weight), ptr(m.ln_f.weight), ptr(m.ln_f.bias)]
        for b, kc, vc in zip(m.blocks, self.k, self.v):
            a, f = b.attn, b.mlp
            (qkv, qkv_s), (proj, proj_s) = matrix(a.c_attn.weight), matrix(a.c_proj.weight)
            (fc, fc_s), (out, out_s) = matrix(f.c_fc.weight), matrix(f.c_proj.weight)
            ptrs += [ptr(b.ln_1.weight), ptr(b.ln_1.bias), qkv, ptr(a.c_attn.bias), proj, ptr(a.c_proj.bias),
                     ptr(b.ln_2.weight), ptr(b.ln_2.bias), fc, ptr(f.c_fc.bias), out, ptr(f.c_proj.bias),
                     kc.data_ptr(), vc.data_ptr(), qkv_s, proj_s, fc_s, out_s,
                     *(widened(w) for w in (a.c_attn.weight, a.c_proj.weight, f.c_fc.weight, f.c_proj.weight))]
        if m.class_head is not None:  # the draw's operands: rowwise_linear's own copies
            K = m.class_head.weight.size(0)
            head = [K, m.lm_head.weight.size(0) // K, ptr(rowwise_linear.transposed(m.class_head.weight)),
                    ptr(rowwise_linear.transposed(m.lm_head.weight, K))]
        else:
            head = [0, m.lm_head.weight.size(0), 0, ptr(rowwise_linear.transposed(m.lm_head.weight))]
        self._keep = keep  # the transposed copies live as long as the pointers
        self._params = (ctypes.c_int64 * len(ptrs))(*ptrs)
        self._head = (ctypes.c_int64 * 6)(*head, *softmax_kernel())
        self._versions = [p._version for p in self._weights]

    def hidden(self, tok: torch.Tensor, pos: torch.Tensor, row0: int = 0) -> torch.Tensor:
        if [p._version for p in self._weights] != self._versions:
            self._pack()  # weights changed in place since (a training step, a load)
        tok = tok.to(torch.int64).contiguous()
        pos = pos.to(torch.int64).contiguous()
        M = tok.numel()
        out = torch.empty(M, self.C, dtype=torch.float32)
        if self.lib.decode_step(ctypes.addressof(self._params), len(self.k), self._wfmt, tok.data_ptr(), pos.data_ptr(),
                                M, row0, self.C, self.heads, self.L, self.eps, out.data_ptr()):
            raise MemoryError("the compiled decode step could not allocate its buffers")
        return out

    def prefill(self, tokens: torch.Tensor, row: int = 0, hidden: bool = True) -> Optional[torch.Tensor]:
        """Write ``tokens`` (T,) at positions 0 .. T-1 into cache row ``row``, each position
        attending to those before it, in one call: the step's operations position by position
        (so a prompt or a window slide prefilled in a stream's row and in a slot's row writes
        the same cache bits). Returns the (T, C) final hidden states; with ``hidden=False``
        None, and the last layer stops at its keys and values (the same cache bits, ~3/4 of
        the products: what a prompt or a slide needs, whose hidden states feed nothing)."""
        if [p._version for p in self._weights] != self._versions:
            self._pack()
        tokens = tokens.to(torch.int64).contiguous().view(-1)
        T = tokens.numel()
        if T > self.L:
            raise ValueError(f"{T} tokens pass the context ({self.L})")
        if not 0 <= row < self.k[0].size(0):
            raise ValueError(f"cache row {row} outside 0 .. {self.k[0].size(0) - 1}")
        out = torch.empty(T, self.C, dtype=torch.float32) if hidden else None
        if T and self.lib.decode_prefill(ctypes.addressof(self._params), len(self.k), self._wfmt, tokens.data_ptr(),
                                         T, row, self.C, self.heads, self.L, self.eps,
                                         out.data_ptr() if hidden else None):
            raise MemoryError("the compiled prefill could not allocate its buffers")  # (T > L: checked above)
        return out

    def step(self, tok: torch.Tensor, pos: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor,
             temperature: torch.Tensor, row0: int = 0,
             ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden`` and each row's next token, in one call: (M,) int64 ids (written into
        ``ids`` when given: M contiguous int64, which may be ``tok`` itself) and the (M, C)
        hidden states. Row m draws with its own seed, step and temperature (0: greedy, the
        first highest score); no top-k or top-p (``CausalLM.draw`` for those rows)."""
        if [p._version for p in self._weights] != self._versions:
            self._pack()
        tok = tok.to(torch.int64).contiguous()
        pos = pos.to(torch.int64).contiguous()
        seeds = seeds.to(torch.int64).contiguous()
        steps = steps.to(torch.int64).contiguous()
        temperature = temperature.to(torch.float32).contiguous()
        M = tok.numel()
        if ids is None:
            ids = torch.empty(M, dtype=torch.int64)
        elif ids.dtype != torch.int64 or ids.numel() != M or not ids.is_contiguous():
            raise ValueError("ids must be M contiguous int64 entries")
        out = torch.empty(M, self.C, dtype=torch.float32)
        if self.lib.decode_and_draw(ctypes.addressof(self._params), len(self.k), self._wfmt, tok.data_ptr(),
                                    pos.data_ptr(), M, row0, self.C, self.heads, self.L, self.eps, out.data_ptr(),
                                    ctypes.addressof(self._head), seeds.data_ptr(), steps.data_ptr(),
                                    temperature.data_ptr(), ids.data_ptr()):
            raise MemoryError("the compiled decode step could not allocate its buffers")
        return ids.view(-1), out

    def steps(self, tok: torch.Tensor, pos: int, seeds: torch.Tensor, steps: torch.Tensor,
              temperature: torch.Tensor, out: torch.Tensor, window: Optional[torch.Tensor] = None) -> None:
        """``out.size(1)`` steps of ``step`` in one call, for M rows at one shared position
        (a stream; cache rows 0 .. M - 1): step s writes each row's pending token ``tok``
        into ``window[:, pos + s]``, draws the next one into ``tok``, into ``out[:, s]``, and
        adds 1 to ``steps``. In place: ``tok`` (M,) and ``steps`` (M,) contiguous int64,
        ``out`` (M, n) int64 with unit column stride, ``window`` (M, >= pos + n) contiguous
        int64. The same tokens as n calls of ``step``, bit for bit (tested); ``pos + n``
        must not pass the context (slide between calls)."""
        M, n = tok.numel(), out.size(1)
        if pos < 0 or pos + n > self.L:
            raise ValueError(f"positions {pos} .. {pos + n - 1} pass the context ({self.L})")
        for t, name in ((tok, "tok"), (steps, "steps")):
            if t.dtype != torch.int64 or not t.is_contiguous() or t.numel() != M:
                raise ValueError(f"{name} must be M contiguous int64 entries")
        if out.dtype != torch.int64 or out.size(0) != M or out.stride(1) != 1:
            raise ValueError("out must be (M, n) int64 with unit column stride")
        if window is not None and (window.dtype != torch.int64 or not window.is_contiguous()
                                   or window.size(0) != M or window.size(1) < pos + n):
            raise ValueError("window must be (M, >= pos + n) contiguous int64")
        if n == 0:
            return
        if [p._version for p in self._weights] != self._versions:
            self._pack()
        seeds = seeds.to(torch.int64).contiguous()
        temperature = temperature.to(torch.float32).contiguous()
        hidden = torch.empty(M, self.C, dtype=torch.float32)
        if self.lib.decode_draw_steps(ctypes.addressof(self._params), len(self.k), self._wfmt, tok.data_ptr(), pos,
                                      M, 0, self.C, self.heads, self.L, self.eps, hidden.data_ptr(),
                                      ctypes.addressof(self._head), seeds.data_ptr(), steps.data_ptr(),
                                      temperature.data_ptr(), n, window.data_ptr() if window is not None else None,
                                      window.stride(0) if window is not None else 0, out.data_ptr(), out.stride(0)):
            raise MemoryError("the compiled decode step could not allocate its buffers")

    def slot_step(self, tok: torch.Tensor, pos: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor,
                  temperature: torch.Tensor, window: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """One step of M slot rows (cache rows 0 .. M-1, each at its own position) with the
        slot cache's bookkeeping in the same call: row m's pending token ``tok[m]`` goes into
        ``window[m, pos[m]]``, the drawn one into ``tok[m]`` and ``out[m]``, and ``pos[m]`` and
        ``steps[m]`` grow by 1. In place: ``tok``, ``pos``, ``steps`` (M,) contiguous int64,
        ``window`` (M, > every position) int64 with unit column stride, ``out`` (M,) int64 (a
        column of a block's tokens); ``seeds`` (M,) contiguous int64 and ``temperature`` (M,)
        contiguous float32; a position outside the context or the window is a ValueError,
        nothing written. The tokens of ``step`` and the same updates (tested).

        Returns the (M, C) hidden states in a buffer the next call reuses (copy them to keep
        them). The engine calls this once a step: besides the C call it makes no tensor
        operation, each of which would hand the interpreter lock to a server's HTTP thread and
        wait to get it back."""
        M = tok.numel()
        for t, name, dtype in ((tok, "tok", torch.int64), (pos, "pos", torch.int64), (steps, "steps", torch.int64),
                               (seeds, "seeds", torch.int64), (temperature, "temperature", torch.float32)):
            if t.dtype != dtype or not t.is_contiguous() or t.numel() != M:
                raise ValueError(f"{name} must be M contiguous {str(dtype)[6:]} entries")
        if window.dtype != torch.int64 or window.dim() != 2 or window.size(0) != M or window.stride(1) != 1:
            raise ValueError("window must be (M, n) int64 with unit column stride")
        if out.dtype != torch.int64 or out.numel() != M:
            raise ValueError("out must be M int64 entries")
        if [p._version for p in self._weights] != self._versions:
            self._pack()
        if self._hidden is None or self._hidden.size(0) < M:
            self._hidden = torch.empty(max(M, self.k[0].size(0)), self.C, dtype=torch.float32)
        hidden = self._hidden[:M]
        failed = M and self.lib.decode_draw_slots(
            ctypes.addressof(self._params), len(self.k), self._wfmt, tok.data_ptr(), pos.data_ptr(), M, 0, self.C,
            self.heads, self.L, self.eps, hidden.data_ptr(), ctypes.addressof(self._head), seeds.data_ptr(),
            steps.data_ptr(), temperature.data_ptr(), window.data_ptr(), window.stride(0), window.size(1),
            out.data_ptr(), out.stride(0) if out.dim() else 1)
        if failed == -2:
            raise ValueError(f"a position outside 0 .. {min(self.L, window.size(1)) - 1}")
        if failed:
            raise MemoryError("the compiled decode step could not allocate its buffers")
        return hidden

    def draw(self, hidden: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor,
             temperature: torch.Tensor) -> torch.Tensor:
        """The C draw alone over given (M, C) hidden states: (M,) int64 ids (what ``step``
        draws after its body; the tests hold it against ``CausalLM.draw``)."""
        if [p._version for p in self._weights] != self._versions:
            self._pack()
        hidden = hidden.to(torch.float32).contiguous()
        seeds = seeds.to(torch.int64).contiguous()
        steps = steps.to(torch.int64).contiguous()
        temperature = temperature.to(torch.float32).contiguous()
        M = hidden.size(0)
        ids = torch.empty(M, dtype=torch.int64)
        h = self._head
        if self.lib.draw_rows(hidden.data_ptr(), M, self.C, h[0], h[1], h[2] or None, h[3], h[4], h[5],
                              seeds.data_ptr(), steps.data_ptr(), temperature.data_ptr(), ids.data_ptr()):
            raise MemoryError("the compiled draw could not allocate its buffers")
        return ids


def row_uniforms(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The C draw's uniforms for (M,) seeds and steps: ``tokens.row_uniform``'s, bit for bit
    (tested)."""
    lib = library()
    if lib is None:
        raise RuntimeError("no C compiler built the CPU decode step")
    seeds = seeds.to(torch.int64).contiguous()
    steps = steps.to(torch.int64).contiguous()
    u = torch.empty(seeds.numel(), dtype=torch.float32)
    lib.row_uniforms(seeds.data_ptr(), steps.data_ptr(), seeds.numel(), u.data_ptr())
    return u


def softmax_cdf(scores: torch.Tensor, divisors: torch.Tensor, kernel: Optional[tuple] = None):
    """The C draw's softmax and running sum of (M, n) scores over (M,) divisors: (p, cdf),
    each (M, n) float32 (``kernel``: (lanes, simd), default this CPU's ``softmax_kernel``).
    PyTorch's ``(scores / divisors[:, None]).softmax(-1)`` and its ``cumsum(-1)`` bit for bit
    where the kernel is PyTorch's here (tested)."""
    lib = library()
    if lib is None:
        raise RuntimeError("no C compiler built the CPU decode step")
    lanes, simd = kernel or softmax_kernel()
    scores = scores.to(torch.float32).contiguous()
    divisors = divisors.to(torch.float32).contiguous()
    M, n = scores.shape
    p, cdf = torch.empty(M, n), torch.empty(M, n)
    lib.softmax_rows(scores.data_ptr(), M, n, divisors.data_ptr(), lanes, simd, p.data_ptr(), cdf.data_ptr())
    return p, cdf
