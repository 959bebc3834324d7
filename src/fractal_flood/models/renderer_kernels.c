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

   gelu: cpu_math.h's tanh GELU in place, the C decode step's. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_math.h"

void renderer_gelu(float *x, int64_t n) { gelu_tanh(x, n); }

int renderer_attention(const float *qkv, const uint8_t *valid, float *y, int64_t B, int64_t T, int64_t H,
                       int64_t hd) {
    const int64_t C = H * hd, W = (T + LANES - 1) / LANES * LANES;
    const float scale = 1.0f / sqrtf((float)hd);
    float *scores = malloc(sizeof(float) * (size_t)(W + hd));
    if (!scores) return -1;
    float *acc = scores + W;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < T; i++) {
                const float *q = qkv + (b * T + i) * 3 * C + h * hd;
                float mx = -INFINITY;
                for (int64_t j = 0; j < T; j++) {
                    if (valid && !valid[b * T + j]) {
                        scores[j] = -INFINITY;
                        continue;
                    }
                    scores[j] = lane_dot(q, qkv + (b * T + j) * 3 * C + C + h * hd, hd) * scale;
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
                for (int64_t d = 0; d < hd; d++) acc[d] = 0.0f;
                for (int64_t j = 0; j < T; j++) {
                    const float e = scores[j];
                    if (e == 0.0f) continue;
                    const float *v = qkv + (b * T + j) * 3 * C + 2 * C + h * hd;
                    for (int64_t d = 0; d < hd; d++) acc[d] = acc[d] + e * v[d];
                }
                float *out = y + (b * T + i) * C + h * hd;
                for (int64_t d = 0; d < hd; d++) out[d] = acc[d] / total;
            }
    free(scores);
    return 0;
}
