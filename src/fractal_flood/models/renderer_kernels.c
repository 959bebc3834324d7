/* The renderer's inference kernels on the CPU: its bidirectional attention over a few
   positions and its tanh GELU, where PyTorch's operators spend most of a render pass in
   per-call overhead (flash attention for a handful of positions, GELU's tanh).

   attention: qkv (B, T, 3C) as the qkv product writes it (q, k, v side by side, head h's
   dims h * hd .. h * hd + hd - 1 of each), valid (B, T) bytes or NULL (key j of item b seen
   where valid[b, j]), y (B, T, C) as the output projection reads it. Per item, head and
   query: the scores q . k_j / sqrt(hd) of the valid keys (cpu_math.h's lane_dot), their
   maximum, e^(s - max) by exp_approx (masked keys 0), the weighted sum of values over j in
   order, divided by the total. Against PyTorch's scaled_dot_product_attention: another
   summation order and e^x's last bits (tested within a stated tolerance).

   gelu: cpu_math.h's tanh GELU in place, the C decode step's.

   Below: renderer_draw (a whole level's draw in one call) and renderer_noise (its noise
   ids), each with its own note. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_math.h"

void renderer_gelu(float *x, int64_t n) { gelu_tanh(x, n); }

/* One item's attention: T positions of qkv (row stride 3C), valid (T) bytes or NULL, into y
   (row stride C); scores: scratch of T rounded up to LANES, plus hd. */
static void attend_item(const float *qkv, const uint8_t *valid, float *y, int64_t T, int64_t H, int64_t hd,
                        float *scores) {
    const int64_t C = H * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    float *acc = scores + (T + LANES - 1) / LANES * LANES;
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < T; i++) {
            const float *q = qkv + i * 3 * C + h * hd;
            float mx = -INFINITY;
            for (int64_t j = 0; j < T; j++) {
                if (valid && !valid[j]) {
                    scores[j] = -INFINITY;
                    continue;
                }
                scores[j] = lane_dot(q, qkv + j * 3 * C + C + h * hd, hd) * scale;
                mx = scores[j] > mx ? scores[j] : mx;
            }
            for (int64_t j = 0; j < T; j += LANES) {
                const int64_t n = T - j < LANES ? T - j : LANES;
                vfloat z = vload_tail(scores + j, n);
                const vint seen = z > -INFINITY;
                z = vselect(seen, exp_approx_vec(z - mx), (vfloat){0});
                store_tail(scores + j, z, n);
            }
            const float total = lane_sum(scores, T);
            float *out = y + i * C + h * hd;
            if (hd == LANES) { /* one register: the same operations as the loop below */
                vfloat a = {0}, v;
                for (int64_t j = 0; j < T; j++) {
                    const float e = scores[j];
                    if (e == 0.0f) continue;
                    memcpy(&v, qkv + j * 3 * C + 2 * C + h * hd, sizeof v);
                    a = a + e * v;
                }
                a = a / total;
                memcpy(out, &a, sizeof a);
                continue;
            }
            for (int64_t d = 0; d < hd; d++) acc[d] = 0.0f;
            for (int64_t j = 0; j < T; j++) {
                const float e = scores[j];
                if (e == 0.0f) continue;
                const float *v = qkv + j * 3 * C + 2 * C + h * hd;
                for (int64_t d = 0; d < hd; d++) acc[d] = acc[d] + e * v[d];
            }
            for (int64_t d = 0; d < hd; d++) out[d] = acc[d] / total;
        }
}

int renderer_attention(const float *qkv, const uint8_t *valid, float *y, int64_t B, int64_t T, int64_t H,
                       int64_t hd) {
    const int64_t C = H * hd;
    float *scores = malloc(sizeof(float) * (size_t)((T + LANES - 1) / LANES * LANES + hd));
    if (!scores) return -1;
    for (int64_t b = 0; b < B; b++)
        attend_item(qkv + b * T * 3 * C, valid ? valid + b * T : 0, y + b * T * C, T, H, hd, scores);
    free(scores);
    return 0;
}

/* ---- a whole level's denoising draw at temperature 0, in one call ------------------------

   renderer_draw: for every item of a level, the canvas [condition, its n_i noise tokens]
   embedded (wte + wpe, then + the level's and timestep's row, as the module adds them),
   the blocks (layer norm, qkv, attention over the item's own 1 + n_i positions, output
   projection, layer norm, MLP with the tanh GELU, each with its residual), the final layer
   norm of the target positions, the token head's argmax (the first of equal maxima, as
   torch.argmax) and the length head's argmax over classes 1.. plus one; slots past n_i get
   the pad, a pad's children 0. Items go through in tiles of whole canvases (TILE
   positions); every linear is rowwise_linear (row-invariant) and attention is per item,
   so an item's result does not depend on the others or on the tiling. Against the module
   path: other summation orders and e^x's last bits (tested within a stated tolerance, and
   the shipped renderer's text the same). */

