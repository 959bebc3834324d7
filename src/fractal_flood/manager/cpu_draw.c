/* The output layer and the next-token draw of the compiled CPU step (cpu_step.c calls it
   after the last layer; Python calls it alone in the tests).

   Two heads:
   - one softmax over V tokens (the AR peer): logits = h @ W^T (W the tied embedding),
     wt = W transposed (C, V), classes = 0, per_class = V;
   - class-factored (the manager, models/class_head.py): K classes of S consecutive ids,
     class scores h @ Wc^T (class_wt = Wc transposed, (C, K)) and the S token scores of the
     chosen class from that class's block of the tied embedding (token_wt: the K blocks
     each transposed, (K, C, S)); classes = K, per_class = S.

   Per row, as the Python draw does it (class_head.draw, tokens.sample, host_inversion):
   scores from rowwise_linear.c's kernels (so the scores are the Python path's bit for bit),
   divided by the row's temperature (1 for a greedy row), softmax, running sum, then the
   row's counter-based uniform u (the murmur3 hash of (seed, step): tokens.row_uniform bit
   for bit) picks the first entry whose running sum exceeds target = min(u x total, the
   float below total). The factored head inverts the same u twice: the class first, then
   the target's place inside the class's slice, rescaled to [0, 1], picks the token inside
   the class. A greedy row (temperature 0) takes the first highest score, class then token.

   Exactness: every step is the Python path's operation: the scores (rowwise_linear.c's
   kernels), the uniform, the division by the temperature, the softmax (PyTorch's CPU kernel
   operation for operation: its exponential, its lanes and the order it folds them in,
   softmax_cdf), the running sum (accumulated in double and rounded per entry, as PyTorch's
   CPU cumsum does), the inversion. So the ids are the Python draw's bit for bit where the
   softmax kernel is PyTorch's (x86 CPUs: AVX-512, AVX2 and the generic kernel, tested);
   on other CPUs the probabilities agree to the last bits and a draw whose target falls that
   close to a slice's edge can pick the neighbour. Greedy rows take the first highest score
   (PyTorch's argmax) everywhere. Each row is computed alone: the same ids in any batch. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

void rowwise_linear(const float *x, const float *wt, const float *b, float *y,
                    int64_t M, int64_t K, int64_t N);
void rowwise_gathered(const float *x, const float *wt_blocks, const int64_t *index, float *y,
                      int64_t M, int64_t K, int64_t N);

enum { MAX_LANES = 64 };

static uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    return h ^ (h >> 16);
}

/* draws.row_hash, then tokens.row_uniform: 24 bits of the hash, plus a half, over 2^24, in
   float32 (uint32 products wrap as the Python masks do). */
static float uniform_of(int64_t seed, int64_t step) {
    const uint64_t s = (uint64_t)seed, t = (uint64_t)step;
    uint32_t h = fmix32((uint32_t)(s >> 32) ^ 0x5EED0002u);
    h = fmix32(h + (uint32_t)s * 0x9E3779B1u);
    h = fmix32(h + (uint32_t)t * 0x27D4EB2Fu);
    return ((float)(h >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

void row_uniforms(const int64_t *seeds, const int64_t *steps, int64_t M, float *u) {
    for (int64_t m = 0; m < M; m++) u[m] = uniform_of(seeds[m], steps[m]);
}

static int64_t first_max(const float *z, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (z[i] > z[best]) best = i;
    return best;
}

static inline float pow2i(int32_t q) {
    union { int32_t i; float f; } v = {.i = (q + 127) << 23};
    return v.f;
}

/* e^d as PyTorch's vectorised CPU kernels (AVX2, AVX-512) compute it: SLEEF's float exp
   of 1-ulp accuracy. d = q ln2 + s, with ln2 in two parts and fused multiply-adds; e^s as
   1 + s + s^2 (a degree-5 polynomial in s), by fused steps; times 2^q as two powers of two
   (so q can reach the subnormals). 0 below -104, infinity above 100. */
static inline float exp_simd(float d) {
    if (d != d) return d;
    if (d < -104.0f) return 0.0f;
    if (d > 100.0f) return INFINITY;
    const float q = rintf(d * 1.442695040888963407359924681001892137426645954152985934135449406931f);
    const int32_t qi = (int32_t)q;
    float s = fmaf(q, -0.693145751953125f, d);
    s = fmaf(q, -1.428606765330187045e-06f, s);
    float u = 0.000198527617612853646278381f;
    u = fmaf(u, s, 0.00139304355252534151077271f);
    u = fmaf(u, s, 0.00833336077630519866943359f);
    u = fmaf(u, s, 0.0416664853692054748535156f);
    u = fmaf(u, s, 0.166666671633720397949219f);
    u = fmaf(u, s, 0.5f);
    u = 1.0f + fmaf(s * s, u, s);
    return u * pow2i(qi >> 1) * pow2i(qi - (qi >> 1));
}

/* p = softmax(z / d), cdf = its running sum, as PyTorch's CPU kernels compute them, bit for
   bit where ``lanes`` and ``simd`` name the kernel PyTorch runs on this CPU (cpu_step.py
   reads its capability): the row's maximum; e = exp(x - max) (simd: exp_simd, else libm's
   expf, as PyTorch's generic kernel calls it); their sum over ``lanes`` accumulators (lane l
   takes entries l, l + lanes, ...; a row shorter than ``lanes`` is summed in order) folded
   by halves (simd) or in lane order (generic); p = e times (1 / sum); the running sum
   accumulated in double and rounded per entry (PyTorch's cumsum on the CPU). */
static void softmax_cdf(const float *z, int64_t n, float d, int64_t lanes, int simd, float *p, float *cdf) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        p[i] = z[i] / d;
        mx = p[i] > mx ? p[i] : mx;
    }
    if (simd)
        for (int64_t i = 0; i < n; i++) p[i] = exp_simd(p[i] - mx);
    else
        for (int64_t i = 0; i < n; i++) p[i] = expf(p[i] - mx);
    float total;
    if (n < lanes) {
        total = p[0];
        for (int64_t i = 1; i < n; i++) total = total + p[i];
    } else {
        float acc[MAX_LANES];
        int64_t i;
        for (int64_t l = 0; l < lanes; l++) acc[l] = p[l];
        for (i = lanes; i + lanes <= n; i += lanes)
            for (int64_t l = 0; l < lanes; l++) acc[l] = acc[l] + p[i + l];
        for (int64_t l = 0; i + l < n; l++) acc[l] = acc[l] + p[i + l];
        if (simd) {
            for (int64_t w = lanes / 2; w > 0; w /= 2)
                for (int64_t l = 0; l < w; l++) acc[l] = acc[l] + acc[l + w];
            total = acc[0];
        } else {
            total = acc[0];
            for (int64_t l = 1; l < lanes; l++) total = total + acc[l];
        }
    }
    const float inv = 1.0f / total;
    double run = 0.0;
    for (int64_t i = 0; i < n; i++) {
        p[i] = p[i] * inv;
        run += (double)p[i];
        cdf[i] = (float)run;
    }
}

/* softmax_cdf over M rows of n (each divided by its own divisor): for the tests. */
void softmax_rows(const float *z, int64_t M, int64_t n, const float *divisor, int64_t lanes, int64_t simd,
                  float *p, float *cdf) {
    for (int64_t m = 0; m < M; m++)
        softmax_cdf(z + m * n, n, divisor[m], lanes, (int)simd, p + m * n, cdf + m * n);
}

/* The number of entries at or below target = min(u x total, the float below total): the
   first index whose running sum exceeds it (kept inside the row). */
static int64_t invert(const float *cdf, int64_t n, float u, float *target_out) {
    const float total = cdf[n - 1], below = nextafterf(total, 0.0f), scaled = u * total;
    const float target = scaled < below ? scaled : below;
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) count += cdf[i] <= target;
    *target_out = target;
    return count < n ? count : n - 1;
}

