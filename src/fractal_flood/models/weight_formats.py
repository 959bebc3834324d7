"""Reduced-precision weights for the compiled CPU decode step: bf16, int8 or w8a8 layer matrices.

On the CPU a batch-1 decode step streams every layer's weights from memory once (the
shipped manager's four layers: 0.79M weights, 3.1 MB in float32). Stored in fewer bits they
take fewer bytes a step; each weight is widened back to float32 as the kernel reads it
(``rowwise_linear.c``'s ``rowwise_linear_bf16`` / ``_int8``), and every sum stays float32.

Formats (``FORMATS``): ``fp32`` (as trained), ``bf16`` (each weight rounded to bfloat16,
to nearest even), ``int8`` (per output channel n: scale = max |W[n, :]| / 127, q = round(W /
scale) in [-127, 127]; the weight is q x scale, rounded once to float32), ``w8a8`` (int8's
integers and scales, and each product's input quantised per row too, the sum in integers:
``w8a8_linear.py``; like CTranslate2's int8).

Which matrices: each block's four products (attention qkv and output projection, the MLP's
two). The embeddings, the layer norms, the biases and the output layer stay float32 (an
embedding row is read once a step; the class-factored head reads 64 KB of one class; the
draw then stays the Python draw's bit for bit).

``dequantized(weight, fmt)`` is the float32 matrix the kernel multiplies by, exactly, and
``dequantized_model(model, fmt)`` a copy of a model with those matrices: its held-out bits
per character are the reduced-precision step's (the compiled step over it is bit for bit
the step with the stored format, tested), measured by ``scripts/weight_formats.py``. For
``w8a8`` the copy's four products per block are ``W8A8Linear`` modules instead (the
format's products bit for bit, by tensor ops).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn

from . import rowwise_linear, w8a8_linear

FORMATS = ("fp32", "bf16", "int8", "w8a8")


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


def int8_quantised(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) -> (q (N, K) float32 integers in [-127, 127], scale (N,) float32)."""
    w = weight.detach().float()
    scale = int8_scale(w)
    return torch.round(w / scale[:, None]).clamp(-127, 127), scale


def stored(weight: torch.Tensor, fmt: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(N, K) float32 weight -> what the kernel reads: the transpose (K, N), contiguous, as
    float32, bfloat16 or int8, and for int8 the (N,) float32 scales (else None); for w8a8
    ``w8a8_linear.pack``'s layout and ``w8a8_linear.scales``."""
    w = weight.detach().float()
    if check(fmt) == "fp32":
        return w.t().contiguous(), None
    if fmt == "bf16":
        return w.to(torch.bfloat16).t().contiguous(), None
    q, scale = int8_quantised(w)
    if fmt == "w8a8":
        return w8a8_linear.pack(q), w8a8_linear.scales(q, scale)
    return q.to(torch.int8).t().contiguous(), scale


def dequantized(weight: torch.Tensor, fmt: str) -> torch.Tensor:
    """(N, K) float32: the weights the kernel multiplies by for ``fmt``, bit for bit (for
    w8a8 int8's: its kernel multiplies the integers and scales the sums)."""
    wt, scale = stored(weight, "int8" if fmt == "w8a8" else fmt)
    w = wt.t().float()
    return w * scale[:, None] if scale is not None else w.contiguous()


@torch.no_grad()
def dequantized_model(model, fmt: str):
    """A copy of ``model`` whose layer matrices are ``dequantized(..., fmt)`` (for w8a8: whose
    four products per block are ``W8A8Linear``s)."""
    out = copy.deepcopy(model)
    if check(fmt) == "w8a8":
        for b in out.blocks:
            b.attn.c_attn, b.attn.c_proj = W8A8Linear.of(b.attn.c_attn), W8A8Linear.of(b.attn.c_proj)
            b.mlp.c_fc, b.mlp.c_proj = W8A8Linear.of(b.mlp.c_fc), W8A8Linear.of(b.mlp.c_proj)
        return out
    for w in layer_matrices(out):
        w.copy_(dequantized(w, fmt))
    return out


def w8a8_product(lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``lin(x)`` in the w8a8 format: the C kernel over the weight's packed int8 form (kept
    while the weight is alive and unchanged) for CPU float32 inference, else
    ``w8a8_linear.reference``; the same bits either way (tested)."""
    w = lin.weight
    fast = (x.device.type == "cpu" and x.dtype == torch.float32 and w8a8_linear.library() is not None
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)))
    if not fast:
        q_w, s_w = int8_quantised(w)
        return w8a8_linear.reference(x, q_w, s_w, lin.bias)
    packed, sc = rowwise_linear.per_weight(w, "w8a8", lambda: stored(w, "w8a8"))
    lead, K = x.shape[:-1], x.size(-1)
    y = w8a8_linear.linear(x.reshape(-1, K), packed, sc, w.size(0), lin.bias)
    return y.view(*lead, -1)


class W8A8Linear(nn.Linear):
    """An ``nn.Linear`` computing the w8a8 format's product (``w8a8_product``) over its
    weight's int8 form (the weight itself stays float32, so the compiled step can store it
    again): the eager model of the format."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return w8a8_product(self, x)

    @classmethod
    def of(cls, lin: nn.Linear) -> "W8A8Linear":
        out = cls(lin.in_features, lin.out_features, bias=lin.bias is not None)
        out.load_state_dict(lin.state_dict())
        return out
