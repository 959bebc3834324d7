"""The C decode step's algorithm (``manager/cpu_step.c`` with ``models/rowwise_linear.c``'s
linear layers) as numba kernels: the numba candidate of ``step_candidates.py``.

The same float32 operations in the same order: sums and dot products over 16 lanes and a
fixed tree, layer norm as mean then centred variance, each linear output as its bias plus
the products in k order, GELU (tanh) and softmax through the same degree-7 polynomial
exponential (2^n from a table instead of exponent bits: the same value). No fastmath, so
LLVM neither fuses a multiply and an add nor reorders a sum: a row's result is a fixed
function of that row, the same in any batch, and should equal the C step's bit for bit.

``@njit(cache=True)``: compiled on first call, kept in ``__pycache__`` beside this file (or
``NUMBA_CACHE_DIR``) for later processes.
"""

import numpy as np
from numba import njit

f32 = np.float32
LANES = 16
F0, F1, F2, HALF = f32(0), f32(1), f32(2), f32(0.5)
LO, HI, LOG2E = f32(-87.0), f32(88.0), f32(1.44269504088896341)
LN2_HI, LN2_LO = f32(0.693145751953125), f32(1.428606765330187e-06)
P7, P6, P5, P4, P3 = (f32(1) / f32(d) for d in (5040, 720, 120, 24, 6))
POW2 = np.array([2.0 ** n for n in range(-127, 128)], dtype=np.float32)  # 2^n at n + 127 (n <= 127)
G0, G1 = f32(0.7978845608028654), f32(0.044715)
NEG_INF = f32(-np.inf)
jit = njit(cache=True, fastmath=False, boundscheck=False, error_model="numpy")


@jit
def tree(acc):
    w = LANES // 2
    while w > 0:
        for lane in range(w):
            acc[lane] = acc[lane] + acc[lane + w]
        w //= 2
    return acc[0]


@jit
def lane_sum(a, n, acc):
    for lane in range(LANES):
        acc[lane] = F0
    i = 0
    while i + LANES <= n:
        for lane in range(LANES):
            acc[lane] = acc[lane] + a[i + lane]
        i += LANES
    lane = 0
    while i + lane < n:
        acc[lane] = acc[lane] + a[i + lane]
        lane += 1
    return tree(acc)


@jit
def lane_dot(a, b, n, acc):
    for lane in range(LANES):
        acc[lane] = F0
    i = 0
    while i + LANES <= n:
        for lane in range(LANES):
            acc[lane] = acc[lane] + a[i + lane] * b[i + lane]
        i += LANES
    lane = 0
    while i + lane < n:
        acc[lane] = acc[lane] + a[i + lane] * b[i + lane]
        lane += 1
    return tree(acc)


@jit
def exp_approx(x):
    x = LO if x < LO else (HI if x > HI else x)
    t = x * LOG2E
    n = np.int32(t + (HALF if t >= F0 else -HALF))
    fn = f32(n)
    r = x - fn * LN2_HI
    r = r - fn * LN2_LO
    p = P7
    p = p * r + P6
    p = p * r + P5
    p = p * r + P4
    p = p * r + P3
    p = p * r + HALF
    p = p * r + F1
    p = p * r + F1
    return p * POW2[n + 127]


@jit
def layer_norm(x, w, b, y, C, eps, tmp, acc):
    mean = lane_sum(x, C, acc) / f32(C)
    for i in range(C):
        tmp[i] = x[i] - mean
    var = lane_dot(tmp, tmp, C, acc) / f32(C)
    inv = F1 / np.sqrt(var + eps)
    for i in range(C):
        y[i] = tmp[i] * inv * w[i] + b[i]


@jit
def linear(x, wt, b, y, M, K, N):
    # each output: bias, then + x[m, k] * wt[k, n] in k order (rowwise_linear.c's order)
    for m in range(M):
        for n in range(N):
            y[m, n] = b[n]
    for m0 in range(0, M, 4):
        m1 = min(m0 + 4, M)
        for k in range(K):
            w = wt[k]
            for m in range(m0, m1):
                xv = x[m, k]
                ym = y[m]
                for n in range(N):
                    ym[n] = ym[n] + xv * w[n]


@jit
def attend(q, keys, values, p, hd, scale, scores, out, acc):
    mx = NEG_INF
    for j in range(p + 1):
        s = lane_dot(q, keys[j], hd, acc) * scale
        scores[j] = s
        mx = s if s > mx else mx
    for j in range(p + 1):
        scores[j] = exp_approx(scores[j] - mx)
    total = lane_sum(scores, p + 1, acc)
    for d in range(hd):
        out[d] = F0
    for j in range(p + 1):
        e = scores[j]
        for d in range(hd):
            out[d] = out[d] + e * values[j, d]
    for d in range(hd):
        out[d] = out[d] / total


@jit
def step(wte, wpe, lnf_w, lnf_b, ln1w, ln1b, attn_wt, attn_b, proj_wt, proj_b, ln2w, ln2b,
         fc_wt, fc_b, mp_wt, mp_b, K, V, tok, pos, eps, out, x, xn, qkv, att, h, y, scores, tmp, acc):
    M, C = tok.shape[0], wte.shape[1]
    nh = K.shape[2]
    hd = C // nh
    Fw = 4 * C
    scale = F1 / np.sqrt(f32(hd))
    for m in range(M):
        for i in range(C):
            x[m, i] = wte[tok[m], i] + wpe[pos[m], i]
    for layer in range(ln1w.shape[0]):
        for m in range(M):
            layer_norm(x[m], ln1w[layer], ln1b[layer], xn[m], C, eps, tmp, acc)
        linear(xn, attn_wt[layer], attn_b[layer], qkv, M, C, 3 * C)
        for m in range(M):
            at = pos[m]
            for hh in range(nh):
                K[layer, m, hh, at, :] = qkv[m, C + hh * hd:C + (hh + 1) * hd]
                V[layer, m, hh, at, :] = qkv[m, 2 * C + hh * hd:2 * C + (hh + 1) * hd]
                attend(qkv[m, hh * hd:(hh + 1) * hd], K[layer, m, hh], V[layer, m, hh], at, hd, scale,
                       scores, att[m, hh * hd:(hh + 1) * hd], acc)
        linear(att, proj_wt[layer], proj_b[layer], y, M, C, C)
        for m in range(M):
            for i in range(C):
                x[m, i] = x[m, i] + y[m, i]
        for m in range(M):
            layer_norm(x[m], ln2w[layer], ln2b[layer], xn[m], C, eps, tmp, acc)
        linear(xn, fc_wt[layer], fc_b[layer], h, M, C, Fw)
        for m in range(M):
            for i in range(Fw):
                v = h[m, i]
                u = G0 * (v + G1 * v * v * v)
                th = F1 - F2 / (exp_approx(F2 * u) + F1)
                h[m, i] = HALF * v * (F1 + th)
        linear(h, mp_wt[layer], mp_b[layer], y, M, Fw, C)
        for m in range(M):
            for i in range(C):
                x[m, i] = x[m, i] + y[m, i]
    for m in range(M):
        layer_norm(x[m], lnf_w, lnf_b, out[m], C, eps, tmp, acc)
