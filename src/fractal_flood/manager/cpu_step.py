"""The decode step compiled for the CPU: every layer of one step in one C call.

The eager step (``CausalLM.hidden_cached``, the slot cache's forward) runs ~80 PyTorch
operators a step, each paying its dispatch; at batch 1 on a CPU that, not the arithmetic,
is most of the step. ``CpuStep.hidden`` runs the whole body (embeddings, every layer, the
final layer norm) as one call into ``cpu_step.c``, built on first use (``native.build``),
writing each row's key and value into the same cache tensors the eager path uses, so the
two can take turns (a window slide's prefill stays eager). The output layer and the draw
stay the model's (``CausalLM.draw``: its linear layers are row-invariant too).

Exactness: the eager step is the reference. The compiled one uses the same linear layers
bit for bit (``rowwise_linear.c``), and its own layer norm, attention and GELU, which sum
in another order and take the exponential from a polynomial: hidden states agree with the
eager step's to about 1e-6 (tests: within 1e-4 over hundreds of steps), so a draw that
falls within that of a tie can go the other way. Each row is computed alone, so a row's
result is the same in any batch, bit for bit.

``FRACTAL_FLOOD_CPU_STEP=eager`` turns it off (the reference path); without a C compiler
it is off.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from .. import native
from ..errors import SettingError
from ..models.causal_lm import CausalLM
from ..models.rowwise_linear import SOURCE as LINEAR_SOURCE

SOURCE = Path(__file__).with_name("cpu_step.c")
MODES = ("native", "eager")

_library: Optional[ctypes.CDLL] = None


def library() -> Optional[ctypes.CDLL]:
    global _library
    if _library is None:
        lib = native.build("cpu_step", [SOURCE, LINEAR_SOURCE])
        if lib is not None:
            p, n = ctypes.c_void_p, ctypes.c_int64
            lib.decode_step.argtypes = [p, n, p, p, n, n, n, n, n, ctypes.c_float, p]
            lib.decode_step.restype = ctypes.c_int
            _library = lib
    return _library


def wanted() -> bool:
    """Whether the compiled step is asked for (``FRACTAL_FLOOD_CPU_STEP``, default native)."""
    asked = os.environ.get("FRACTAL_FLOOD_CPU_STEP", "native")
    if asked not in MODES:
        raise SettingError(f"FRACTAL_FLOOD_CPU_STEP={asked!r}: choose from {', '.join(MODES)}")
    return asked == "native"


def usable(model: CausalLM, device: torch.device, dtype: Optional[torch.dtype]) -> bool:
    """The compiled step runs this model here: a CPU, float32 weights and cache, asked for,
    and a C compiler built it."""
    dtype = dtype or model.wte.weight.dtype
    return (torch.device(device).type == "cpu" and not model.training and dtype == torch.float32
            and model.wte.weight.dtype == torch.float32 and model.wte.weight.device.type == "cpu"
            and wanted() and library() is not None)


class CpuStep:
    """``hidden(tok, pos, row0)``: final hidden states (M, C) of M rows' pending tokens at
    their positions, keys and values written into cache rows row0 .. row0 + M - 1."""

    def __init__(self, model: CausalLM, k_caches: Sequence[torch.Tensor], v_caches: Sequence[torch.Tensor]):
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
        self._weights = [p for p in model.parameters()]
        self._pack()

    def _pack(self) -> None:
        m = self.model
        keep: list = []

        def ptr(t: torch.Tensor) -> int:
            t = t.detach().contiguous()
            keep.append(t)
            return t.data_ptr()

        ptrs = [ptr(m.wte.weight), ptr(m.wpe.weight), ptr(m.ln_f.weight), ptr(m.ln_f.bias)]
        for b, kc, vc in zip(m.blocks, self.k, self.v):
            a, f = b.attn, b.mlp
            ptrs += [ptr(b.ln_1.weight), ptr(b.ln_1.bias), ptr(a.c_attn.weight.t()), ptr(a.c_attn.bias),
                     ptr(a.c_proj.weight.t()), ptr(a.c_proj.bias), ptr(b.ln_2.weight), ptr(b.ln_2.bias),
                     ptr(f.c_fc.weight.t()), ptr(f.c_fc.bias), ptr(f.c_proj.weight.t()), ptr(f.c_proj.bias),
                     kc.data_ptr(), vc.data_ptr()]
        self._keep = keep  # the transposed copies live as long as the pointers
        self._params = (ctypes.c_int64 * len(ptrs))(*ptrs)
        self._versions = [p._version for p in self._weights]

    def hidden(self, tok: torch.Tensor, pos: torch.Tensor, row0: int = 0) -> torch.Tensor:
        if [p._version for p in self._weights] != self._versions:
            self._pack()  # weights changed in place since (a training step, a load)
        tok = tok.to(torch.int64).contiguous()
        pos = pos.to(torch.int64).contiguous()
        M = tok.numel()
        out = torch.empty(M, self.C, dtype=torch.float32)
        if self.lib.decode_step(ctypes.addressof(self._params), len(self.k), tok.data_ptr(), pos.data_ptr(),
                                M, row0, self.C, self.heads, self.L, self.eps, out.data_ptr()):
            raise MemoryError("the compiled decode step could not allocate its buffers")
        return out
