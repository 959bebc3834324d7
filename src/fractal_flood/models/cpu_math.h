/* The float32 arithmetic the CPU kernels share (manager/cpu_step.c, models/renderer_kernels.c):
   sums and dot products in 16 fixed lanes and a fixed tree, e^x by a polynomial (scalar and
   16 lanes at a time, the same bits), layer norm and the tanh-approximated GELU. Every
   operation is rounded as written (the kernels build with -ffp-contract=off, no
   -ffast-math; the linear layers' one fmaf a product is rowwise_linear.c's), so each
   function is a fixed function of its inputs on every CPU. */
#ifndef FRACTAL_FLOOD_CPU_MATH_H
#define FRACTAL_FLOOD_CPU_MATH_H
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { LANES = 16 };

/* Sums and dot products in LANES fixed lanes (lane l takes elements l, l + LANES, ...),
   then a fixed tree: lane l + w added into lane l for w = 8, 4, 2, 1. Written with vector
   types so the lanes and the tree stay in registers; a tail shorter than LANES is padded
   with zeros, which add nothing (a lane's sum starts at +0 and never becomes -0). */
typedef float vfloat __attribute__((vector_size(64)));  /* LANES floats */
typedef float vfloat8 __attribute__((vector_size(32)));
typedef float vfloat4 __attribute__((vector_size(16)));

static inline vfloat vload_tail(const float *a, int64_t n) { /* n <= LANES elements, zero-padded */
    float t[LANES] = {0};
    memcpy(t, a, sizeof(float) * (size_t)n);
    vfloat v;
    memcpy(&v, t, sizeof v);
    return v;
}

static inline void store_tail(float *a, vfloat v, int64_t n) { /* the first n <= LANES lanes */
    float t[LANES];
    memcpy(t, &v, sizeof t);
    memcpy(a, t, sizeof(float) * (size_t)n);
}

static inline float lane_tree(vfloat acc) {
    vfloat8 lo, hi;
    memcpy(&lo, &acc, sizeof lo);
    memcpy(&hi, (const char *)&acc + sizeof lo, sizeof hi);
    lo = lo + hi;
    vfloat4 lo4, hi4;
    memcpy(&lo4, &lo, sizeof lo4);
    memcpy(&hi4, (const char *)&lo + sizeof lo4, sizeof hi4);
    lo4 = lo4 + hi4;
    const float a = lo4[0] + lo4[2], b = lo4[1] + lo4[3];
    return a + b;
}

static inline float lane_sum(const float *a, int64_t n) {
    vfloat acc = {0}, v;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        memcpy(&v, a + i, sizeof v);
        acc = acc + v;
    }
    if (i < n) acc = acc + vload_tail(a + i, n - i);
    return lane_tree(acc);
}

/* lane_dot's lanes over the whole blocks of 16 (n rounded down to a multiple of 16). */
static inline vfloat lane_products(const float *a, const float *b, int64_t n) {
    vfloat acc = {0}, va, vb;
    for (int64_t i = 0; i + LANES <= n; i += LANES) {
        memcpy(&va, a + i, sizeof va);
        memcpy(&vb, b + i, sizeof vb);
        acc = acc + va * vb;
    }
    return acc;
}

static inline float lane_dot(const float *a, const float *b, int64_t n) {
    vfloat acc = lane_products(a, b, n);
    const int64_t i = n / LANES * LANES;
    if (i < n) acc = acc + vload_tail(a + i, n - i) * vload_tail(b + i, n - i);
    return lane_tree(acc);
}

/* e^x for x in [-87, 88] (clamped), to about 2 ulp: x = n ln2 + r, |r| <= ln2 / 2, a
   degree-7 polynomial for e^r, 2^n from the exponent bits. Branch-free, so it vectorises. */
static inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float t = x * 1.44269504088896341f;
    const int32_t n = (int32_t)(t + (t >= 0.0f ? 0.5f : -0.5f));
    const float fn = (float)n;
    float r = x - fn * 0.693145751953125f;
    r = r - fn * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } scale = {.i = (n + 127) << 23};
    return p * scale.f;
}

/* exp_approx on 16 floats at once, the very same operations lane by lane (GCC/Clang
   vector extensions; the scalar loop does not vectorise: its clamps are branches to the
   compiler), so each lane is bit for bit exp_approx of its input (exp_both: tested). The
   step takes e^x only this way; exp_approx stays as its scalar definition. */
typedef int32_t vint __attribute__((vector_size(64)));
enum { VW = 16 };

static inline vfloat vselect(vint mask, vfloat a, vfloat b) {
    return (vfloat)((mask & (vint)a) | (~mask & (vint)b));
}

static inline vfloat exp_approx_vec(vfloat x) {
    const vfloat zero = {0};
    x = vselect(x < -87.0f, zero - 87.0f, x);
    x = vselect(x > 88.0f, zero + 88.0f, x);
    const vfloat t = x * 1.44269504088896341f;
    const vint n = __builtin_convertvector(t + vselect(t >= 0.0f, zero + 0.5f, zero - 0.5f), vint);
    const vfloat fn = __builtin_convertvector(n, vfloat);
    vfloat r = x - fn * 0.693145751953125f;
    r = r - fn * 1.428606765330187e-06f;
    vfloat p = zero + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * (vfloat)((n + 127) << 23);
}

static inline void layer_norm(const float *x, const float *w, const float *b, float *y, int64_t C, float eps,
                       float *tmp) {
    const float mean = lane_sum(x, C) / (float)C;
    for (int64_t i = 0; i < C; i++) tmp[i] = x[i] - mean;
    const float var = lane_dot(tmp, tmp, C) / (float)C;
    const float inv = 1.0f / sqrtf(var + eps);
    for (int64_t i = 0; i < C; i++) y[i] = tmp[i] * inv * w[i] + b[i];
}

static inline vfloat gelu_tanh_vec(vfloat v) {
    const vfloat u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    const vfloat th = 1.0f - 2.0f / (exp_approx_vec(2.0f * u) + 1.0f);
    return 0.5f * v * (1.0f + th);
}

static inline void gelu_tanh(float *x, int64_t n) { /* 16 lanes at a time, a short tail zero-padded */
    int64_t i = 0;
    vfloat v;
    for (; i + VW <= n; i += VW) {
        memcpy(&v, x + i, sizeof v);
        v = gelu_tanh_vec(v);
        memcpy(x + i, &v, sizeof v);
    }
    if (i < n) store_tail(x + i, gelu_tanh_vec(vload_tail(x + i, n - i)), n - i);
}

#endif
