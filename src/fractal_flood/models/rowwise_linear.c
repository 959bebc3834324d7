/* A linear layer whose every row is computed the same way, whatever the other rows are.

   y (M, N) = x (M, K) @ wt (K, N) + b (N), wt the weight transposed (K rows of N).

   Every output element is  b[n] + x[m][0] * wt[0][n] + x[m][1] * wt[1][n] + ...  in k
   order, each product and each sum rounded to float32 on its own: compiled with
   -ffp-contract=off (no fused multiply-add) and without -ffast-math (no reassociation),
   the vectorised tiles and the scalar remainders do the very same operations per element.
   So a row's result depends on nothing but that row and the weights: not on M, not on the
   row's place in the batch, not on the vector width the compiler picked. A BLAS library
   makes no such promise (it picks kernels and blockings by the matrix's shape).

   Vectorisation runs over n (the outputs), never over k, so no reduction is reordered.
   The tile of R rows x NB outputs keeps its accumulators in registers, and so does the
   one-row tile (a decode step's row, written with vector types); the last rows and
   outputs run the same operations with run-time bounds.

   rowwise_gathered: row m multiplies by its own matrix, wt_blocks + index[m] * K * N (the
   class-factored output layer's scores within each row's class).
*/
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { NB = 64, R = 4 };

/* One row of NB outputs, for a decode step's single row: the very operations of the tiles
   below (bias, then acc + x[k] * w for each k in order, w widened as read), written with
   GCC/Clang vector types so the NB accumulators stay in four registers (as plain arrays
   GCC keeps them on the stack, loading and storing them for every k). */
typedef float vrow __attribute__((vector_size(64))); /* 16 floats */
enum { VL = 16, NV = NB / VL };

static inline vrow vload(const float *p) {
    vrow v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ROW_TILE(NAME, TYPE, WIDEN): the one-row tile over weights widened by WIDEN(w, sc, j)
   (the WIDE_TILES' widening below; widen_fp32 for float32), row k's NB weights widened into
   wk first (a loop the compiler vectorises), then added in. */
#define ROW_TILE(NAME, TYPE, WIDEN)                                                                 \
    static __attribute__((unused)) void NAME(const float *restrict x, const TYPE *restrict wt, const float *restrict scale, \
                     const float *restrict b, float *restrict y, int64_t K, int64_t N) {            \
        vrow acc[NV];                                                                                \
        float wk[NB] __attribute__((aligned(64)));                                                   \
        for (int v = 0; v < NV; v++) acc[v] = b ? vload(b + v * VL) : (vrow){0};                     \
        for (int64_t k = 0; k < K; k++) {                                                            \
            const TYPE *w = wt + k * N;                                                              \
            for (int j = 0; j < NB; j++) wk[j] = WIDEN(w, scale, j);                                 \
            const float xv = x[k];                                                                   \
            for (int v = 0; v < NV; v++) acc[v] = acc[v] + xv * vload(wk + v * VL);                  \
        }                                                                                            \
        memcpy(y, acc, sizeof acc);                                                                  \
    }

static inline float widen_fp32(const float *w, const float *sc, int64_t j) {
    (void)sc;
    return w[j];
}

ROW_TILE(row_fp32, float, widen_fp32)

/* The float32 tiles, over one multiply-add step MAC(acc, x, w): mac_plain (acc + x * w, two
   roundings: rowwise_linear) or mac_fused (fmaf(x, w, acc), one rounding:
   rowwise_linear_fma, the same product with each step a fused multiply-add; still a fixed
   sequence of operations per row, so a row is the same alone or in any batch, and fmaf is
   correctly rounded wherever it runs (one instruction on CPUs with FMA, a library call
   elsewhere), so the same bits on every CPU; half the arithmetic instructions; the eager
   prefills take it, rowwise_linear.py). NAME_full: R rows x NB outputs; NAME_part: fewer. */
static inline float mac_plain(float acc, float x, float w) { return acc + x * w; }
static inline float mac_fused(float acc, float x, float w) { return fmaf(x, w, acc); }

#define FLOAT_TILES(NAME, MAC)                                                                      \
    static void NAME##_full(const float *restrict x, const float *restrict wt, const float *restrict b, \
                            float *restrict y, int64_t K, int64_t N, int64_t ldx) {                 \
        float acc[R][NB];                                                                           \
        for (int r = 0; r < R; r++)                                                                 \
            for (int j = 0; j < NB; j++) acc[r][j] = b ? b[j] : 0.0f;                               \
        for (int64_t k = 0; k < K; k++) {                                                           \
            const float *w = wt + k * N;                                                            \
            for (int r = 0; r < R; r++) {                                                           \
                const float xv = x[r * ldx + k];                                                    \
                for (int j = 0; j < NB; j++) acc[r][j] = MAC(acc[r][j], xv, w[j]);                  \
            }                                                                                       \
        }                                                                                           \
        for (int r = 0; r < R; r++)                                                                 \
            for (int j = 0; j < NB; j++) y[r * N + j] = acc[r][j];                                  \
    }                                                                                               \
    static void NAME##_part(const float *restrict x, const float *restrict wt, const float *restrict b, \
                            float *restrict y, int64_t K, int64_t N, int64_t ldx, int64_t rows,     \
                            int64_t cols) {                                                         \
        for (int64_t r = 0; r < rows; r++) {                                                        \
            float acc[NB];                                                                          \
            for (int64_t j = 0; j < cols; j++) acc[j] = b ? b[j] : 0.0f;                            \
            for (int64_t k = 0; k < K; k++) {                                                       \
                const float xv = x[r * ldx + k];                                                    \
                const float *w = wt + k * N;                                                        \
                for (int64_t j = 0; j < cols; j++) acc[j] = MAC(acc[j], xv, w[j]);                  \
            }                                                                                       \
            for (int64_t j = 0; j < cols; j++) y[r * N + j] = acc[j];                               \
        }                                                                                           \
    }

