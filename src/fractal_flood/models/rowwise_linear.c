/* A linear layer whose every row is computed the same way, whatever the other rows are.

   y (M, N) = x (M, K) @ wt (K, N) + b (N), wt the weight transposed (K rows of N).

   Every output element is  acc = b[n], then acc = fmaf(x[m][k], wt[k][n], acc) for k in
   order: one fused multiply-add a product, rounded once. fmaf is correctly rounded wherever
   it runs (one instruction on a CPU with FMA, a library call elsewhere), the kernels build
   with -ffp-contract=off and without -ffast-math (nothing else fused, nothing reassociated),
   and the vectorised tiles and the scalar remainders do the very same operations per
   element. So a row's result depends on nothing but that row and the weights: not on M, not
   on the row's place in the batch, not on the vector width the compiler picked, not on the
   CPU. A BLAS library makes no such promise (it picks kernels and blockings by the matrix's
   shape).

   Vectorisation runs over n (the outputs), never over k, so no reduction is reordered.
   The tile of R rows x NB outputs keeps its accumulators in registers (GCC vectorises the
   fmaf loops), and so does the one-row tile (a decode step's row; AVX-512 intrinsics where
   the build has them, else the partial tile); the last rows and outputs run the same
   operations with run-time bounds.

   rowwise_gathered: row m multiplies by its own matrix, wt_blocks + index[m] * K * N (the
   class-factored output layer's scores within each row's class).

   rowwise_linear_scalar: the same operations without tiles, one element at a time: the
   reference the tests hold every tile to.
*/
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { NB = 64, R = 4, VL = 16, NV = NB / VL };

/* Weights stored in fewer bits, widened to float32 as they are read:
   - bf16: wt holds the upper 16 bits of float32 values (widening is exact);
   - int8: wt holds integers q with one float32 scale per output n, the weight q * scale[n]
     rounded to float32 once (weight_formats.py's dequantised weight).
   Either way the product is the float32 kernel's over the widened values, bit for bit. */
static inline float widen_fp32(const float *w, const float *sc, int64_t j) {
    (void)sc;
    return w[j];
}

static inline float widen_bf16(const uint16_t *w, const float *sc, int64_t j) {
    (void)sc;
    union { uint32_t i; float f; } v = {.i = (uint32_t)w[j] << 16};
    return v.f;
}

static inline float widen_int8(const int8_t *w, const float *sc, int64_t j) {
    return (float)w[j] * sc[j];
}

/* TILES(NAME, TYPE, WIDEN): NAME_full, R rows x NB outputs; NAME_part, fewer (rows, cols). */
#define TILES(NAME, TYPE, WIDEN)                                                                    \
    static __attribute__((unused)) void NAME##_full(const float *restrict x, const TYPE *restrict wt, \
                                                   const float *restrict sc, const float *restrict b, \
                                                   float *restrict y, int64_t K, int64_t N, int64_t ldx) { \
        float acc[R][NB];                                                                           \
        for (int r = 0; r < R; r++)                                                                 \
            for (int j = 0; j < NB; j++) acc[r][j] = b ? b[j] : 0.0f;                               \
        for (int64_t k = 0; k < K; k++) {                                                           \
            const TYPE *w = wt + k * N;                                                             \
            float wk[NB];                                                                           \
            for (int j = 0; j < NB; j++) wk[j] = WIDEN(w, sc, j);                                   \
            for (int r = 0; r < R; r++) {                                                           \
                const float xv = x[r * ldx + k];                                                    \
                for (int j = 0; j < NB; j++) acc[r][j] = fmaf(xv, wk[j], acc[r][j]);                \
            }                                                                                       \
        }                                                                                           \
        for (int r = 0; r < R; r++)                                                                 \
            for (int j = 0; j < NB; j++) y[r * N + j] = acc[r][j];                                  \
    }                                                                                               \
    static void NAME##_part(const float *restrict x, const TYPE *restrict wt, const float *restrict sc, \
                            const float *restrict b, float *restrict y, int64_t K, int64_t N,        \
                            int64_t ldx, int64_t rows, int64_t cols) {                              \
        for (int64_t r = 0; r < rows; r++) {                                                        \
            float acc[NB];                                                                          \
            for (int64_t j = 0; j < cols; j++) acc[j] = b ? b[j] : 0.0f;                            \
            for (int64_t k = 0; k < K; k++) {                                                       \
                const float xv = x[r * ldx + k];                                                    \
                const TYPE *w = wt + k * N;                                                         \
                for (int64_t j = 0; j < cols; j++) acc[j] = fmaf(xv, WIDEN(w, sc, j), acc[j]);      \
            }                                                                                       \
            for (int64_t j = 0; j < cols; j++) y[r * N + j] = acc[j];                               \
        }                                                                                           \
    }

