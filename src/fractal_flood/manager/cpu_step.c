/* One decode step of the GPT-2 shaped causal transformer (manager or AR peer) on the CPU,
   all layers in one call: embeddings, per layer (layer norm, qkv product, this step's key
   and value written into the cache, attention over the row's own cache slots 0..pos,
   output projection + residual, layer norm, MLP product + GELU (tanh), projection +
   residual), the final layer norm; decode_and_draw then runs the output layer and draws
   each row's next token (cpu_draw.c), so a whole step is one call.

   Rows are independent: every row is computed by the same fixed sequence of float32
   operations whatever the other rows are (the linear layers are rowwise_linear.c's; sums
   and dot products here use 16 fixed lanes and a fixed tree), so a row's hidden state is
   the same alone or in any batch, by construction. Against the eager step (PyTorch) it
   differs by summation order and the exponential's last bits (tests hold it within a
   stated tolerance).

   params: pointers as int64, [wte, wpe, ln_f.weight, ln_f.bias] then per layer PER_LAYER:
   ln_1 w, b; c_attn weight transposed (C, 3C), bias; attn c_proj transposed (C, C), bias;
   ln_2 w, b; c_fc transposed (C, 4C), bias; mlp c_proj transposed (4C, C), bias; the
   layer's key cache and value cache (rows, heads, L, head_dim), float32; then the four
   matrices' int8 scales (or 0); then the four matrices widened to float32, transposed (or 0:
   fp32 and w8a8). wfmt: how the four matrices are stored, 0 float32, 1 bfloat16, 2 int8 with
   one scale per output (rowwise_linear.c; weight_formats.py).

   Batched rows (WIDE_ROWS or more) multiply by the widened copy: rowwise_linear over the
   weights the bf16 and int8 tiles widen as they read (weight_formats.dequantized), which is
   those tiles' result bit for bit (each weight widened exactly as they widen it, then the
   same operations), without widening every weight again for every four rows. A single row
   keeps the stored bits, a quarter or half of the bytes to read. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../models/cpu_math.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

void rowwise_linear(const float *x, const float *wt, const float *b, float *y,
                    int64_t M, int64_t K, int64_t N);
void rowwise_linear_bf16(const float *x, const uint16_t *wt, const float *scale, const float *b, float *y,
                         int64_t M, int64_t K, int64_t N);
void rowwise_linear_int8(const float *x, const int8_t *wt, const float *scale, const float *b, float *y,
                         int64_t M, int64_t K, int64_t N);
int w8a8_linear(const float *x, const int8_t *wp, const float *sc, const float *b, float *y, int64_t M, int64_t K,
                int64_t N);
int draw_rows(const float *h, int64_t M, int64_t C, int64_t classes, int64_t per_class,
              const float *class_wt, const float *token_wt, int64_t lanes, int64_t simd,
              const int64_t *seeds, const int64_t *steps, const float *temperature, int64_t *ids);

enum { PER_LAYER = 22, WIDE_ROWS = 4 };

static int linear(int64_t wfmt, const float *x, const void *wt, const float *scale, const float *wide, const float *b,
                  float *y, int64_t M, int64_t K, int64_t N) {
    if (wfmt == 3) return w8a8_linear(x, (const int8_t *)wt, scale, b, y, M, K, N);
    if (wide && M >= WIDE_ROWS)
        rowwise_linear(x, wide, b, y, M, K, N);
    else if (wfmt == 1)
        rowwise_linear_bf16(x, (const uint16_t *)wt, scale, b, y, M, K, N);
    else if (wfmt == 2)
        rowwise_linear_int8(x, (const int8_t *)wt, scale, b, y, M, K, N);
    else
        rowwise_linear(x, (const float *)wt, b, y, M, K, N);
    return 0;
}

/* Attention of one row, every head: q (H * hd) against the row's keys at slots 0..p of each
   head (head h's slots start at keys + h * L * hd, likewise values); out (H * hd); scores
   (H * L) scratch. Per head: each key's score is lane_dot's times scale, the maximum (exact
   in any order) is taken 16 scores at a time, e^(score - max) 16 at a time, the total by
   lane_sum, and each output element sums e_j * v_j[d] over j in order and is divided by the
   total. With hd a multiple of 16 (at most GROUP_VECS * 16) those sums run in registers, 16
   elements at a time for a group of heads at once (independent chains, which overlap); other
   head sizes take scalar loops. The same operations per element either way. */