FLOAT_TILES(tile, mac_plain)
FLOAT_TILES(tile_fma, mac_fused)

typedef void (*full_tile)(const float *, const float *, const float *, float *, int64_t, int64_t, int64_t);
typedef void (*part_tile)(const float *, const float *, const float *, float *, int64_t, int64_t, int64_t, int64_t,
                          int64_t);

/* y = x @ wt + b by tiles: full ones, the one-row tile (row_fp32, separate multiply and add)
   where given, else the partial one. */
static void float_product(const float *x, const float *wt, const float *b, float *y, int64_t M, int64_t K, int64_t N,
                          full_tile full, part_tile part, int one_row) {
    for (int64_t n0 = 0; n0 < N; n0 += NB) {
        const int64_t cols = N - n0 < NB ? N - n0 : NB;
        const float *bn = b ? b + n0 : 0;
        for (int64_t m0 = 0; m0 < M; m0 += R) {
            const int64_t rows = M - m0 < R ? M - m0 : R;
            if (rows == R && cols == NB)
                full(x + m0 * K, wt + n0, bn, y + m0 * N + n0, K, N, K);
            else if (one_row && rows == 1 && cols == NB)
                row_fp32(x + m0 * K, wt + n0, 0, bn, y + m0 * N + n0, K, N);
            else
                part(x + m0 * K, wt + n0, bn, y + m0 * N + n0, K, N, K, rows, cols);
        }
    }
}

void rowwise_linear(const float *x, const float *wt, const float *b, float *y,
                    int64_t M, int64_t K, int64_t N) {
    float_product(x, wt, b, y, M, K, N, tile_full, tile_part, 1);
}

void rowwise_linear_fma(const float *x, const float *wt, const float *b, float *y, int64_t M, int64_t K, int64_t N) {
    float_product(x, wt, b, y, M, K, N, tile_fma_full, tile_fma_part, 0);
}

/* rowwise_linear_fma's operations without tiles, for the tests. */
void rowwise_linear_fma_scalar(const float *x, const float *wt, const float *b, float *y, int64_t M, int64_t K,
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
    for (int64_t m = 0; m < M; m++) {
        const float *wt = wt_blocks + index[m] * K * N;
        for (int64_t n0 = 0; n0 < N; n0 += NB) {
            const int64_t cols = N - n0 < NB ? N - n0 : NB;
            tile_part(x + m * K, wt + n0, 0, y + m * N + n0, K, N, K, 1, cols);
        }
    }
}

/* The same layer with its weights stored in fewer bits, each weight widened to float32 as
   it is read and then used exactly as above (bias, then each product added in k order):
   - bf16: wt holds the upper 16 bits of float32 values (widening is exact), so the result
     is rowwise_linear's over those float32 values, bit for bit;
   - int8: wt holds integers q with one float32 scale per output n, the weight q * scale[n]
     rounded to float32 once (weight_formats.py's dequantised weight), so the result is
     rowwise_linear's over the dequantised weights, bit for bit.
   Fewer bytes stream from memory a step (a half, a quarter); the widening costs an
   operation or two per product. */