TILES(fp32, float, widen_fp32)
TILES(bf16, uint16_t, widen_bf16)
TILES(int8, int8_t, widen_int8)

#if defined(__AVX512F__)
/* The tiles with AVX-512 intrinsics: the same operations per element (each weight widened
   exactly as above, then one fused multiply-add), so the same bits (tested against the build
   without -march=native). The one-row tile keeps its NB accumulators in four registers (as
   a plain array GCC keeps them on the stack), and an int8 weight takes one sign-extending
   load for 16 instead of GCC's two widenings and two extracts. */
#include <immintrin.h>

static inline __m512 widen16_fp32(const float *w, __m512 scale) {
    (void)scale;
    return _mm512_loadu_ps(w);
}

static inline __m512 widen16_bf16(const uint16_t *w, __m512 scale) {
    (void)scale;
    const __m512i bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)w));
    return _mm512_castsi512_ps(_mm512_slli_epi32(bits, 16));
}

static inline __m512 widen16_int8(const int8_t *w, __m512 scale) {
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)w))), scale);
}

#define VECTOR_TILES(NAME, TYPE, WIDEN16)                                                           \
    static inline __attribute__((always_inline)) void NAME##_vtile(                                 \
        const float *restrict x, const TYPE *restrict wt, const float *restrict sc, const float *restrict b, \
        float *restrict y, int64_t K, int64_t N, int64_t ldx, const int rows) {                     \
        __m512 acc[R][NV], s[NV];                                                                   \
        for (int v = 0; v < NV; v++) s[v] = sc ? _mm512_loadu_ps(sc + v * VL) : _mm512_setzero_ps(); \
        for (int r = 0; r < rows; r++)                                                              \
            for (int v = 0; v < NV; v++) acc[r][v] = b ? _mm512_loadu_ps(b + v * VL) : _mm512_setzero_ps(); \
        for (int64_t k = 0; k < K; k++) {                                                           \
            const TYPE *w = wt + k * N;                                                             \
            __m512 wk[NV];                                                                          \
            for (int v = 0; v < NV; v++) wk[v] = WIDEN16(w + v * VL, s[v]);                        \
            for (int r = 0; r < rows; r++) {                                                        \
                const __m512 xv = _mm512_set1_ps(x[r * ldx + k]);                                   \
                for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(xv, wk[v], acc[r][v]);     \
            }                                                                                       \
        }                                                                                           \
        for (int r = 0; r < rows; r++)                                                              \
            for (int v = 0; v < NV; v++) _mm512_storeu_ps(y + r * N + v * VL, acc[r][v]);          \
    }                                                                                               \
    static void NAME##_row(const float *restrict x, const TYPE *restrict wt, const float *restrict sc, \
                           const float *restrict b, float *restrict y, int64_t K, int64_t N) {      \
        NAME##_vtile(x, wt, sc, b, y, K, N, K, 1);                                                  \
    }

VECTOR_TILES(fp32, float, widen16_fp32)
VECTOR_TILES(bf16, uint16_t, widen16_bf16)
VECTOR_TILES(int8, int8_t, widen16_int8)

#define FULL_VTILE(NAME, TYPE)                                                                      \
    static void NAME##_full_v(const float *restrict x, const TYPE *restrict wt, const float *restrict sc, \
                              const float *restrict b, float *restrict y, int64_t K, int64_t N, int64_t ldx) { \
        NAME##_vtile(x, wt, sc, b, y, K, N, ldx, R);                                                \
    }
FULL_VTILE(fp32, float)
FULL_VTILE(bf16, uint16_t)
FULL_VTILE(int8, int8_t)
/* Many rows of float32 weights (a batched step over the widened copy, a prefill, the
   renderer's canvases): tiles of WR rows x WNB outputs, 16 accumulators, each weight vector
   loaded once for WR rows (the R x NB tile loads it for R = 4). The last rows of a column
   block take the same tile with fewer rows. The same operations per element as every
   other tile: bias, then one fmadd a product in k order. */
enum { WR = 8, WNB = 32, WNV = WNB / VL };

