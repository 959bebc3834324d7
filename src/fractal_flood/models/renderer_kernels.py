"""The renderer's inference kernels on the CPU (``renderer_kernels.c``): its bidirectional
attention and its tanh GELU in C, for a render pass without gradients on a CPU in float32.

``block_forward(block, x, valid)`` is ``Block.forward(x, attn_mask=valid mask)`` in eval mode
with those two kernels in place of PyTorch's ``scaled_dot_product_attention`` and
``gelu(approximate="tanh")``: the same function, other rounding (another summation order,
e^x by a polynomial to ~2 ulp); the linear layers and layer norms stay PyTorch's. Tested
against the module path within a stated tolerance, and the render's tokens against its.
``FRACTAL_FLOOD_RENDER_KERNELS=0`` (or no C compiler) keeps the module path.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional

import torch

from .. import native

SOURCE = Path(__file__).with_name("renderer_kernels.c")
MATH_HEADER = Path(__file__).with_name("cpu_math.h")
_library: Optional[ctypes.CDLL] = None


def library() -> Optional[ctypes.CDLL]:
    global _library
    if _library is None:
        lib = native.build("renderer_kernels", [SOURCE], headers=[MATH_HEADER])
        if lib is not None:
            p, n = ctypes.c_void_p, ctypes.c_int64
            lib.renderer_attention.argtypes = [p, p, p, n, n, n, n]
            lib.renderer_attention.restype = ctypes.c_int
            lib.renderer_gelu.argtypes = [p, n]
            lib.renderer_gelu.restype = None
            _library = lib
    return _library


def _lib() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError("no C compiler built the renderer's kernels")
    return lib


def wanted(x: torch.Tensor) -> bool:
    """Whether a render pass over x takes the kernels: a CPU, float32, no gradients, asked
    for (``FRACTAL_FLOOD_RENDER_KERNELS``, default on) and built."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and os.environ.get("FRACTAL_FLOOD_RENDER_KERNELS", "1") != "0" and library() is not None)


def attention(qkv: torch.Tensor, valid: Optional[torch.Tensor], n_heads: int) -> torch.Tensor:
    """qkv (B, T, 3C) -> (B, T, C): each head's attention of every position over the valid
    ones (``valid`` (B, T) bool, or None for all)."""
    qkv = qkv.contiguous()
    B, T, C3 = qkv.shape
    C = C3 // 3
    y = torch.empty(B, T, C, dtype=torch.float32)
    v = valid.to(torch.uint8).contiguous() if valid is not None else None
    if _lib().renderer_attention(qkv.data_ptr(), v.data_ptr() if v is not None else None, y.data_ptr(),
                                   B, T, n_heads, C // n_heads):
        raise MemoryError("the renderer's attention kernel could not allocate its scratch")
    return y


def gelu_(x: torch.Tensor) -> torch.Tensor:
    """tanh GELU of a contiguous float32 x, in place; returns x."""
    if not x.is_contiguous():
        raise ValueError("gelu_ needs a contiguous tensor")
    _lib().renderer_gelu(x.data_ptr(), x.numel())
    return x


def block_forward(block, x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """``block(x, attn_mask=...)`` in eval mode with the C attention and GELU (module doc)."""
    a, m = block.attn, block.mlp
    y = attention(a.c_attn(block.ln_1(x)), valid, a.n_heads)
    x = x + a.c_proj(y)
    return x + m.c_proj(gelu_(m.c_fc(block.ln_2(x))))