enum { GROUP_VECS = 8 };

static inline __attribute__((always_inline)) void weigh_values(const float *scores, const float *values,
                                                               int64_t n, int64_t L, int64_t hd,
                                                               const float *totals, float *out,
                                                               const int nv, const int heads) {
    vfloat acc[GROUP_VECS];
    for (int i = 0; i < nv * heads; i++) acc[i] = (vfloat){0};
    for (int64_t j = 0; j < n; j++)
        for (int g = 0; g < heads; g++) {
            const float e = scores[g * L + j];
            const float *v = values + (g * L + j) * hd;
            for (int u = 0; u < nv; u++) {
                vfloat vv;
                memcpy(&vv, v + u * VW, sizeof vv);
                acc[g * nv + u] = acc[g * nv + u] + e * vv;
            }
        }
    for (int g = 0; g < heads; g++)
        for (int u = 0; u < nv; u++) {
            const vfloat o = acc[g * nv + u] / totals[g];
            memcpy(out + g * hd + u * VW, &o, sizeof o);
        }
}

/* Scores of keys j0..j1-1 (rows of hd floats, hd a multiple of 16; j1 - j0 a multiple of 16)
   against q: lane_tree(lane_products(q, key, hd)) * scale each, into out[j0..j1-1], 16 keys at
   a time with AVX-512: each key's 16 lane products as one key at a time takes them, then
   lane_tree's additions for the 16 keys together by shuffles, in the same pairs (lane l + 8
   into l, then + 4, + 2, + 1; a float addition's operands commute, so only the pairs
   matter): the same bits as one key at a time (tested, attention_scores_both), 45 vector
   operations instead of ~150 for the trees. */
#if defined(__AVX512F__)
static inline __attribute__((always_inline)) void scores16(const float *q, const float *keys, int64_t j0, int64_t j1,
                                                           int64_t hd, float scale, float *out) {
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512 sc = _mm512_set1_ps(scale);
    for (int64_t j = j0; j + 16 <= j1; j += 16) {
        __m512 p[16], a[8], b[4], c[2];
        for (int t = 0; t < 16; t++) {
            __m512 acc = _mm512_setzero_ps();
            for (int64_t i = 0; i < hd; i += 16)
                acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(keys + (j + t) * hd + i)));
            p[t] = acc;
        }
        for (int t = 0; t < 8; t++) /* lanes 0-7 + 8-15: key 2t in quarters 0-1, key 2t+1 in 2-3 */
            a[t] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * t], p[2 * t + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_f32x4(p[2 * t], p[2 * t + 1], _MM_SHUFFLE(3, 2, 3, 2)));
        for (int t = 0; t < 4; t++) /* + 4: quarter u holds key 4t + u's four lanes */
            b[t] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * t], a[2 * t + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_f32x4(a[2 * t], a[2 * t + 1], _MM_SHUFFLE(3, 1, 3, 1)));
        for (int t = 0; t < 2; t++) /* + 2: quarter u holds (a, b) of keys 8t + u and 8t + 4 + u */
            c[t] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * t], b[2 * t + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(b[2 * t], b[2 * t + 1], _MM_SHUFFLE(3, 2, 3, 2)));
        /* + 1: quarter u holds the sums of keys u, 4 + u, 8 + u, 12 + u */
        const __m512 s = _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                       _mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
        _mm512_storeu_ps(out + j, _mm512_permutexvar_ps(order, _mm512_mul_ps(s, sc)));
    }
}
#endif

