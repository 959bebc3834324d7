"""Linear layers whose rows do not depend on the batch: the CPU decode steps' matrix products.

A BLAS library picks its kernel and blocking by the matrix's shape, so on a CPU the same
row multiplied by the same weights can round differently in a batch of 4 and a batch of 12
(how differently, and from which row count on, depends on the CPU and the library). A
server that batches requests would then give a request another text among others than
alone whenever a draw falls near a tie. Here every row is computed by one fixed sequence
of float32 operations (``rowwise_linear.c``: bias first, then one fused multiply-add a
product in k order, ``fmaf``, correctly rounded wherever it runs; nothing reassociated), so
a row's result is the same alone or
among any number of others, by construction, on any x86 or ARM CPU.

Three ways to compute it (``FRACTAL_FLOOD_ROWWISE``):

- ``kernel`` (the default): the C file, compiled on first use (``native.build``).
  Without a C compiler it falls back to ``rows``.
- ``rows``: the plain library call, one row at a time (each row its own 1-row product):
  batch-invariant too, with BLAS's rounding, slower at large batches.
- ``blas``: one library call for the whole batch: the reference path, not batch-invariant.

Every decode path takes it: the compiled step's layers and draw, the eager step, the
prefills (a prompt, a window slide's re-encoding), the renderer's one-call draw.

``reference_linear`` computes the kernel's exact sequence of operations one element at a
time (``rowwise_linear_scalar``: no tiles, no vectors; slow): the tests hold the kernel to
it.

Only CPU float32 inference takes these paths; anything else (a GPU, another dtype, a
tensor that needs gradients) is a plain ``F.linear``.
"""

from __future__ import annotations

import ctypes
import os
import sys
import weakref
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .. import native
from ..errors import SettingError

SOURCE = Path(__file__).with_name("rowwise_linear.c")
MODES = ("kernel", "rows", "blas")
_library: Optional[ctypes.CDLL] = None

_per_weight: dict = {}  # (id(weight), kind) -> (weakref, version, data_ptr, the copy)


def mode() -> str:
    """How rows are computed now: ``kernel``, ``rows`` (no compiler, or asked for) or ``blas``."""
    asked = os.environ.get("FRACTAL_FLOOD_ROWWISE", "kernel")
    if asked not in MODES:
        raise SettingError(f"FRACTAL_FLOOD_ROWWISE={asked!r}: choose from {', '.join(MODES)}")
    if asked == "kernel" and library() is None:
        return "rows"
    return asked


def library() -> Optional[ctypes.CDLL]:
    """The compiled kernel (``native.build``), None where no C compiler builds it."""
    global _library
    if _library is None:
        lib = native.build("rowwise_linear", [SOURCE])
        if lib is not None:
            _library = _setup(lib)
    return _library