/* h (M, C) final hidden states -> ids (M,). temperature (M,) float32, 0 = greedy; lanes and
   simd: softmax_cdf's. Returns 0, -1 when out of memory, -2 for a lane count it cannot take. */
int draw_rows(const float *h, int64_t M, int64_t C, int64_t classes, int64_t per_class,
              const float *class_wt, const float *token_wt, int64_t lanes, int64_t simd,
              const int64_t *seeds, const int64_t *steps, const float *temperature, int64_t *ids) {
    const int64_t K = classes, S = per_class, first = K > 0 ? K : S;
    if (lanes < 1 || lanes > MAX_LANES || (simd && (lanes & (lanes - 1)))) return -2;
    const int64_t scratch = 2 * (first > S ? first : S);
    float *buf = malloc(sizeof(float) * (size_t)(M * first + (K > 0 ? M * S + M : 0) + scratch));
    int64_t *chosen = K > 0 ? malloc(sizeof(int64_t) * (size_t)M) : 0;
    if (!buf || (K > 0 && !chosen)) {
        free(buf);
        free(chosen);
        return -1;
    }
    float *z = buf, *zt = z + M * first, *inner = zt + (K > 0 ? M * S : 0);
    float *p = inner + (K > 0 ? M : 0), *cdf = p + scratch / 2;

    rowwise_linear(h, K > 0 ? class_wt : token_wt, 0, z, M, C, first);
    for (int64_t m = 0; m < M; m++) {
        const float t = temperature[m];
        const float *row = z + m * first;
        int64_t pick;
        if (t > 0.0f) {
            float target;
            softmax_cdf(row, first, t, lanes, (int)simd, p, cdf);
            pick = invert(cdf, first, uniform_of(seeds[m], steps[m]), &target);
            if (K > 0) { /* the target's place inside the class's slice [hi - p, hi), in [0, 1] */
                const float at = (target - (cdf[pick] - p[pick])) / p[pick];
                inner[m] = at < 0.0f ? 0.0f : (at > 1.0f ? 1.0f : at);
            }
        } else {
            pick = first_max(row, first);
            if (K > 0) inner[m] = 0.0f;
        }
        if (K > 0)
            chosen[m] = pick;
        else
            ids[m] = pick;
    }
    if (K > 0) {
        rowwise_gathered(h, token_wt, chosen, zt, M, C, S);
        for (int64_t m = 0; m < M; m++) {
            const float t = temperature[m];
            const float *row = zt + m * S;
            int64_t j;
            if (t > 0.0f) {
                float target;
                softmax_cdf(row, S, t, lanes, (int)simd, p, cdf);
                j = invert(cdf, S, inner[m], &target);
            } else {
                j = first_max(row, S);
            }
            ids[m] = chosen[m] * S + j;
        }
    }
    free(chosen);
    free(buf);
    return 0;
}