void rowwise_linear(const float *x, const float *wt, const float *b, float *y, int64_t M, int64_t K, int64_t N);

typedef struct {
    const float *ln1_w, *ln1_b, *attn_wt, *attn_b, *proj_wt, *proj_b;
    const float *ln2_w, *ln2_b, *fc_wt, *fc_b, *fc2_wt, *fc2_b;
} render_block;

typedef struct {
    int64_t d, heads, n_layers;
    const render_block *blocks;
    const float *wte, *wpe, *lnf_w, *lnf_b;
    int64_t wte_rows, wpe_rows; /* the tables' rows: ids and positions are checked against them */
    float ln_eps[3]; /* ln_1, ln_2 (every block alike), ln_f */
    const float *head_wt, *head_b; /* (d, head_ld) columns past head_n zero */
    int64_t head_n, head_ld;
    const float *len_wt, *len_b; /* NULL: no length head at this level */
    int64_t len_n, len_ld;
} render_weights;

enum { TILE = 256 };

static void rows_layer_norm(const float *x, const float *w, const float *b, float *y, int64_t rows, int64_t d,
                            float eps, float *tmp) {
    for (int64_t r = 0; r < rows; r++) layer_norm(x + r * d, w, b, y + r * d, d, eps, tmp);
}

/* The index of the first of v's largest values (torch.argmax's choice; v without NaN): the
   largest value 16 lanes at a time, then the first index holding it. */
static int64_t first_max(const float *v, int64_t n) {
    float top = v[0];
    int64_t j = 0;
    if (n >= LANES) {
        vfloat m;
        memcpy(&m, v, sizeof m);
        for (j = LANES; j + LANES <= n; j += LANES) {
            vfloat u;
            memcpy(&u, v + j, sizeof u);
            m = vselect(u > m, u, m);
        }
        for (int l = 0; l < LANES; l++) top = m[l] > top ? m[l] : top;
    }
    for (; j < n; j++) top = v[j] > top ? v[j] : top;
    for (j = 0; j < n && v[j] != top; j++) {
    }
    return j < n ? j : 0; /* a NaN: not found */
}

