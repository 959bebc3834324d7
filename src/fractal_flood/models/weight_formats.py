"""Reduced-precision weights for the compiled CPU decode step: bf16 or int8 layer matrices.

On the CPU a batch-1 decode step streams every layer's weights from memory once (the
shipped manager's four layers: 0.79M weights, 3.1 MB in float32). Stored in fewer bits they
take fewer bytes a step; each weight is widened back to float32 as the kernel reads it
(``rowwise_linear.c``'s ``rowwise_linear_bf16`` / ``_int8``), and every sum stays float32.

Formats (``FORMATS``): ``fp32`` (as trained), ``bf16`` (each weight rounded to bfloat16,
to nearest even), ``int8`` (per output channel n: scale = max |W[n, :]| / 127, q = round(W /
scale) in [-127, 127]; the weight is q x scale, rounded once to float32).

Which matrices: each block's four products (attention qkv and output projection, the MLP's
two). The embeddings, the layer norms, the biases and the output layer stay float32 (an
embedding row is read once a step; the class-factored head reads 64 KB of one class; the
draw then stays the Python draw's bit for bit).

``dequantized(weight, fmt)`` is the float32 matrix the kernel multiplies by, exactly, and
``dequantized_model(model, fmt)`` a copy of a model with those matrices: its held-out bits
per character are the reduced-precision step's (the compiled step over it is bit for bit
the step with the stored format, tested), measured by ``scripts/weight_formats.py``.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch

FORMATS = ("fp32", "bf16", "int8")


def layer_matrices(model) -> list:
    """The matrices a reduced format stores: each block's qkv, attention output, MLP in and
    MLP out weights, (N, K) each."""
    return [w for b in model.blocks
            for w in (b.attn.c_attn.weight, b.attn.c_proj.weight, b.mlp.c_fc.weight, b.mlp.c_proj.weight)]


def check(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r} (choose from: {', '.join(FORMATS)})")
    return fmt


def int8_scale(weight: torch.Tensor) -> torch.Tensor:
    """(N, K) -> (N,) float32: max |row| / 127 (1 for an all-zero row)."""
    peak = weight.detach().float().abs().amax(1)
    return torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))


def stored(weight: torch.Tensor, fmt: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(N, K) float32 weight -> what the kernel reads: the transpose (K, N), contiguous, as
    float32, bfloat16 or int8, and for int8 the (N,) float32 scales (else None)."""
    w = weight.detach().float()
    if check(fmt) == "fp32":
        return w.t().contiguous(), None
    if fmt == "bf16":
        return w.to(torch.bfloat16).t().contiguous(), None
    scale = int8_scale(w)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.t().contiguous(), scale


def dequantized(weight: torch.Tensor, fmt: str) -> torch.Tensor:
    """(N, K) float32: the weights the kernel multiplies by for ``fmt``, bit for bit."""
    wt, scale = stored(weight, fmt)
    w = wt.t().float()
    return w * scale[:, None] if scale is not None else w.contiguous()


@torch.no_grad()
def dequantized_model(model, fmt: str):
    """A copy of ``model`` whose layer matrices are ``dequantized(..., fmt)``."""
    out = copy.deepcopy(model)
    for w in layer_matrices(out):
        w.copy_(dequantized(w, fmt))
    return out
