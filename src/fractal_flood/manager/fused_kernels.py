"""Triton kernels for one decode step of a ``CausalLM`` (``fused_step.FusedStep`` launches them).

A batch-1 eager decode step of a 4 x 128 manager (the one shipped until 2026-12-07) runs
154 operators (layer norms, products, bias adds, GELU, residual adds, cache writes, the draw's softmax / cumsum / search
/ hash), each at least one kernel on a GPU and each a few microseconds of launch latency
for almost no work: the step is launch-bound, even in a CUDA graph (measured in
docs/log/notebook.md). Here a step is 5 kernels per layer plus 1 or 2 for the output layer and the
draw, each doing one matrix-vector product with its prologue and epilogue fused:

- ``qkv_kernel``: (embedding +) layer norm + ``c_attn`` + bias, q to a buffer, k and v
  straight into the KV cache at the step's position;
- ``attention_kernel``: one program per (row, head) over the cache slots ``<= pos``;
- ``residual_kernel``: ``x += W @ a + bias`` (attention's and the MLP's output projections);
- ``mlp_in_kernel``: layer norm + ``c_fc`` + bias + GELU (tanh);
- ``class_draw_kernel``: final layer norm, the class-factored output layer and its draw
  (class, then token within it) for one row per program; or ``logits_kernel`` +
  ``flat_draw_kernel`` for a one-softmax head.

Every product accumulates in float32 whatever the weights' dtype. The draws are the ones
``class_head.draw`` / ``tokens.sample`` make: the same counter-based uniform (the murmur3
hash of ``draws.row_hash``, bit for bit), the same inversion (target = u x total, kept
below the total), so a fused step draws the eager step's token except where float32
rounding moves a cumulative sum across the target (tested on the CPU under
``TRITON_INTERPRET=1``). Matrix-vector products are broadcast-multiply-and-sum, not
``tl.dot`` (a decode step has 1 row, below ``tl.dot``'s 16).

This module imports ``triton``; ``fused_step`` imports it only when a fused step is built.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _layer_norm(x, mask, w_ptr, b_ptr, cols, n, eps):
    """(BLOCK,) fp32 row (zeros where ~mask) -> its layer norm (zeros where ~mask)."""
    mean = tl.sum(x, axis=0) / n
    d = tl.where(mask, x - mean, 0.0)
    var = tl.sum(d * d, axis=0) / n
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, d / tl.sqrt(var + eps) * w + b, 0.0)


@triton.jit
def _normed_row(x_ptr, row, lnw_ptr, lnb_ptr, C, eps, BLOCK_C: tl.constexpr):
    """Row ``row`` of the (B, C) fp32 residual stream, layer-normed -> (row, cols, col mask)."""
    cols = tl.arange(0, BLOCK_C)
    cm = cols < C
    x = tl.load(x_ptr + row * C + cols, mask=cm, other=0.0)
    return _layer_norm(x, cm, lnw_ptr, lnb_ptr, cols, C, eps), cols, cm


@triton.jit
def _matvec(w_ptr, rows, row_mask, cols, col_mask, stride, v):
    """(BLOCK_N,) = W[rows, cols] @ v in float32 (W row-major with ``stride`` columns)."""
    w = tl.load(w_ptr + rows[:, None] * stride + cols[None, :],
                mask=row_mask[:, None] & col_mask[None, :], other=0.0).to(tl.float32)
    return tl.sum(w * v[None, :], axis=1)


@triton.jit
def _fmix(h):
    """murmur3's fmix32 on an int64 holding [0, 2**32) (``draws._fmix``)."""
    m = 0xFFFFFFFF
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & m
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & m
    return h ^ (h >> 16)


