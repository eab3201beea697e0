/* Decode attention read straight from the token-indexed KV pool (fp32, CPU).
 *
 * One query token per request: out[b, h] = softmax(scale * q[b, h] . K[s]) V[s] over the slots
 * s = table[rows[b], 0 .. lens[b]-1]. The torch path gathers those k/v rows into a buffer and
 * then reads the buffer; this reads each slot's k and v row once, in place. A request is one
 * work item (requests are spread over OpenMP threads): all its heads are done together, so a
 * slot's k (then v) row, kv_heads x dim floats, is read whole, and rows a few slots ahead are
 * prefetched (slots are scattered over the pool, which the hardware prefetcher cannot guess).
 *
 * Layouts (all contiguous): q, out [batch, heads, dim]; k, v [slots, kv_heads, dim];
 * table [table_rows, table_stride] int64 slots; rows, lens [batch] int64.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define AHEAD 8 /* slots prefetched ahead */

static void prefetch_row(const float *row, int64_t floats) {
    for (int64_t i = 0; i < floats; i += 16) __builtin_prefetch(row + i, 0, 0);
}

static void one_request(const float *q, const float *k, const float *v, const int64_t *slots,
                        int64_t len, int64_t heads, int64_t kv_heads, int64_t dim, float scale,
                        float *scores, float *out) {
    const int64_t group = heads / kv_heads, row = kv_heads * dim;
    /* pass 1: scores [heads, len] */
    for (int64_t j = 0; j < len; j++) {
        if (j + AHEAD < len) prefetch_row(k + slots[j + AHEAD] * row, row);
        const float *kj = k + slots[j] * row;
        for (int64_t h = 0; h < heads; h++) {
            const float *qh = q + h * dim, *kh = kj + (h / group) * dim;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < dim; d++) dot += qh[d] * kh[d];
            scores[h * len + j] = dot * scale;
        }
    }
    for (int64_t h = 0; h < heads; h++) {
        float *sh = scores + h * len, top = -INFINITY, total = 0.0f;
        for (int64_t j = 0; j < len; j++) top = sh[j] > top ? sh[j] : top;
        for (int64_t j = 0; j < len; j++) {
            sh[j] = expf(sh[j] - top);
            total += sh[j];
        }
        for (int64_t j = 0; j < len; j++) sh[j] /= total;
    }
    for (int64_t i = 0; i < heads * dim; i++) out[i] = 0.0f;
    /* pass 2: the weighted sum of v rows */
    for (int64_t j = 0; j < len; j++) {
        if (j + AHEAD < len) prefetch_row(v + slots[j + AHEAD] * row, row);
        const float *vj = v + slots[j] * row;
        for (int64_t h = 0; h < heads; h++) {
            const float w = scores[h * len + j], *vh = vj + (h / group) * dim;
            float *oh = out + h * dim;
#pragma omp simd
            for (int64_t d = 0; d < dim; d++) oh[d] += w * vh[d];
        }
    }
}

int lmnb_decode_attention(const float *q, const float *k, const float *v, const int64_t *table,
                          int64_t table_stride, const int64_t *rows, const int64_t *lens,
                          int64_t batch, int64_t heads, int64_t kv_heads, int64_t dim,
                          float scale, float *out, int num_threads) {
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t b = 0; b < batch; b++) {
        float *scores = malloc(sizeof(float) * (size_t)(lens[b] * heads));
        if (scores == NULL) {
            failed = 1;
            continue;
        }
        one_request(q + b * heads * dim, k, v, table + rows[b] * table_stride, lens[b], heads,
                    kv_heads, dim, scale, scores, out + b * heads * dim);
        free(scores);
    }
    return failed;
}
