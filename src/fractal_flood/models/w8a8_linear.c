/* A linear layer over int8 weights and int8 activations (the "w8a8" format), exact.

   y (M, N) = x (M, K) @ W^T + b, W (N, K) stored as integers q_w with one float32 scale s_w[n]
   per output (weight_formats.py), and each row of x quantised on the fly:
     peak = max_k |x[k]|,  s_x = peak / 127 (1 when peak is 0),
     q_x[k] = round(x[k] / s_x) to nearest even, clamped to [-127, 127],
     acc[n] = sum_k q_x[k] * q_w[k][n]                        (an integer, exact),
     y[n]   = float(acc[n]) * (s_x * s_w[n]) + b[n]           (each operation rounded alone).
   The sum is integer arithmetic, exact in any order, so a row's result depends on nothing
   but that row and the weights, on every CPU and for every vector width: the same bits as
   w8a8_linear.py's tensor-op reference (tested), alone or in any batch.

   Storage (weight_formats.stored(w, "w8a8")): K padded to K4 (a multiple of 4) and N to N16
   (a multiple of 16) with zero weights; wp (K4 / 4, N16, 4) int8: the four weights of
   k = 4j .. 4j + 3 for output n side by side; sc: N16 float32 scales, then N16 int32
   compensations 128 * sum_k q_w[k][n] (see below).

   On a CPU with AVX-512 VNNI one instruction multiplies 64 byte pairs and adds them by
   fours into 16 int32 sums (vpdpbusd: unsigned bytes times signed bytes). The activations go
   in unsigned, q_x + 128 (1..255), and the 128 * sum_k q_w[k][n] that adds is taken back
   off: exact. Elsewhere plain integer loops compute the same sums. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#include <immintrin.h>
#define W8A8_VNNI 1
#else
#define W8A8_VNNI 0
#endif

enum { RW = 4, VN = 16, TILE_VECS = 4 };

/* 1 when the kernel runs on VNNI instructions (the fast path), else 0. */
int w8a8_vnni(void) { return W8A8_VNNI; }

/* Row x (K) -> xq (K4) unsigned bytes q_x + 128 (128 in the padding) and its scale. */
static float quantise_row(const float *x, int64_t K, int64_t K4, uint8_t *xq) {
    float peak = 0.0f;
    for (int64_t k = 0; k < K; k++) {
        const float a = fabsf(x[k]);
        peak = a > peak ? a : peak;
    }
    const float s = peak > 0.0f ? peak / 127.0f : 1.0f;
    for (int64_t k = 0; k < K; k++) {
        float q = nearbyintf(x[k] / s);
        q = q < -127.0f ? -127.0f : (q > 127.0f ? 127.0f : q);
        xq[k] = (uint8_t)((int)q + 128);
    }
    for (int64_t k = K; k < K4; k++) xq[k] = 128;
    return s;
}

/* rr rows (xq: K4 bytes each, row stride K4) x nv * 16 outputs from n0: the integer sums
   sum_k (q_x[k] + 128) * q_w[k][n] into acc[r][v * 16 + l]. */
static inline __attribute__((always_inline)) void tile_sums(const uint8_t *xq, const int8_t *wp, int64_t K4,
                                                            int64_t N16, int64_t n0, const int rr, const int nv,
                                                            int32_t acc[RW][TILE_VECS * VN]) {
#if W8A8_VNNI
    __m512i a[RW][TILE_VECS];
    for (int r = 0; r < rr; r++)
        for (int v = 0; v < nv; v++) a[r][v] = _mm512_setzero_si512();
    for (int64_t j = 0; j < K4 / 4; j++) {
        const int8_t *w = wp + (j * N16 + n0) * 4;
        __m512i wv[TILE_VECS];
        for (int v = 0; v < nv; v++) wv[v] = _mm512_loadu_si512((const void *)(w + v * VN * 4));
        for (int r = 0; r < rr; r++) {
            int32_t four;
            memcpy(&four, xq + r * K4 + j * 4, sizeof four);
            const __m512i xb = _mm512_set1_epi32(four);
            for (int v = 0; v < nv; v++) a[r][v] = _mm512_dpbusd_epi32(a[r][v], xb, wv[v]);
        }
    }
    for (int r = 0; r < rr; r++)
        for (int v = 0; v < nv; v++) _mm512_storeu_si512((void *)(acc[r] + v * VN), a[r][v]);
#else
    for (int r = 0; r < rr; r++)
        for (int l = 0; l < nv * VN; l++) acc[r][l] = 0;
    for (int64_t j = 0; j < K4 / 4; j++) {
        const int8_t *w = wp + (j * N16 + n0) * 4;
        for (int r = 0; r < rr; r++) {
            const uint8_t *xr = xq + r * K4 + j * 4;
            for (int l = 0; l < nv * VN; l++)
                acc[r][l] += (int32_t)xr[0] * w[l * 4] + (int32_t)xr[1] * w[l * 4 + 1] +
                             (int32_t)xr[2] * w[l * 4 + 2] + (int32_t)xr[3] * w[l * 4 + 3];
        }
    }
#endif
}