#define WIDE_TILES(NAME, TYPE, WIDEN, ROW, FULL)                                                            \
    static __attribute__((unused)) void NAME##_full(const float *restrict x, const TYPE *restrict wt, const float *restrict sc, \
                            const float *restrict b, float *restrict y, int64_t K, int64_t N,        \
                            int64_t ldx) {                                                          \
        float acc[R][NB];                                                                           \
        for (int r = 0; r < R; r++)                                                                 \
            for (int j = 0; j < NB; j++) acc[r][j] = b ? b[j] : 0.0f;                               \
        for (int64_t k = 0; k < K; k++) {                                                           \
            const TYPE *w = wt + k * N;                                                             \
            float wk[NB];                                                                           \
            for (int j = 0; j < NB; j++) wk[j] = WIDEN(w, sc, j);                                   \
            for (int r = 0; r < R; r++) {                                                           \
                const float xv = x[r * ldx + k];                                                    \
                for (int j = 0; j < NB; j++) acc[r][j] += xv * wk[j];                               \
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
                for (int64_t j = 0; j < cols; j++) acc[j] += xv * WIDEN(w, sc, j);                  \
            }                                                                                       \
            for (int64_t j = 0; j < cols; j++) y[r * N + j] = acc[j];                               \
        }                                                                                           \
    }                                                                                               \
    void NAME(const float *x, const TYPE *wt, const float *scale, const float *b, float *y,         \
              int64_t M, int64_t K, int64_t N) {                                                    \
        for (int64_t n0 = 0; n0 < N; n0 += NB) {                                                    \
            const int64_t cols = N - n0 < NB ? N - n0 : NB;                                         \
            const float *bn = b ? b + n0 : 0, *sn = scale ? scale + n0 : 0;                         \
            for (int64_t m0 = 0; m0 < M; m0 += R) {                                                 \
                const int64_t rows = M - m0 < R ? M - m0 : R;                                       \
                if (rows == R && cols == NB)                                                        \
                    FULL(x + m0 * K, wt + n0, sn, bn, y + m0 * N + n0, K, N, K);                    \
                else if (rows == 1 && cols == NB)                                                   \
                    ROW(x + m0 * K, wt + n0, sn, bn, y + m0 * N + n0, K, N);                        \
                else                                                                                \
                    NAME##_part(x + m0 * K, wt + n0, sn, bn, y + m0 * N + n0, K, N, K, rows, cols); \
            }                                                                                       \
        }                                                                                           \
    }

static inline float widen_bf16(const uint16_t *w, const float *sc, int64_t j) {
    (void)sc;
    union { uint32_t i; float f; } v = {.i = (uint32_t)w[j] << 16};
    return v.f;
}

static inline float widen_int8(const int8_t *w, const float *sc, int64_t j) {
    return (float)w[j] * sc[j];
}

ROW_TILE(row_bf16, uint16_t, widen_bf16)
ROW_TILE(row_int8_c, int8_t, widen_int8)

#if defined(__AVX512F__)
/* int8 tiles with AVX-512 intrinsics: the same operations per element (each weight
   converted to float32, exactly, times its scale, rounded; then bias + x * w in k order, no
   fused multiply-add), so the same bits as the tiles above (tested against the build
   without -march=native). Each 16 weights take one sign-extending load instead of GCC's
   two widenings and two extracts, the port they share being what bounds the one-row tile. */
#include <immintrin.h>

static inline __m512 widen16_int8(const int8_t *w, __m512 scale) {
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)w))), scale);
}

static inline __attribute__((always_inline)) void int8_tile(const float *restrict x, const int8_t *restrict wt,
                                                            const float *restrict sc, const float *restrict b,
                                                            float *restrict y, int64_t K, int64_t N, int64_t ldx,
                                                            const int rows) {
    __m512 acc[R][NV], s[NV];
    for (int v = 0; v < NV; v++) s[v] = _mm512_loadu_ps(sc + v * VL);
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = b ? _mm512_loadu_ps(b + v * VL) : _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        const int8_t *w = wt + k * N;
        __m512 wk[NV];
        for (int v = 0; v < NV; v++) wk[v] = widen16_int8(w + v * VL, s[v]);
        for (int r = 0; r < rows; r++) {
            const __m512 xv = _mm512_set1_ps(x[r * ldx + k]);
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_add_ps(acc[r][v], _mm512_mul_ps(xv, wk[v]));
        }
    }
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < NV; v++) _mm512_storeu_ps(y + r * N + v * VL, acc[r][v]);
}

static void row_int8(const float *restrict x, const int8_t *restrict wt, const float *restrict sc,
                     const float *restrict b, float *restrict y, int64_t K, int64_t N) {
    int8_tile(x, wt, sc, b, y, K, N, K, 1);
}

static void full_int8(const float *restrict x, const int8_t *restrict wt, const float *restrict sc,
                      const float *restrict b, float *restrict y, int64_t K, int64_t N, int64_t ldx) {
    int8_tile(x, wt, sc, b, y, K, N, ldx, R);
}
#else
#define row_int8 row_int8_c
#define full_int8 rowwise_linear_int8_full
#endif

WIDE_TILES(rowwise_linear_bf16, uint16_t, widen_bf16, row_bf16, rowwise_linear_bf16_full)
WIDE_TILES(rowwise_linear_int8, int8_t, widen_int8, row_int8, full_int8)