static void attend_row(const float *q, const float *keys, const float *values, int64_t p, int64_t H,
                       int64_t hd, int64_t L, float scale, float *scores, float *totals, float *out) {
    const int64_t n = p + 1;
    const int fast = hd % VW == 0 && hd / VW <= GROUP_VECS;
    if (fast) {
        int64_t j = 0;
#if defined(__AVX512F__)
        for (; j + 16 <= n; j += 16) /* a block of keys of every head: H streams through the cache */
            for (int64_t h = 0; h < H; h++)
                scores16(q + h * hd, keys + h * L * hd, j, j + 16, hd, scale, scores + h * L);
#endif
        for (; j < n; j++)
            for (int64_t h = 0; h < H; h++)
                scores[h * L + j] = lane_tree(lane_products(q + h * hd, keys + (h * L + j) * hd, hd)) * scale;
    }
    else
        for (int64_t j = 0; j < n; j++)
            for (int64_t h = 0; h < H; h++)
                scores[h * L + j] = lane_dot(q + h * hd, keys + (h * L + j) * hd, hd) * scale;
    for (int64_t h = 0; h < H; h++) {
        float *sc = scores + h * L, mx = -INFINITY;
        int64_t j = 0;
        if (n >= VW) {
            vfloat m, z;
            memcpy(&m, sc, sizeof m);
            for (j = VW; j + VW <= n; j += VW) {
                memcpy(&z, sc + j, sizeof z);
                m = vselect(z > m, z, m);
            }
            for (int l = 0; l < VW; l++) mx = m[l] > mx ? m[l] : mx;
        }
        for (; j < n; j++) mx = sc[j] > mx ? sc[j] : mx;
        for (j = 0; j + VW <= n; j += VW) {
            vfloat z;
            memcpy(&z, sc + j, sizeof z);
            z = exp_approx_vec(z - mx);
            memcpy(sc + j, &z, sizeof z);
        }
        if (j < n) store_tail(sc + j, exp_approx_vec(vload_tail(sc + j, n - j) - mx), n - j);
        totals[h] = lane_sum(sc, n);
    }
    if (fast) {
        const int nv = (int)(hd / VW);
        int g = GROUP_VECS / nv;
        while (H % g) g /= 2;
        for (int64_t h = 0; h < H; h += g) {
            const float *sc = scores + h * L, *v = values + h * L * hd, *t = totals + h;
            float *o = out + h * hd;
#define WEIGH(NV, G) \
    if (nv == NV && g == G) weigh_values(sc, v, n, L, hd, t, o, NV, G)
            WEIGH(1, 8); else WEIGH(1, 4); else WEIGH(1, 2); else WEIGH(1, 1);
            else WEIGH(2, 4); else WEIGH(2, 2); else WEIGH(2, 1);
            else WEIGH(4, 2); else WEIGH(4, 1); else WEIGH(8, 1);
#undef WEIGH
        }
        return;
    }
    for (int64_t h = 0; h < H; h++) {
        const float *sc = scores + h * L;
        float *o = out + h * hd;
        for (int64_t d = 0; d < hd; d++) o[d] = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            const float e = sc[j];
            const float *v = values + (h * L + j) * hd;
            for (int64_t d = 0; d < hd; d++) o[d] = o[d] + e * v[d];
        }
        for (int64_t d = 0; d < hd; d++) o[d] = o[d] / totals[h];
    }
}

/* tok, pos (M,): each row's token and its position; row m's cache row is row0 + m * row_step.
   out (M, C): final hidden states. Rows are taken in order, each writing its key and value
   before it attends: with row_step 0 and positions 0..M-1 the rows are one cache row's
   prompt, each attending to those before it (a prefill). out NULL: only the caches are
   wanted (a prefill's hidden states feed nothing), so the last layer stops once its keys
   and values are written: its attention, projection and MLP, a quarter of the products,
   would only make the hidden states. The keys and values are the same bits either way.
   Returns 0, or -1 when out of memory. */
