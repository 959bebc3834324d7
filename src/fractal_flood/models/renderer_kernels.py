"""The renderer's inference kernels on the CPU (``renderer_kernels.c``), for render passes
without gradients on a CPU in float32. ``FRACTAL_FLOOD_RENDER_KERNELS=0`` (or no C compiler)
keeps the module path, the reference every kernel is tested against.

``draw(model, level, cond, noise, lengths)``: a whole level's denoising draw at temperature
0 in one call (what ``render/canvas.py``'s packed passes compute with ``model.denoise`` and
an argmax, without a PyTorch operator or a line of Python per pass): embedding, blocks, final
layer norm, the token head's and the length head's argmax, item by item in tiles of whole
canvases, every linear layer ``rowwise_linear`` (row-invariant: an item's scores are the
same alone or in any batch, bit for bit). ``noise(...)`` is ``draws.randint``'s hash in C,
the same integers. The flood's default (K = 1, temperature 0) takes them.

``block_forward(block, x, valid)`` is ``Block.forward(x, attn_mask=valid mask)`` in eval mode
with the C attention and tanh GELU in place of PyTorch's ``scaled_dot_product_attention`` and
``gelu(approximate="tanh")``, for the passes ``draw`` does not take (energies, sampling at a
temperature); the linear layers and layer norms stay PyTorch's.

Against the module path both are the same function with other rounding (other summation
orders, e^x by a polynomial to ~2 ulp): tested within a stated tolerance, the tokens the
same, and the shipped renderer's text and fidelity the same.
"""

from __future__ import annotations

import ctypes
import os
import weakref
from pathlib import Path
from typing import Optional

import torch

from .. import native
from . import rowwise_linear

SOURCE = Path(__file__).with_name("renderer_kernels.c")
MATH_HEADER = Path(__file__).with_name("cpu_math.h")
BLOCK_FIELDS = ("ln1_w", "ln1_b", "attn_wt", "attn_b", "proj_wt", "proj_b",
                "ln2_w", "ln2_b", "fc_wt", "fc_b", "fc2_wt", "fc2_b")
HEAD_COLUMNS = 64  # the heads' columns padded to whole tiles of rowwise_linear
_library: Optional[ctypes.CDLL] = None


def library() -> Optional[ctypes.CDLL]:
    global _library
    if _library is None:
        lib = native.build("renderer_kernels", [SOURCE, rowwise_linear.SOURCE], headers=[MATH_HEADER])
        if lib is not None:
            p, n = ctypes.c_void_p, ctypes.c_int64
            lib.renderer_draw.argtypes = [p, p, n, n, n, p, p, p, n, n, p, p, p]
            lib.renderer_draw.restype = ctypes.c_int
            lib.renderer_noise.argtypes = [p, n, n, n, p, p, n, n, n, p]
            lib.renderer_noise.restype = None
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


class _Block(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in BLOCK_FIELDS]


class _Weights(ctypes.Structure):
    _fields_ = [("d", ctypes.c_int64), ("heads", ctypes.c_int64), ("n_layers", ctypes.c_int64),
                ("blocks", ctypes.c_void_p), ("wte", ctypes.c_void_p), ("wpe", ctypes.c_void_p),
                ("lnf_w", ctypes.c_void_p), ("lnf_b", ctypes.c_void_p), ("wte_rows", ctypes.c_int64),
                ("wpe_rows", ctypes.c_int64), ("ln_eps", ctypes.c_float * 3),
                ("head_wt", ctypes.c_void_p), ("head_b", ctypes.c_void_p), ("head_n", ctypes.c_int64),
                ("head_ld", ctypes.c_int64), ("len_wt", ctypes.c_void_p), ("len_b", ctypes.c_void_p),
                ("len_n", ctypes.c_int64), ("len_ld", ctypes.c_int64)]