int renderer_draw(const render_weights *w, const float *add, int64_t cond_offset, int64_t target_offset,
                  int64_t N, const int64_t *cond, const int64_t *lengths, const int64_t *noise, int64_t L, int64_t pad,
                  int64_t *tokens, int64_t *child, float *logits_out) {
    const int64_t d = w->d, H = w->heads, hd = d / H;
    if (L + 1 > w->wpe_rows) return -2;
    for (int64_t i = 0; i < N; i++) { /* every id inside its table, every length inside the canvas */
        const int64_t n = lengths ? lengths[i] : L;
        if (n < 0 || n > L || cond[i] + cond_offset < 0 || cond[i] + cond_offset >= w->wte_rows) return -2;
        for (int64_t p = 0; p < n; p++) {
            const int64_t id = noise[i * L + p] + target_offset;
            if (id < 0 || id >= w->wte_rows) return -2;
        }
    }
    const int64_t cap = TILE > 1 + L ? TILE : 1 + L; /* positions a tile holds */
    const int64_t wide = w->head_ld > w->len_ld ? w->head_ld : w->len_ld;
    const size_t floats = (size_t)cap * (size_t)(d + d + 3 * d + d + 4 * d + d + wide) + (size_t)(cap + LANES + hd + d);
    float *mem = malloc(sizeof(float) * floats);
    int64_t *start = malloc(sizeof(int64_t) * (size_t)cap);
    if (!mem || !start) {
        free(mem);
        free(start);
        return -1;
    }
    float *x = mem, *h = x + cap * d, *qkv = h + cap * d, *y = qkv + cap * 3 * d, *mlp = y + cap * d;
    float *tgt = mlp + cap * 4 * d, *scores = tgt + cap * d, *logits = scores + cap + LANES + hd;
    float *tmp = logits + cap * wide;
    for (int64_t i0 = 0; i0 < N;) {
        /* a tile: whole canvases while they fit */
        int64_t i1 = i0, P = 0, T = 0;
        while (i1 < N) {
            const int64_t n = lengths ? lengths[i1] : L;
            if (i1 > i0 && P + 1 + n > cap) break;
            start[i1 - i0] = P;
            P += 1 + n;
            T += n;
            i1++;
        }
        for (int64_t i = i0; i < i1; i++) {
            const int64_t n = lengths ? lengths[i] : L;
            float *row = x + start[i - i0] * d;
            for (int64_t p = 0; p <= n; p++, row += d) {
                const int64_t id = p == 0 ? cond[i] + cond_offset : noise[i * L + p - 1] + target_offset;
                const float *e = w->wte + id * d, *pe = w->wpe + p * d;
                for (int64_t c = 0; c < d; c++) row[c] = (e[c] + pe[c]) + add[c];
            }
        }
        for (int64_t l = 0; l < w->n_layers; l++) {
            const render_block *b = w->blocks + l;
            rows_layer_norm(x, b->ln1_w, b->ln1_b, h, P, d, w->ln_eps[0], tmp);
            rowwise_linear(h, b->attn_wt, b->attn_b, qkv, P, d, 3 * d);
            for (int64_t i = i0; i < i1; i++) {
                const int64_t s = start[i - i0], n = lengths ? lengths[i] : L;
                attend_item(qkv + s * 3 * d, 0, y + s * d, 1 + n, H, hd, scores);
            }
            rowwise_linear(y, b->proj_wt, b->proj_b, h, P, d, d);
            for (int64_t k = 0; k < P * d; k++) x[k] = x[k] + h[k];
            rows_layer_norm(x, b->ln2_w, b->ln2_b, h, P, d, w->ln_eps[1], tmp);
            rowwise_linear(h, b->fc_wt, b->fc_b, mlp, P, d, 4 * d);
            gelu_tanh(mlp, P * 4 * d);
            rowwise_linear(mlp, b->fc2_wt, b->fc2_b, h, P, 4 * d, d);
            for (int64_t k = 0; k < P * d; k++) x[k] = x[k] + h[k];
        }
        /* the target positions, compacted, through the final layer norm */
        int64_t t = 0;
        for (int64_t i = i0; i < i1; i++) {
            const int64_t s = start[i - i0], n = lengths ? lengths[i] : L;
            rows_layer_norm(x + (s + 1) * d, w->lnf_w, w->lnf_b, tgt + t * d, n, d, w->ln_eps[2], tmp);
            t += n;
        }
        rowwise_linear(tgt, w->head_wt, w->head_b, logits, T, d, w->head_ld);
        t = 0;
        for (int64_t i = i0; i < i1; i++) {
            const int64_t n = lengths ? lengths[i] : L;
            for (int64_t p = 0; p < L; p++) {
                if (p < n) {
                    const float *v = logits + (t + p) * w->head_ld;
                    tokens[i * L + p] = first_max(v, w->head_n);
                    if (logits_out) memcpy(logits_out + (i * L + p) * w->head_n, v, sizeof(float) * (size_t)w->head_n);
                } else {
                    tokens[i * L + p] = pad;
                }
            }
            t += n;
        }
        if (w->len_wt && child) {
            rowwise_linear(tgt, w->len_wt, w->len_b, logits, T, d, w->len_ld);
            t = 0;
            for (int64_t i = i0; i < i1; i++) {
                const int64_t n = lengths ? lengths[i] : L;
                for (int64_t p = 0; p < L; p++) {
                    const int64_t tok = tokens[i * L + p];
                    child[i * L + p] = (p < n && tok != pad)
                                           ? 1 + first_max(logits + (t + p) * w->len_ld + 1, w->len_n - 1) : 0;
                }
                t += n;
            }
        }
        i0 = i1;
    }
    free(mem);
    free(start);
    return 0;
}

/* ---- the draw's noise ids: sampling/draws.py's randint, in C -----------------------------

   renderer_noise: out (B, L) = hash_counters(seed, stream, level, item, draw, (L,)) % high,
   the same 32-bit arithmetic (murmur3's finaliser; every product taken mod 2^32, as the
   tensor code's masks take it), so the same integers (tested). seeds: (B,) one per item, or
   NULL for the one seed given. */
static inline uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    return h ^ (h >> 16);
}

void renderer_noise(const int64_t *seeds, int64_t seed, int64_t stream, int64_t level, const int64_t *item,
                    const int64_t *draw, int64_t B, int64_t L, int64_t high, int64_t *out) {
    const uint32_t rest = (uint32_t)stream * 0x7F4A7C15u + (uint32_t)level * 0x632BE5ABu;
    const uint32_t shared = fmix32((uint32_t)seed * 0x9E3779B1u + rest);
    for (int64_t b = 0; b < B; b++) {
        const uint32_t base = seeds ? fmix32((uint32_t)seeds[b] * 0x9E3779B1u + rest) : shared;
        uint32_t h = fmix32((uint32_t)item[b] ^ base);
        h = fmix32(h + (uint32_t)draw[b] * 0x27D4EB2Fu);
        for (int64_t l = 0; l < L; l++) out[b * L + l] = (int64_t)(fmix32(h ^ ((uint32_t)l * 0x165667B1u)) % (uint64_t)high);
    }
}