def _setup(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, n = ctypes.c_void_p, ctypes.c_int64
    lib.rowwise_linear.argtypes = [p, p, p, p, n, n, n]
    lib.rowwise_linear.restype = None
    lib.rowwise_gathered.argtypes = [p, p, p, p, n, n, n]
    lib.rowwise_gathered.restype = None
    lib.rowwise_linear_scalar.argtypes = [p, p, p, p, n, n, n]
    lib.rowwise_linear_scalar.restype = None
    for name in ("rowwise_linear_bf16", "rowwise_linear_int8"):
        getattr(lib, name).argtypes = [p, p, p, p, p, n, n, n]
        getattr(lib, name).restype = None
    return lib


def transposed(weight: torch.Tensor, blocks: int = 1) -> torch.Tensor:
    """weight (N, K) -> its transpose (K, N), or with ``blocks`` = b the transposes of its b
    consecutive row blocks (b, K, N / b): the kernel's operand, one copy per weight kept while
    the weight is alive and unchanged (the compiled CPU step's draw reads the same copy)."""
    def make():
        w = weight.detach()
        wt = w.view(blocks, w.size(0) // blocks, w.size(1)).transpose(1, 2).contiguous()
        return wt[0] if blocks == 1 else wt

    return per_weight(weight, ("transposed", blocks), make)


def per_weight(weight: torch.Tensor, kind, make):
    """``make()``'s copy of ``weight`` in another form (``kind`` names it), made once and kept
    while the weight is alive and unchanged (the same object, version and storage)."""
    key = (id(weight), kind)
    hit = _per_weight.get(key)
    if (hit is not None and hit[0]() is weight and hit[1] == weight._version
            and hit[2] == weight.data_ptr()):
        return hit[3]
    value = make()
    ref = weakref.ref(weight, lambda _, key=key: _per_weight.pop(key, None))
    _per_weight[key] = (ref, weight._version, weight.data_ptr(), value)
    return value


def _eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with each row computed alone (see the module's doc)."""
    if not _eligible(x, weight):
        return F.linear(x, weight, bias)
    how = mode()
    if how == "blas":
        return F.linear(x, weight, bias)
    lead, K = x.shape[:-1], x.size(-1)
    rows = x.reshape(-1, K)
    if how == "rows":
        out = torch.cat([F.linear(rows[i:i + 1].clone(), weight, bias) for i in range(rows.size(0))])
        return out.view(*lead, -1)
    rows = rows.contiguous()
    wt = transposed(weight)
    M, N = rows.size(0), weight.size(0)
    y = torch.empty(M, N, dtype=torch.float32)
    b = bias.detach().contiguous() if bias is not None else None
    _library.rowwise_linear(rows.data_ptr(), wt.data_ptr(), b.data_ptr() if b is not None else None,
                            y.data_ptr(), M, K, N)
    return y.view(*lead, N)


def gathered(x: torch.Tensor, weight: torch.Tensor, blocks: int, index: torch.Tensor) -> torch.Tensor:
    """x (M, K), weight (V, K) cut into ``blocks`` blocks of S = V / blocks consecutive rows,
    index (M,) -> (M, S): row m times the transpose of its own block ``index[m]``."""
    K = x.size(-1)
    S = weight.size(0) // blocks
    how = mode() if _eligible(x, weight) else "blas"
    if how == "blas":
        block = weight.view(blocks, S, K).index_select(0, index)  # (M, S, K)
        return torch.bmm(block, x[:, :, None])[:, :, 0]
    if how == "rows":
        view = weight.view(blocks, S, K)
        return torch.cat([F.linear(x[i:i + 1].clone(), view[int(index[i])]) for i in range(x.size(0))])
    x = x.contiguous()
    index = index.to(torch.int64).contiguous()
    wt = transposed(weight, blocks)  # (blocks, K, S)
    y = torch.empty(x.size(0), S, dtype=torch.float32)
    _library.rowwise_gathered(x.data_ptr(), wt.data_ptr(), index.data_ptr(), y.data_ptr(),
                              x.size(0), K, S)
    return y


def stored_linear(x: torch.Tensor, wt: torch.Tensor, scale: Optional[torch.Tensor] = None,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (M, K) times weights kept transposed (K, N) in bfloat16, or in int8 with (N,)
    float32 scales (``weight_formats.stored``): the C kernel, each weight widened to float32
    as it is read. Bit for bit ``linear`` over ``weight_formats.dequantized`` (tested)."""
    if library() is None:
        raise RuntimeError("no C compiler built the rowwise kernel")
    kernel = {torch.bfloat16: _library.rowwise_linear_bf16, torch.int8: _library.rowwise_linear_int8}[wt.dtype]
    if wt.dtype == torch.int8 and scale is None:
        raise ValueError("int8 weights need their scales")
    x = x.float().contiguous()
    wt = wt.contiguous()
    M, (K, N) = x.size(0), wt.shape
    y = torch.empty(M, N, dtype=torch.float32)
    b = bias.detach().float().contiguous() if bias is not None else None
    sc = scale.float().contiguous() if scale is not None else None
    kernel(x.data_ptr(), wt.data_ptr(), sc.data_ptr() if sc is not None else None,
           b.data_ptr() if b is not None else None, y.data_ptr(), M, K, N)
    return y


def reference_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The kernel's sequence of operations one element at a time (``rowwise_linear_scalar``:
    bias (or 0), then ``fmaf(x[m, k], w[n, k], acc)`` for k in order). Bit for bit the
    kernel; needs the compiled library."""
    lib = library()
    if lib is None:
        raise RuntimeError("no C compiler built the row-invariant kernel")
    x2 = x.reshape(-1, x.size(-1)).float().contiguous()
    wt = weight.detach().float().t().contiguous()
    b = bias.detach().float().contiguous() if bias is not None else None
    y = torch.empty(x2.size(0), weight.size(0), dtype=torch.float32)
    lib.rowwise_linear_scalar(x2.data_ptr(), wt.data_ptr(), b.data_ptr() if b is not None else None, y.data_ptr(),
                              x2.size(0), x2.size(1), weight.size(0))
    return y.view(*x.shape[:-1], -1)


if __name__ == "__main__":  # python -m fractal_flood.models.rowwise_linear: build it now, say where
    lib = library()
    print(f"rowwise linear: mode {mode()}" + (f", {lib._name}" if lib is not None else
                                             ", no C compiler built the kernel"))
    sys.exit(0)