static int layers(const int64_t *params, int64_t n_layers, int64_t wfmt, const int64_t *tok, const int64_t *pos,
                  int64_t M, int64_t row0, int64_t row_step, int64_t C, int64_t n_heads, int64_t L, float eps,
                  float *out) {
    const float *wte = (const float *)params[0], *wpe = (const float *)params[1];
    const int64_t hd = C / n_heads, F = 4 * C;
    float *buf = malloc(sizeof(float) * (size_t)(M * (C + C + 3 * C + C + F + C) + n_heads * (L + 1) + C));
    if (!buf) return -1;
    float *x = buf, *xn = x + M * C, *qkv = xn + M * C, *att = qkv + M * 3 * C, *h = att + M * C,
          *y = h + M * F, *scores = y + M * C, *tmp = scores + n_heads * (L + 1);
    const float scale = 1.0f / sqrtf((float)hd);

    for (int64_t m = 0; m < M; m++)
        for (int64_t i = 0; i < C; i++) x[m * C + i] = wte[tok[m] * C + i] + wpe[pos[m] * C + i];

    int failed = 0;
    for (int64_t layer = 0; layer < n_layers; layer++) {
        const int64_t *p = params + 4 + layer * PER_LAYER;
        const float *ln1w = (const float *)p[0], *ln1b = (const float *)p[1];
        const void *attn_wt = (const void *)p[2], *proj_wt = (const void *)p[4];
        const void *fc_wt = (const void *)p[8], *mp_wt = (const void *)p[10];
        const float *attn_b = (const float *)p[3], *proj_b = (const float *)p[5];
        const float *ln2w = (const float *)p[6], *ln2b = (const float *)p[7];
        const float *fc_b = (const float *)p[9], *mp_b = (const float *)p[11];
        float *kcache = (float *)p[12], *vcache = (float *)p[13];
        const float *attn_s = (const float *)p[14], *proj_s = (const float *)p[15];
        const float *fc_s = (const float *)p[16], *mp_s = (const float *)p[17];
        const float *attn_w = (const float *)p[18], *proj_w = (const float *)p[19];
        const float *fc_w = (const float *)p[20], *mp_w = (const float *)p[21];

        for (int64_t m = 0; m < M; m++) layer_norm(x + m * C, ln1w, ln1b, xn + m * C, C, eps, tmp);
        if ((failed = linear(wfmt, xn, attn_wt, attn_s, attn_w, attn_b, qkv, M, C, 3 * C)) != 0) break;
        const int cache_only = !out && layer == n_layers - 1;
        for (int64_t m = 0; m < M; m++) {
            const int64_t r = row0 + m * row_step, at = pos[m];
            float *keys = kcache + r * n_heads * L * hd, *values = vcache + r * n_heads * L * hd;
            for (int64_t hh = 0; hh < n_heads; hh++) {
                memcpy(keys + (hh * L + at) * hd, qkv + m * 3 * C + C + hh * hd, sizeof(float) * hd);
                memcpy(values + (hh * L + at) * hd, qkv + m * 3 * C + 2 * C + hh * hd, sizeof(float) * hd);
            }
            if (!cache_only)
                attend_row(qkv + m * 3 * C, keys, values, at, n_heads, hd, L, scale, scores, scores + n_heads * L,
                           att + m * C);
        }
        if (cache_only) break;
        if ((failed = linear(wfmt, att, proj_wt, proj_s, proj_w, proj_b, y, M, C, C)) != 0) break;
        for (int64_t i = 0; i < M * C; i++) x[i] = x[i] + y[i];
        for (int64_t m = 0; m < M; m++) layer_norm(x + m * C, ln2w, ln2b, xn + m * C, C, eps, tmp);
        if ((failed = linear(wfmt, xn, fc_wt, fc_s, fc_w, fc_b, h, M, C, F)) != 0) break;
        gelu_tanh(h, M * F);
        if ((failed = linear(wfmt, h, mp_wt, mp_s, mp_w, mp_b, y, M, F, C)) != 0) break;
        for (int64_t i = 0; i < M * C; i++) x[i] = x[i] + y[i];
    }
    if (failed) {
        free(buf);
        return -1;
    }
    const float *lnfw = (const float *)params[2], *lnfb = (const float *)params[3];
    if (out)
        for (int64_t m = 0; m < M; m++) layer_norm(x + m * C, lnfw, lnfb, out + m * C, C, eps, tmp);
    free(buf);
    return 0;
}

