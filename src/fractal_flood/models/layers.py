"""Transformer building blocks shared by the renderer and the causal models.

GPT-2 shaped (pre-LayerNorm, fused qkv ``c_attn``, GELU-tanh MLP ``c_fc``/``c_proj``) so a
causal model maps one-to-one onto Hugging Face's ``GPT2LMHeadModel`` for the bench.
Attention goes through ``scaled_dot_product_attention`` (flash / memory-efficient kernels).
Dropout (attention weights and both residual branches, as GPT-2) acts only in training mode
and only when its rate is above 0, so an eval-mode or rate-0 model runs the same kernels as
one built without it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import rowwise_linear
from . import weight_formats
from .weight_formats import W8A8Linear


class KVCache(nn.Module):
    """Preallocated keys and values, written in place (module buffers, so a captured CUDA
    graph sees the same memory every step)."""

    def __init__(self, batch: int, heads: int, length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None):
        super().__init__()
        shape = (batch, heads, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        # input_pos: (T,) positions being written; k, v: (B, nh, T, hd)
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor,
               input_pos: torch.Tensor) -> torch.Tensor:
        """The cache's part of ``Block.decode``: write k, v (B, nh, T, hd) at the positions
        ``input_pos`` (T,), shared by every row, then q (B, nh, T, hd) attends over the whole
        cache through ``attn_mask`` (True where a query may see a slot). Fixed shapes, no host
        reads: a step over it can be captured in a CUDA graph."""
        keys, values = self.update(input_pos, k, v)
        return cache_attention(q, keys, values, attn_mask)


def cache_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                    attn_mask: torch.Tensor) -> torch.Tensor:
    """q (B, nh, T, hd) over a whole cache (B, nh, L, hd), ``attn_mask`` (.., T, L) True where
    a query may see a slot: ``KVCache.attend``'s attention, and a slot row's prefill's
    (``manager/slots.py``), so the two leave the same cache bit for bit."""
    return F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=attn_mask)


def layer_norm(m: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``m(x)`` without ``nn.Module.__call__``: the same kernel, ~2 us less per call on a CPU,
    where a batch-1 decode step makes ~40 such calls (the decode paths use these)."""
    return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


def linear(m: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``m(x)`` without ``nn.Module.__call__`` (see ``layer_norm``), each row computed alone
    on a CPU (``rowwise_linear``): a decode step's rows do not depend on the batch. A
    ``W8A8Linear`` (the w8a8 format's eager model) computes the w8a8 product."""
    if isinstance(m, W8A8Linear):
        return weight_formats.w8a8_product(m, x)
    return rowwise_linear.linear(x, m.weight, m.bias)


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    # a plain branch, not nn.Dropout: at p = 0 or in eval mode not even a call is added to the
    # decode step
    return F.dropout(x, p, True) if training and p > 0 else x


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.dropout = dropout
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, *, is_causal: bool = False,
                attn_mask: Optional[torch.Tensor] = None,
                cache: Optional[KVCache] = None,
                input_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hd)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(input_pos, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=is_causal and attn_mask is None)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return _dropout(self.c_proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout
        self.c_fc = nn.Linear(d_model, ratio * d_model)
        self.c_proj = nn.Linear(ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")), self.dropout, self.training)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` in eval mode, by direct calls (no dropout: decoding only)."""
        return linear(self.c_proj, F.gelu(linear(self.c_fc, x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, dropout=dropout)

    def forward(self, x: torch.Tensor, **attn_kwargs) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), **attn_kwargs)
        return x + self.mlp(self.ln_2(x))

    def decode(self, x: torch.Tensor, attn_mask: torch.Tensor, cache,
               input_pos: torch.Tensor) -> torch.Tensor:
        """One cached step of the block in eval mode: ``forward``'s ops in the same order by
        direct calls (``layer_norm``, ``linear``), bitwise the module path over a ``KVCache``
        (tested), fewer Python layers per step. Training and the reference paths keep the
        modules.

        ``cache`` is this layer's cache: anything with ``attend(q, k, v, attn_mask,
        input_pos)`` that writes this step's keys and values and returns the attention
        output (B, nh, T, hd). A ``KVCache`` holds one position for all rows; the slot cache
        (``manager/slots.py``) writes each row at its own position."""
        a = self.attn
        B, T, C = x.shape
        q, k, v = linear(a.c_attn, layer_norm(self.ln_1, x)).split(C, dim=2)
        q = q.view(B, T, a.n_heads, a.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, a.n_heads, a.head_dim).transpose(1, 2)
        v = v.view(B, T, a.n_heads, a.head_dim).transpose(1, 2)
        y = cache.attend(q, k, v, attn_mask, input_pos)
        x = x + linear(a.c_proj, y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp.decode(layer_norm(self.ln_2, x))


def init_weights(module: nn.Module, n_layers: int) -> None:
    """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers)."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / (2 * n_layers) ** 0.5 if name.endswith("c_proj.weight") else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