static inline __attribute__((always_inline)) void fp32_wtile(const float *restrict x, const float *restrict wt,
                                                             const float *restrict b, float *restrict y, int64_t K,
                                                             int64_t N, const int rows) {
    __m512 acc[WR][WNV];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < WNV; v++) acc[r][v] = b ? _mm512_loadu_ps(b + v * VL) : _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        const float *w = wt + k * N;
        __m512 wk[WNV];
        for (int v = 0; v < WNV; v++) {
            wk[v] = _mm512_loadu_ps(w + v * VL);
            /* a register, not a memory operand: for 4 rows or fewer GCC folded the load into
               every row's fused multiply-add, one load a product, and the tile ran at half the
               rate of 5 rows (throwaway microbenchmark, 2026-12-07, indicative) */
            __asm__("" : "+v"(wk[v]));
        }
        for (int r = 0; r < rows; r++) {
            const __m512 xv = _mm512_set1_ps(x[r * K + k]);
            for (int v = 0; v < WNV; v++) acc[r][v] = _mm512_fmadd_ps(xv, wk[v], acc[r][v]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < WNV; v++) _mm512_storeu_ps(y + r * N + v * VL, acc[r][v]);
}

static void fp32_many_rows(const float *x, const float *wt, const float *b, float *y, int64_t M, int64_t K,
                           int64_t N) {
    int64_t n0 = 0;
    for (; n0 + WNB <= N; n0 += WNB) {
        const float *bn = b ? b + n0 : 0;
        for (int64_t m0 = 0; m0 < M; m0 += WR) {
            const float *xm = x + m0 * K;
            float *ym = y + m0 * N + n0;
            switch (M - m0 < WR ? M - m0 : WR) { /* a constant row count each: registers */
            case 8: fp32_wtile(xm, wt + n0, bn, ym, K, N, 8); break;
            case 7: fp32_wtile(xm, wt + n0, bn, ym, K, N, 7); break;
            case 6: fp32_wtile(xm, wt + n0, bn, ym, K, N, 6); break;
            case 5: fp32_wtile(xm, wt + n0, bn, ym, K, N, 5); break;
            case 4: fp32_wtile(xm, wt + n0, bn, ym, K, N, 4); break;
            case 3: fp32_wtile(xm, wt + n0, bn, ym, K, N, 3); break;
            case 2: fp32_wtile(xm, wt + n0, bn, ym, K, N, 2); break;
            default: fp32_wtile(xm, wt + n0, bn, ym, K, N, 1); break;
            }
        }
    }
    if (n0 < N) /* the last outputs (fewer than WNB) */
        fp32_part(x, wt + n0, 0, b ? b + n0 : 0, y + n0, K, N, K, M, N - n0);
}
/* One row of bf16 weights, 128 outputs a tile (32 a tile for the last whole groups of 32):
   each 64-byte load holds 32 consecutive weights, whose even and odd ones widen by one shift
   and one mask (a 32-bit word holds two: the even weight in its low half); so the tile keeps
   the even outputs' and the odd outputs' accumulators apart and interleaves them once, at the
   store. Where the 64-output tile spends a widening load, a conversion and a shift on every 16
   weights, this spends half a load and one operation (a throwaway microbenchmark over the
   manager's matrices, 2026-12-07: ~1.4x the products a second, indicative). Each output: its bias, then one fmadd a
   product in k order over the exactly widened weight: the same bits as every other tile. */
static inline __attribute__((always_inline)) void bf16_pairs(const float *restrict x, const uint16_t *restrict wt,
                                                             const float *restrict b, float *restrict y, int64_t K,
                                                             int64_t N, const int groups) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512i lower = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i upper = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    __m512 ae[4], ao[4];
    for (int g = 0; g < groups; g++) {
        if (b) {
            const __m512 lo = _mm512_loadu_ps(b + g * 32), hi = _mm512_loadu_ps(b + g * 32 + VL);
            ae[g] = _mm512_permutex2var_ps(lo, even, hi);
            ao[g] = _mm512_permutex2var_ps(lo, odd, hi);
        } else
            ae[g] = ao[g] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < K; k++) {
        const uint16_t *w = wt + k * N;
        const __m512 xv = _mm512_set1_ps(x[k]);
        for (int g = 0; g < groups; g++) {
            const __m512i pair = _mm512_loadu_si512((const void *)(w + g * 32));
            ae[g] = _mm512_fmadd_ps(xv, _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16)), ae[g]);
            ao[g] = _mm512_fmadd_ps(xv, _mm512_castsi512_ps(_mm512_and_si512(pair, high)), ao[g]);
        }
    }
    for (int g = 0; g < groups; g++) {
        _mm512_storeu_ps(y + g * 32, _mm512_permutex2var_ps(ae[g], lower, ao[g]));
        _mm512_storeu_ps(y + g * 32 + VL, _mm512_permutex2var_ps(ae[g], upper, ao[g]));
    }
}