/* tok, pos (M,): each row's pending token and its position; cache rows row0 .. row0+M-1.
   out (M, C): final hidden states. Returns 0, or -1 when out of memory. */
int decode_step(const int64_t *params, int64_t n_layers, int64_t wfmt, const int64_t *tok, const int64_t *pos,
                int64_t M, int64_t row0, int64_t C, int64_t n_heads, int64_t L, float eps, float *out) {
    return layers(params, n_layers, wfmt, tok, pos, M, row0, 1, C, n_heads, L, eps, out);
}

/* A prefill: tokens tok (T,) at positions 0..T-1 into cache row `row` (T <= L), each
   attending to those before it; out (T, C) their final hidden states, or NULL (the caches
   only: layers' note). The step's operations position by position (a row of the batch
   each), so a prompt prefilled here in a stream's row and in a slot's row writes the same
   cache bits. Returns 0, or -1 when out of memory. */
int decode_prefill(const int64_t *params, int64_t n_layers, int64_t wfmt, const int64_t *tok, int64_t T,
                   int64_t row, int64_t C, int64_t n_heads, int64_t L, float eps, float *out) {
    if (T > L) return -2;
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)(T > 0 ? T : 1));
    if (!pos) return -1;
    for (int64_t t = 0; t < T; t++) pos[t] = t;
    const int failed = layers(params, n_layers, wfmt, tok, pos, T, row, 0, C, n_heads, L, eps, out);
    free(pos);
    return failed;
}

/* decode_step, then each row's next token into ids (M,) (it may be tok itself: the step has
   read it). head: [classes, per_class, class weight transposed, token weight transposed,
   lanes, simd] as int64, cpu_draw.c's draw_rows arguments; seeds, steps (M,) int64,
   temperature (M,) float32. Returns 0, or draw_rows's error (-1: out of memory). */
int decode_and_draw(const int64_t *params, int64_t n_layers, int64_t wfmt, const int64_t *tok, const int64_t *pos,
                    int64_t M, int64_t row0, int64_t C, int64_t n_heads, int64_t L, float eps, float *out,
                    const int64_t *head, const int64_t *seeds, const int64_t *steps,
                    const float *temperature, int64_t *ids) {
    if (decode_step(params, n_layers, wfmt, tok, pos, M, row0, C, n_heads, L, eps, out)) return -1;
    return draw_rows(out, M, C, head[0], head[1], (const float *)head[2], (const float *)head[3], head[4],
                     head[5], seeds, steps, temperature, ids);
}

/* One step of the slot cache's rows 0..M-1, each at its own position, with its bookkeeping:
   row m writes its pending token tok[m] into window[m * wstride + pos[m]], steps (its cache
   row row0 + m at pos[m]), draws the next one into tok[m] and ids[m * istride], and adds 1 to
   pos[m] and steps[m]. The same operations as decode_and_draw, then the updates the caller
   made with tensor operations. Returns 0, -2 when a position is outside 0 .. min(L, wcols) - 1
   (nothing written), or draw_rows's error (-1: out of memory). */
