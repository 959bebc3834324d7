"""Linear layers over int8 weights and int8 activations (the ``w8a8`` weight format), exact.

Each row of the input is quantised on the fly (per row: scale = max |x| / 127, q = round(x /
scale) to nearest even in [-127, 127]), multiplied by the int8 weights (per output channel:
``weight_formats.int8_scale``) as integers, and scaled back: y = float(sum q_x q_w) x (s_x x
s_w) + b, each float operation rounded alone (``w8a8_linear.c``'s doc). The integer sum is
exact in any order, so the C kernel (VNNI instructions where the CPU has them, integer
loops elsewhere) and ``reference`` (tensor ops; the sum in float64, exact for any K below
2^53 / 127^2) agree bit for bit, and a row is the same alone or in any batch.

What it changes against float32: the inputs of the four products of each block carry ~1/254
of their row's largest value as rounding, on top of int8's weights (held-out bits per
character in ``scripts/weight_formats.py``). CTranslate2's ``int8`` runs its products the
same way (per-row int8 activations, per-channel int8 weights).

The eager model of the format (``weight_formats.dequantized_model(m, "w8a8")``) computes its
products by ``reference`` (``weight_formats.W8A8Linear``).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Optional

import torch

from .. import native

SOURCE = Path(__file__).with_name("w8a8_linear.c")
_library: Optional[ctypes.CDLL] = None


def library() -> Optional[ctypes.CDLL]:
    """The compiled kernel (``native.build``), None where no C compiler builds it."""
    global _library
    if _library is None:
        lib = native.build("w8a8_linear", [SOURCE])
        if lib is not None:
            p, n = ctypes.c_void_p, ctypes.c_int64
            lib.w8a8_linear.argtypes = [p, p, p, p, p, n, n, n]
            lib.w8a8_linear.restype = ctypes.c_int
            lib.w8a8_vnni.argtypes = []
            lib.w8a8_vnni.restype = ctypes.c_int
            _library = lib
    return _library


def vnni() -> bool:
    """Whether the kernel runs on AVX-512 VNNI instructions here (else integer loops)."""
    lib = library()
    return bool(lib is not None and lib.w8a8_vnni())


def quantise_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) float32 -> (q (M, K) float32 integers in [-127, 127], s (M, 1) float32)."""
    peak = x.abs().amax(-1, keepdim=True)
    # tensor by tensor, so that the division is the correctly rounded one (a Python number
    # divisor may become a multiplication by its reciprocal)
    s = torch.where(peak > 0, peak / torch.full_like(peak, 127.0), torch.ones_like(peak))
    return torch.round(x / s).clamp(-127, 127), s


def reference(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (..., K) float32, q_w (N, K) integer weights, s_w (N,) float32 -> (..., N): the
    kernel's result, bit for bit, by tensor ops."""
    lead, K = x.shape[:-1], x.size(-1)
    q, s = quantise_rows(x.reshape(-1, K).float())
    acc = (q.double() @ q_w.double().t()).float()  # exact integers
    y = acc * (s * s_w.float())
    if bias is not None:
        y = y + bias.detach().float()
    return y.view(*lead, -1)


def pack(q_w: torch.Tensor) -> torch.Tensor:
    """q_w (N, K) integers -> the kernel's layout (K4 / 4, N16, 4) int8, zero-padded."""
    N, K = q_w.shape
    K4, N16 = -(-K // 4) * 4, -(-N // 16) * 16
    full = torch.zeros(N16, K4, dtype=torch.int8)
    full[:N, :K] = q_w.to(torch.int8)
    return full.view(N16, K4 // 4, 4).transpose(0, 1).contiguous()


def scales(q_w: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """The kernel's ``sc``: N16 float32 scales (1 in the padding), then N16 int32
    compensations 128 x sum_k q_w[n, k], as one float32 tensor of 2 x N16 words."""
    N = q_w.size(0)
    N16 = -(-N // 16) * 16
    out = torch.ones(2 * N16, dtype=torch.float32)
    out[:N] = s_w.float()
    comp = torch.zeros(N16, dtype=torch.int32)
    comp[:N] = (q_w.to(torch.int64).sum(1) * 128).to(torch.int32)
    out[N16:] = comp.view(torch.float32)
    return out


def linear(x: torch.Tensor, packed: torch.Tensor, sc: torch.Tensor, N: int,
           bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (M, K) by the kernel over ``pack`` / ``scales``'s operands -> (M, N)."""
    lib = library()
    if lib is None:
        raise RuntimeError("no C compiler built the w8a8 kernel")
    x = x.float().contiguous()
    M, K = x.shape
    if packed.dtype != torch.int8 or packed.size(0) * 4 < K or packed.size(1) < N:
        raise ValueError("packed weights do not fit x and N")
    y = torch.empty(M, N, dtype=torch.float32)
    b = bias.detach().float().contiguous() if bias is not None else None
    if lib.w8a8_linear(x.data_ptr(), packed.data_ptr(), sc.data_ptr(), b.data_ptr() if b is not None else None,
                       y.data_ptr(), M, K, N):
        raise MemoryError("the w8a8 kernel could not allocate its buffer")
    return y