static void bf16_one_row(const float *x, const uint16_t *wt, const float *b, float *y, int64_t K, int64_t N) {
    int64_t n0 = 0;
    for (; n0 + 128 <= N; n0 += 128) bf16_pairs(x, wt + n0, b ? b + n0 : 0, y + n0, K, N, 4);
    for (; n0 + 32 <= N; n0 += 32) bf16_pairs(x, wt + n0, b ? b + n0 : 0, y + n0, K, N, 1);
    if (n0 < N) bf16_part(x, wt + n0, 0, b ? b + n0 : 0, y + n0, K, N, K, 1, N - n0);
}
#define FP32_MANY fp32_many_rows
#define BF16_ONE_ROW bf16_one_row
#define FP32_ROW fp32_row
#define BF16_ROW bf16_row
#define INT8_ROW int8_row
#define FP32_FULL fp32_full_v
#define BF16_FULL bf16_full_v
#define INT8_FULL int8_full_v
#else
#define FP32_MANY 0
#define BF16_ONE_ROW 0
#define FP32_ROW 0
#define BF16_ROW 0
#define INT8_ROW 0
#define FP32_FULL fp32_full
#define BF16_FULL bf16_full
#define INT8_FULL int8_full
#endif

/* y = x @ wt + b by tiles: full ones, the one-row tile where given (0: the partial one),
   else the partial one. */
#define PRODUCT(NAME, TYPE, FULL, ROW)                                                              \
    static void NAME##_product(const float *x, const TYPE *wt, const float *sc, const float *b, float *y, \
                               int64_t M, int64_t K, int64_t N) {                                   \
        void (*row)(const float *, const TYPE *, const float *, const float *, float *, int64_t, int64_t) = ROW; \
        for (int64_t n0 = 0; n0 < N; n0 += NB) {                                                    \
            const int64_t cols = N - n0 < NB ? N - n0 : NB;                                         \
            const float *bn = b ? b + n0 : 0, *sn = sc ? sc + n0 : 0;                               \
            for (int64_t m0 = 0; m0 < M; m0 += R) {                                                 \
                const int64_t rows = M - m0 < R ? M - m0 : R;                                       \
                if (rows == R && cols == NB)                                                        \
                    FULL(x + m0 * K, wt + n0, sn, bn, y + m0 * N + n0, K, N, K);                    \
                else if (row && rows == 1 && cols == NB)                                            \
                    row(x + m0 * K, wt + n0, sn, bn, y + m0 * N + n0, K, N);                        \
                else                                                                                \
                    NAME##_part(x + m0 * K, wt + n0, sn, bn, y + m0 * N + n0, K, N, K, rows, cols); \
            }                                                                                       \
        }                                                                                           \
    }

PRODUCT(fp32, float, FP32_FULL, FP32_ROW)
PRODUCT(bf16, uint16_t, BF16_FULL, BF16_ROW)
PRODUCT(int8, int8_t, INT8_FULL, INT8_ROW)

void rowwise_linear(const float *x, const float *wt, const float *b, float *y, int64_t M, int64_t K, int64_t N) {
    void (*many)(const float *, const float *, const float *, float *, int64_t, int64_t, int64_t) = FP32_MANY;
    if (many && M >= R) {
        many(x, wt, b, y, M, K, N);
        return;
    }
    fp32_product(x, wt, 0, b, y, M, K, N);
}

void rowwise_linear_bf16(const float *x, const uint16_t *wt, const float *scale, const float *b, float *y,
                         int64_t M, int64_t K, int64_t N) {
    (void)scale;
    void (*one)(const float *, const uint16_t *, const float *, float *, int64_t, int64_t) = BF16_ONE_ROW;
    if (one && M < R) { /* a decode step's rows: one at a time */
        for (int64_t m = 0; m < M; m++) one(x + m * K, wt, b, y + m * N, K, N);
        return;
    }
    bf16_product(x, wt, 0, b, y, M, K, N);
}

void rowwise_linear_int8(const float *x, const int8_t *wt, const float *scale, const float *b, float *y,
                         int64_t M, int64_t K, int64_t N) {
    int8_product(x, wt, scale, b, y, M, K, N);
}

/* rowwise_linear's operations without tiles, for the tests. */
void rowwise_linear_scalar(const float *x, const float *wt, const float *b, float *y, int64_t M, int64_t K,
                           int64_t N) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            float acc = b ? b[n] : 0.0f;
            for (int64_t k = 0; k < K; k++) acc = fmaf(x[m * K + k], wt[k * N + n], acc);
            y[m * N + n] = acc;
        }
}

void rowwise_gathered(const float *x, const float *wt_blocks, const int64_t *index, float *y,
                      int64_t M, int64_t K, int64_t N) {
    for (int64_t m = 0; m < M; m++) /* each row a one-row product over its own block */
        fp32_product(x + m * K, wt_blocks + index[m] * K * N, 0, 0, y + m * N, 1, K, N);
}