int decode_draw_slots(const int64_t *params, int64_t n_layers, int64_t wfmt, int64_t *tok, int64_t *pos,
                      int64_t M, int64_t row0, int64_t C, int64_t n_heads, int64_t L, float eps, float *out,
                      const int64_t *head, const int64_t *seeds, int64_t *steps, const float *temperature,
                      int64_t *window, int64_t wstride, int64_t wcols, int64_t *ids, int64_t istride) {
    for (int64_t m = 0; m < M; m++)
        if (pos[m] < 0 || pos[m] >= L || pos[m] >= wcols) return -2;
    for (int64_t m = 0; m < M; m++) window[m * wstride + pos[m]] = tok[m];
    if (decode_and_draw(params, n_layers, wfmt, tok, pos, M, row0, C, n_heads, L, eps, out, head, seeds, steps,
                        temperature, tok))
        return -1;
    for (int64_t m = 0; m < M; m++) {
        ids[m * istride] = tok[m];
        pos[m] += 1;
        steps[m] += 1;
    }
    return 0;
}

/* n steps of decode_and_draw for M rows that share one position (a stream): step s writes
   each row's pending token tok[m] into window[m * wstride + pos0 + s] (when window is not
   NULL), runs the step at position pos0 + s, writes the drawn token into tok[m] (the next
   pending one) and ids[m * istride + s], and adds 1 to steps[m]. The caller keeps
   pos0 + n <= L (the window slides between calls). The same operations as n single calls,
   in the same order: the same tokens, bit for bit. Returns 0, or -1 when out of memory. */
int decode_draw_steps(const int64_t *params, int64_t n_layers, int64_t wfmt, int64_t *tok, int64_t pos0,
                      int64_t M, int64_t row0, int64_t C, int64_t n_heads, int64_t L, float eps, float *out,
                      const int64_t *head, const int64_t *seeds, int64_t *steps, const float *temperature,
                      int64_t n, int64_t *window, int64_t wstride, int64_t *ids, int64_t istride) {
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)M);
    if (!pos) return -1;
    for (int64_t s = 0; s < n; s++) {
        for (int64_t m = 0; m < M; m++) {
            pos[m] = pos0 + s;
            if (window) window[m * wstride + pos0 + s] = tok[m];
        }
        if (decode_and_draw(params, n_layers, wfmt, tok, pos, M, row0, C, n_heads, L, eps, out, head, seeds,
                            steps, temperature, tok)) {
            free(pos);
            return -1;
        }
        for (int64_t m = 0; m < M; m++) {
            ids[m * istride + s] = tok[m];
            steps[m] += 1;
        }
    }
    free(pos);
    return 0;
}

/* For the tests: the scores of n keys (rows of hd floats, hd a multiple of 16) against q as
   attend_row takes them (scores16 over the whole blocks of 16, one key at a time after) into
   vec, and one key at a time by lane_tree's definition into scalar: the two must agree bit
   for bit. */
void attention_scores_both(const float *q, const float *keys, int64_t n, int64_t hd, float scale, float *vec,
                           float *scalar) {
    int64_t j = 0;
#if defined(__AVX512F__)
    j = n / 16 * 16;
    scores16(q, keys, 0, j, hd, scale, vec);
#endif
    for (; j < n; j++) vec[j] = lane_tree(lane_products(q, keys + j * hd, hd)) * scale;
    for (j = 0; j < n; j++) scalar[j] = lane_tree(lane_products(q, keys + j * hd, hd)) * scale;
}

/* For the tests: e^x of n floats by the 16-lane path as the step takes it (whole blocks of
   16, then a zero-padded tail) into vec, and by the scalar definition into scalar: the two
   must agree bit for bit. */
void exp_both(const float *x, int64_t n, float *vec, float *scalar) {
    int64_t i = 0;
    for (; i + VW <= n; i += VW) {
        vfloat z;
        memcpy(&z, x + i, sizeof z);
        z = exp_approx_vec(z);
        memcpy(vec + i, &z, sizeof z);
    }
    if (i < n) store_tail(vec + i, exp_approx_vec(vload_tail(x + i, n - i)), n - i);
    for (i = 0; i < n; i++) scalar[i] = exp_approx(x[i]);
}
