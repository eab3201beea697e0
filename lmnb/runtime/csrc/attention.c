/* Attention read straight from the token-indexed KV pool, one query token at a time (CPU).
 *
 * out[t, h] = softmax(scale * q[t, h] . K[s]) V[s] over the slots s = table[rows[t], 0 ..
 * lens[t]-1]. A decode step has one query per request; an extend step has one per new token,
 * whose len stops at its own position (causal). Both go through the same per-query code, so a
 * token's attention gives the same bits whether it was computed in a prefill of the whole
 * prompt, in an extend over a cached prefix, alone or in a batch, or as a decode step: the
 * arithmetic of one query depends only on its own q and its own keys, never on the others.
 * The code is plain C compiled without -ffast-math and with -ffp-contract=off, so the compiler
 * keeps every operation as written (vectorising only across independent lanes).
 *
 * Per query: scores over heads x len (a dot product of 16 lanes over dim, then a fixed
 * pairwise sum of the lanes), the max, exp, a sequential sum, then the weighted sum of v rows
 * in key order. Each slot's k (then v) row, kv_heads x dim values, is read once per query,
 * in place (no gather), with rows a few slots ahead prefetched.
 *
 * Layouts (all contiguous): q, out [num_q, heads, dim] fp32; k, v [slots, kv_heads, dim] fp32
 * or bf16; table [table_rows, table_stride] int64 slots; rows, lens [num_q] int64.
 * dim must be a multiple of 16.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
#define AHEAD 8 /* slots prefetched ahead */

static inline float widen(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float lane_sum(float *acc) {
    for (int width = LANES / 2; width >= 1; width /= 2)
        for (int l = 0; l < width; l++) acc[l] += acc[l + width];
    return acc[0];
}

/* q . k over dim in 16 lanes (lane l takes d = l, l + 16, ...), then the lanes pairwise. */
static inline float dot_f32(const float *q, const float *k, int64_t dim) {
    float acc[LANES] = {0};
    for (int64_t d = 0; d < dim; d += LANES)
        for (int l = 0; l < LANES; l++) acc[l] = fmaf(q[d + l], k[d + l], acc[l]);
    return lane_sum(acc);
}

static inline float dot_bf16(const float *q, const uint16_t *k, int64_t dim) {
    float acc[LANES] = {0};
    for (int64_t d = 0; d < dim; d += LANES)
        for (int l = 0; l < LANES; l++) acc[l] = fmaf(q[d + l], widen(k[d + l]), acc[l]);
    return lane_sum(acc);
}

static void prefetch_row(const char *row, int64_t bytes) {
    for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(row + i, 0, 0);
}

static void one_query(const float *q, const void *k, const void *v, int bf16,
                      const int64_t *slots, int64_t len, int64_t heads, int64_t kv_heads,
                      int64_t dim, float scale, float *scores, float *out) {
    const int64_t group = heads / kv_heads, row = kv_heads * dim;
    const int64_t row_bytes = row * (bf16 ? 2 : 4);
    const char *kb = k, *vb = v;
    for (int64_t j = 0; j < len; j++) { /* scores [heads, len] */
        if (j + AHEAD < len) prefetch_row(kb + slots[j + AHEAD] * row_bytes, row_bytes);
        for (int64_t h = 0; h < heads; h++) {
            const int64_t at = slots[j] * row + (h / group) * dim;
            const float dot = bf16 ? dot_bf16(q + h * dim, (const uint16_t *)k + at, dim)
                                   : dot_f32(q + h * dim, (const float *)k + at, dim);
            scores[h * len + j] = dot * scale;
        }
    }
    for (int64_t h = 0; h < heads; h++) { /* softmax, the sum in key order */
        float *sh = scores + h * len, top = -INFINITY, total = 0.0f;
        for (int64_t j = 0; j < len; j++) top = sh[j] > top ? sh[j] : top;
        for (int64_t j = 0; j < len; j++) {
            sh[j] = expf(sh[j] - top);
            total += sh[j];
        }
        for (int64_t j = 0; j < len; j++) sh[j] /= total;
    }
    for (int64_t i = 0; i < heads * dim; i++) out[i] = 0.0f;
    for (int64_t j = 0; j < len; j++) { /* the weighted sum of v rows, in key order */
        if (j + AHEAD < len) prefetch_row(vb + slots[j + AHEAD] * row_bytes, row_bytes);
        for (int64_t h = 0; h < heads; h++) {
            const int64_t at = slots[j] * row + (h / group) * dim;
            const float w = scores[h * len + j];
            float *oh = out + h * dim;
            if (bf16) {
                const uint16_t *vh = (const uint16_t *)v + at;
                for (int64_t d = 0; d < dim; d++) oh[d] = fmaf(w, widen(vh[d]), oh[d]);
            } else {
                const float *vh = (const float *)v + at;
                for (int64_t d = 0; d < dim; d++) oh[d] = fmaf(w, vh[d], oh[d]);
            }
        }
    }
}

int lmnb_attention(const float *q, const void *k, const void *v, int bf16,
                   const int64_t *table, int64_t table_stride, const int64_t *rows,
                   const int64_t *lens, int64_t num_q, int64_t heads, int64_t kv_heads,
                   int64_t dim, float scale, float *out, int num_threads) {
    if (dim % LANES != 0) return 2;
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t t = 0; t < num_q; t++) {
        float *scores = malloc(sizeof(float) * (size_t)(lens[t] * heads));
        if (scores == NULL) {
            failed = 1;
            continue;
        }
        one_query(q + t * heads * dim, k, v, bf16, table + rows[t] * table_stride, lens[t],
                  heads, kv_heads, dim, scale, scores, out + t * heads * dim);
        free(scores);
    }
    return failed;
}