static void tile(const uint8_t *xq, const int8_t *wp, int64_t K4, int64_t N16, int64_t n0, int rr, int nv,
                 int32_t acc[RW][TILE_VECS * VN]) {
    /* constant tile shapes, so the sums stay in registers */
    if (nv == TILE_VECS) {
        switch (rr) {
        case 4: tile_sums(xq, wp, K4, N16, n0, 4, TILE_VECS, acc); break;
        case 3: tile_sums(xq, wp, K4, N16, n0, 3, TILE_VECS, acc); break;
        case 2: tile_sums(xq, wp, K4, N16, n0, 2, TILE_VECS, acc); break;
        default: tile_sums(xq, wp, K4, N16, n0, 1, TILE_VECS, acc); break;
        }
    } else {
        for (int v = 0; v < nv; v++) {
            int32_t part[RW][TILE_VECS * VN];
            switch (rr) {
            case 4: tile_sums(xq, wp, K4, N16, n0 + v * VN, 4, 1, part); break;
            case 3: tile_sums(xq, wp, K4, N16, n0 + v * VN, 3, 1, part); break;
            case 2: tile_sums(xq, wp, K4, N16, n0 + v * VN, 2, 1, part); break;
            default: tile_sums(xq, wp, K4, N16, n0 + v * VN, 1, 1, part); break;
            }
            for (int r = 0; r < rr; r++) memcpy(acc[r] + v * VN, part[r], sizeof(int32_t) * VN);
        }
    }
}

/* x (M, K) float32, wp and sc as stored, b (N,) or NULL, y (M, N). Returns 0, or -1 when
   out of memory. */
int w8a8_linear(const float *x, const int8_t *wp, const float *sc, const float *b, float *y, int64_t M, int64_t K,
                int64_t N) {
    const int64_t K4 = (K + 3) / 4 * 4, N16 = (N + VN - 1) / VN * VN;
    const int32_t *comp = (const int32_t *)(sc + N16);
    uint8_t *xq = malloc((size_t)(RW * K4));
    if (!xq) return -1;
    for (int64_t m0 = 0; m0 < M; m0 += RW) {
        const int rr = (int)(M - m0 < RW ? M - m0 : RW);
        float sx[RW];
        for (int r = 0; r < rr; r++) sx[r] = quantise_row(x + (m0 + r) * K, K, K4, xq + r * K4);
        for (int64_t n0 = 0; n0 < N16; n0 += TILE_VECS * VN) {
            const int nv = (int)((N16 - n0) / VN < TILE_VECS ? (N16 - n0) / VN : TILE_VECS);
            int32_t acc[RW][TILE_VECS * VN];
            tile(xq, wp, K4, N16, n0, rr, nv, acc);
            const int64_t cols = N - n0 < nv * VN ? N - n0 : nv * VN;
            for (int r = 0; r < rr; r++) {
                float *yr = y + (m0 + r) * N + n0;
                for (int64_t l = 0; l < cols; l++) {
                    const float t = sx[r] * sc[n0 + l];
                    const float v = (float)(acc[r][l] - comp[n0 + l]) * t;
                    yr[l] = b ? v + b[n0 + l] : v;
                }
            }
        }
    }
    free(xq);
    return 0;
}