def _padded(linear) -> tuple:
    """A head's transposed weight and bias, zero columns added up to whole tiles."""
    out, ld = linear.out_features, -(-linear.out_features // HEAD_COLUMNS) * HEAD_COLUMNS

    def weight():
        wt = torch.zeros(linear.in_features, ld)
        wt[:, :out] = linear.weight.detach().t()
        return wt

    def bias():
        b = torch.zeros(ld)
        b[:out] = linear.bias.detach()
        return b

    return (rowwise_linear.per_weight(linear.weight, ("render_head", ld), weight),
            rowwise_linear.per_weight(linear.bias, ("render_head", ld), bias), out, ld)


def draw_wanted(model) -> bool:
    """Whether ``draw`` can run ``model``'s level draws: eval mode, float32 CPU weights, no
    gradients, asked for (``FRACTAL_FLOOD_RENDER_KERNELS``) and built."""
    return not model.training and wanted(model.wte.weight)


_drawn: dict = {}  # (id(model), level) -> (weakref to the model, the sources and their versions, struct, keep)


def _weights(model, level: int):
    """The C struct of ``model``'s weights for a draw at ``level`` (and what it points into),
    made once and kept while every source tensor is the same object at the same version."""
    key = (id(model), level)
    hit = _drawn.get(key)
    if hit is not None and hit[0]() is model and all(t._version == v for t, v in hit[1]):
        return hit[2]
    keep, sources = [], []

    def ptr(t: torch.Tensor, source: Optional[torch.Tensor] = None) -> int:
        sources.append(t if source is None else source)
        t = t.detach().contiguous()
        keep.append(t)
        return t.data_ptr()

    blocks = (_Block * len(model.blocks))()
    for blk, c in zip(model.blocks, blocks):
        a, m = blk.attn, blk.mlp
        for name, t in zip(BLOCK_FIELDS, (blk.ln_1.weight, blk.ln_1.bias, a.c_attn.weight, a.c_attn.bias,
                                          a.c_proj.weight, a.c_proj.bias, blk.ln_2.weight, blk.ln_2.bias,
                                          m.c_fc.weight, m.c_fc.bias, m.c_proj.weight, m.c_proj.bias)):
            setattr(c, name, ptr(rowwise_linear.transposed(t), t) if name.endswith("_wt") else ptr(t))
    first = model.blocks[0]
    if any(b.ln_1.eps != first.ln_1.eps or b.ln_2.eps != first.ln_2.eps for b in model.blocks):
        raise ValueError("renderer_kernels.draw: the blocks' layer norms differ in eps")
    head = model.heads[level]
    head_wt, head_b, head_n, head_ld = _padded(head)
    w = _Weights(d=model.config.d_model, heads=first.attn.n_heads, n_layers=len(model.blocks),
                 blocks=ctypes.addressof(blocks), wte=ptr(model.wte.weight), wpe=ptr(model.wpe.weight),
                 lnf_w=ptr(model.ln_f.weight), lnf_b=ptr(model.ln_f.bias), wte_rows=model.wte.num_embeddings,
                 wpe_rows=model.wpe.num_embeddings, head_wt=ptr(head_wt, head.weight),
                 head_b=ptr(head_b, head.bias), head_n=head_n, head_ld=head_ld)
    w.ln_eps[:] = (first.ln_1.eps, first.ln_2.eps, model.ln_f.eps)
    if model.has_length_head(level):
        lh = model.length_heads[str(level)]
        len_wt, len_b, w.len_n, w.len_ld = _padded(lh)
        w.len_wt, w.len_b = ptr(len_wt, lh.weight), ptr(len_b, lh.bias)
    t_noise = model.config.timesteps - 1
    # the level's and timestep's row, the module's sum once
    add = ptr(model.level_emb.weight[level] + model.time_emb.weight[t_noise], model.level_emb.weight)
    sources.append(model.time_emb.weight)
    entry = (w, add, blocks, keep)
    _drawn[key] = (weakref.ref(model, lambda _, key=key: _drawn.pop(key, None)),
                   [(t, t._version) for t in sources], entry)
    return entry


def draw(model, level: int, cond: torch.Tensor, noise: torch.Tensor, lengths: Optional[torch.Tensor],
         logits: bool = False):
    """A whole level's denoising draw at temperature 0 in one call (``renderer_draw`` in the C
    file): cond (B,) and noise (B, L) ids in their levels' vocabularies, lengths (B,) target
    slots per item (None: all L) -> (tokens (B, L) with the pad past each length, child
    lengths (B, L) or None at the bottom, and with ``logits`` the token head's scores
    (B, L, C), zero past each length). ``model.denoise`` at t = T - 1 and argmax, item by
    item: the same function, other rounding (the C file's note)."""
    w, add, _, _ = _weights(model, level)
    B, L = cond.shape[0], noise.shape[1]
    cond, noise = cond.long().contiguous(), noise.long().contiguous()
    lengths = lengths.long().contiguous() if lengths is not None else None
    tokens = torch.empty(B, L, dtype=torch.long)
    child = torch.empty(B, L, dtype=torch.long) if w.len_wt else None
    scores = torch.zeros(B, L, w.head_n) if logits else None
    if noise.shape != (B, L) or (lengths is not None and lengths.shape != (B,)):
        raise ValueError(f"renderer_kernels.draw: noise must be (B, L) and lengths (B,), got {tuple(noise.shape)} "
                         f"and {None if lengths is None else tuple(lengths.shape)} for B = {B}")
    failed = _lib().renderer_draw(
        ctypes.byref(w), add, model.vocab.offset(level), model.vocab.offset(level + 1), B, cond.data_ptr(),
        lengths.data_ptr() if lengths is not None else None, noise.data_ptr(), L, model.pad_id(level),
        tokens.data_ptr(), child.data_ptr() if child is not None else None, scores.data_ptr() if logits else None)
    if failed == -2:
        raise ValueError("renderer_kernels.draw: an id outside the renderer's vocabulary or a length outside "
                         f"0..{L}")
    if failed:
        raise MemoryError("the renderer's draw kernel could not allocate its scratch")
    return tokens, child, scores


def noise(seed, stream: int, level: int, item: torch.Tensor, draw_id: torch.Tensor, L: int, high: int) -> torch.Tensor:
    """``draws.randint(seed, stream, level, item, draw_id, (L,), high)`` for (B,) items and
    draws (``seed`` an int or (B,) seeds) by ``renderer_noise``: the same integers."""
    item, draw_id = item.long().contiguous(), draw_id.long().contiguous()
    seeds = seed.long().contiguous() if isinstance(seed, torch.Tensor) else None
    shared = 0 if seeds is not None else int(seed) & 0xFFFFFFFF  # only the low 32 bits enter
    out = torch.empty(item.shape[0], L, dtype=torch.long)
    _lib().renderer_noise(seeds.data_ptr() if seeds is not None else None, shared, stream, level, item.data_ptr(),
                          draw_id.data_ptr(), item.shape[0], L, high, out.data_ptr())
    return out