@triton.jit
def _row_uniform(seeds_ptr, steps_ptr, row):
    """``tokens.row_uniform`` for one row: 24 bits of the hash of (seed, step), + 0.5, / 2**24."""
    m = 0xFFFFFFFF
    seed = tl.load(seeds_ptr + row).to(tl.int64)
    step = tl.load(steps_ptr + row).to(tl.int64)
    h = _fmix(((seed >> 32) & m) ^ 0x5EED0002)  # draws.MANAGER_STREAM
    h = _fmix((h + (seed & m) * 0x9E3779B1) & m)
    h = _fmix((h + (step & m) * 0x27D4EB2F) & m)
    return ((h >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)


@triton.jit
def _below(total):
    """The largest float32 below a positive normal ``total`` (``torch.nextafter(total, 0)``):
    one rounding of total x (1 - 2**-24) lands there (tested against nextafter)."""
    return total * 0.99999994039535522


@triton.jit
def uniform_kernel(seeds_ptr, steps_ptr, out_ptr):
    """One row's uniform per program (for the test against ``tokens.row_uniform``)."""
    row = tl.program_id(0)
    tl.store(out_ptr + row, _row_uniform(seeds_ptr, steps_ptr, row))


@triton.jit
def qkv_kernel(x_ptr, tok_ptr, pos_ptr, wte_ptr, wpe_ptr, lnw_ptr, lnb_ptr, w_ptr, b_ptr,
               q_ptr, k_ptr, v_ptr, C, H, D, L, eps,
               EMBED: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (B, cdiv(3C, BLOCK_N)). With EMBED, x = wte[tok] + wpe[pos] first (the first
    block of programs stores it to ``x_ptr`` for the residual stream)."""
    row = tl.program_id(0)
    nb = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    cm = cols < C
    pos = tl.load(pos_ptr)
    if EMBED:
        tok = tl.load(tok_ptr + row)
        x = (tl.load(wte_ptr + tok * C + cols, mask=cm, other=0.0).to(tl.float32)
             + tl.load(wpe_ptr + pos * C + cols, mask=cm, other=0.0).to(tl.float32))
        tl.store(x_ptr + row * C + cols, x, mask=cm & (cols * 0 + nb == 0))
    else:
        x = tl.load(x_ptr + row * C + cols, mask=cm, other=0.0)
    xn = _layer_norm(x, cm, lnw_ptr, lnb_ptr, cols, C, eps)
    rows = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = rows < 3 * C
    y = _matvec(w_ptr, rows, rm, cols, cm, C, xn) + tl.load(b_ptr + rows, mask=rm, other=0.0).to(tl.float32)
    part = rows // C  # 0: q, 1: k, 2: v
    within = rows - part * C
    head = within // D
    slot = ((row * H + head) * L + pos) * D + (within - head * D)  # cache (B, H, L, D)
    tl.store(q_ptr + row * C + within, y, mask=rm & (part == 0))
    tl.store(k_ptr + slot, y.to(k_ptr.dtype.element_ty), mask=rm & (part == 1))
    tl.store(v_ptr + slot, y.to(v_ptr.dtype.element_ty), mask=rm & (part == 2))


@triton.jit
def attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, pos_ptr, C, H, D, L, scale,
                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (B, H): softmax(q k^T * scale) v over the cache slots 0..pos of one row's head."""
    row = tl.program_id(0)
    head = tl.program_id(1)
    pos = tl.load(pos_ptr)
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    j = tl.arange(0, BLOCK_L)
    jm = (j <= pos) & (j < L)
    q = tl.load(q_ptr + row * C + head * D + d, mask=dm, other=0.0)
    base = (row * H + head) * L * D
    m2 = jm[:, None] & dm[None, :]
    k = tl.load(k_ptr + base + j[:, None] * D + d[None, :], mask=m2, other=0.0).to(tl.float32)
    s = tl.where(jm, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=0))
    p = tl.where(jm, p, 0.0)
    v = tl.load(v_ptr + base + j[:, None] * D + d[None, :], mask=m2, other=0.0).to(tl.float32)
    o = tl.sum(p[:, None] * v, axis=0) / tl.sum(p, axis=0)
    tl.store(o_ptr + row * C + head * D + d, o, mask=dm)


@triton.jit
def residual_kernel(a_ptr, w_ptr, b_ptr, x_ptr, N_IN, C,
                    BLOCK_IN: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (B, cdiv(C, BLOCK_N)): x[rows] += W[rows] @ a + bias[rows] (W is (C, N_IN))."""
    row = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = rows < C
    cols = tl.arange(0, BLOCK_IN)
    cm = cols < N_IN
    a = tl.load(a_ptr + row * N_IN + cols, mask=cm, other=0.0)
    y = _matvec(w_ptr, rows, rm, cols, cm, N_IN, a) + tl.load(b_ptr + rows, mask=rm, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + row * C + rows, mask=rm, other=0.0)
    tl.store(x_ptr + row * C + rows, x + y, mask=rm)


@triton.jit
def mlp_in_kernel(x_ptr, lnw_ptr, lnb_ptr, w_ptr, b_ptr, h_ptr, C, N, eps,
                  BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (B, cdiv(N, BLOCK_N)): h = gelu_tanh(W @ layer_norm(x) + bias), W is (N, C)."""
    row = tl.program_id(0)
    xn, cols, cm = _normed_row(x_ptr, row, lnw_ptr, lnb_ptr, C, eps, BLOCK_C)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = rows < N
    y = _matvec(w_ptr, rows, rm, cols, cm, C, xn) + tl.load(b_ptr + rows, mask=rm, other=0.0).to(tl.float32)
    z = 0.7978845608028654 * (y + 0.044715 * y * y * y)  # sqrt(2 / pi) (y + 0.044715 y^3)
    tanh = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)  # exp -> inf gives 1, exp -> 0 gives -1
    tl.store(h_ptr + row * N + rows, 0.5 * y * (1.0 + tanh), mask=rm)


@triton.jit
def _invert(probs, mask, idx, BLOCK: tl.constexpr, u, last):
    """First index whose cumulative probability exceeds u x total (total kept below itself),
    and that target: ``tokens.invert_target`` for one row. ``last`` = the final valid index."""
    cdf = tl.cumsum(probs, axis=0)
    total = tl.sum(tl.where(idx == last, cdf, 0.0), axis=0)
    target = tl.minimum(u * total, _below(total))
    first = tl.min(tl.where(mask & (cdf > target), idx, BLOCK), axis=0)
    return tl.minimum(first, last), target, cdf


@triton.jit
def _softmax(z, mask):
    e = tl.where(mask, tl.exp(z - tl.max(z, axis=0)), 0.0)
    return e / tl.sum(e, axis=0)


@triton.jit
def class_draw_kernel(x_ptr, lnw_ptr, lnb_ptr, wc_ptr, wte_ptr, temp_ptr, seeds_ptr, steps_ptr,
                      out_ptr, C, K, S, eps,
                      BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr):
    """Grid (B,): final layer norm, K class scores, a class, S token scores in it, a token
    (``class_head.draw``; temperature <= 0 means greedy: the best class, its best token)."""
    row = tl.program_id(0)
    hn, cols, cm = _normed_row(x_ptr, row, lnw_ptr, lnb_ptr, C, eps, BLOCK_C)
    temp = tl.load(temp_ptr + row)
    sampled = temp > 0
    div = tl.where(sampled, temp, 1.0)
    u = _row_uniform(seeds_ptr, steps_ptr, row)

    ks = tl.arange(0, BLOCK_K)
    km = ks < K
    zc = tl.where(km, _matvec(wc_ptr, ks, km, cols, cm, C, hn), float("-inf"))
    pc = _softmax(zc / div, km)
    c, target, cdf = _invert(pc, km, ks, BLOCK_K, u, K - 1)
    c = tl.where(sampled, c, tl.argmax(zc, axis=0))
    p = tl.sum(tl.where(ks == c, pc, 0.0), axis=0)
    hi = tl.sum(tl.where(ks == c, cdf, 0.0), axis=0)
    inner = tl.minimum(tl.maximum((target - (hi - p)) / p, 0.0), 1.0)

    ss = tl.arange(0, BLOCK_S)
    sm = ss < S
    zt = tl.where(sm, _matvec(wte_ptr, c * S + ss, sm, cols, cm, C, hn), float("-inf"))
    j, _t, _c = _invert(_softmax(zt / div, sm), sm, ss, BLOCK_S, inner, S - 1)
    j = tl.where(sampled, j, tl.argmax(zt, axis=0))
    tl.store(out_ptr + row, (c * S + j).to(tl.int64))


@triton.jit
def logits_kernel(x_ptr, lnw_ptr, lnb_ptr, w_ptr, z_ptr, C, V, eps,
                  BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (B, cdiv(V, BLOCK_N)): float32 logits = wte @ layer_norm(x) (the tied head)."""
    row = tl.program_id(0)
    hn, cols, cm = _normed_row(x_ptr, row, lnw_ptr, lnb_ptr, C, eps, BLOCK_C)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = rows < V
    tl.store(z_ptr + row * V + rows, _matvec(w_ptr, rows, rm, cols, cm, C, hn), mask=rm)


@triton.jit
def flat_draw_kernel(z_ptr, temp_ptr, seeds_ptr, steps_ptr, out_ptr, V, BLOCK_V: tl.constexpr):
    """Grid (B,): ``tokens.sample`` over one row of V logits, BLOCK_V at a time (a max pass,
    a normaliser pass, then the search with the running cumulative sum carried across
    blocks); temperature <= 0 means argmax (the first maximum, as ``torch.argmax``)."""
    row = tl.program_id(0)
    temp = tl.load(temp_ptr + row)
    sampled = temp > 0
    div = tl.where(sampled, temp, 1.0)
    u = _row_uniform(seeds_ptr, steps_ptr, row)
    offs = tl.arange(0, BLOCK_V)
    best = tl.full([], float("-inf"), tl.float32)  # loop-carried: typed 0-d tensors
    best_at = tl.zeros([], tl.int32)
    for start in range(0, V, BLOCK_V):
        m = start + offs < V
        z = tl.load(z_ptr + row * V + start + offs, mask=m, other=float("-inf"))
        bm = tl.max(z, axis=0)
        at = tl.min(tl.where(m & (z == bm), start + offs, V), axis=0)
        better = bm > best
        best_at = tl.where(better, at, best_at)
        best = tl.where(better, bm, best)
    peak = best / div  # the max of z / div: division by a positive number keeps the order
    norm = tl.zeros([], tl.float32)
    for start in range(0, V, BLOCK_V):
        m = start + offs < V
        z = tl.load(z_ptr + row * V + start + offs, mask=m, other=float("-inf"))
        norm += tl.sum(tl.where(m, tl.exp(z / div - peak), 0.0), axis=0)
    total = tl.zeros([], tl.float32)  # the cumulative sum's last entry, block by block
    for start in range(0, V, BLOCK_V):
        m = start + offs < V
        z = tl.load(z_ptr + row * V + start + offs, mask=m, other=float("-inf"))
        total += tl.sum(tl.where(m, tl.exp(z / div - peak) / norm, 0.0), axis=0)
    target = tl.minimum(u * total, _below(total))
    found = tl.zeros([], tl.int32) + (V - 1)
    run = tl.zeros([], tl.float32)
    for start in range(0, V, BLOCK_V):
        m = start + offs < V
        z = tl.load(z_ptr + row * V + start + offs, mask=m, other=float("-inf"))
        cdf = run + tl.cumsum(tl.where(m, tl.exp(z / div - peak) / norm, 0.0), axis=0)
        first = tl.min(tl.where(m & (cdf > target), start + offs, V), axis=0)
        found = tl.minimum(found, first)
        run += tl.sum(tl.where(m, tl.exp(z / div - peak) / norm, 0.0), axis=0)
    tl.store(out_ptr + row, tl.where(sampled, found, best_at).to(tl.int64))
