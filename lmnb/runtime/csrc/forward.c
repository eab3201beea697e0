/* One step of the Llama-family forward in C: embedding rows, every layer, the final norm and
 * the lm_head at the positions that want logits. Built into one library with linear.c and
 * attention.c; the matrix products go through linear.h's `lmnb_linear_w` (any weight format),
 * attention through `lmnb_attention` (one query at a time, extend and decode alike).
 *
 * Why: the per-op torch path spends most of a small decode step on per-op overhead (a dozen
 * Python calls a layer, each allocating); here a step is one call over a workspace the caller
 * allocates once.
 *
 * Exactness (the project's first rule): every op computes a token's row from that row alone,
 * with a fixed order of operations, whatever the number of tokens in the step or the thread
 * that takes the row: the matrix products and attention promise it themselves, and the
 * row-wise ops below (RMSNorm, RoPE, SiLU, residual adds) loop over a row's elements in one
 * fixed order; the one reduction (RMSNorm's sum of squares) keeps 16 lanes in a fixed
 * assignment and adds them pairwise. The build has no fast-math and -ffp-contract=off, so a
 * vectorised copy of a loop computes the same bits as its scalar tail. SiLU uses our own exp
 * (`exp_neg`), so no library's vector variant can change a bit.
 *
 * dtype: activations are fp32 in the workspace. With `bf16` set, they are rounded to bf16
 * (nearest even) wherever the torch path's bf16 tensors round them: after each norm, matrix
 * product, RoPE step, attention, SiLU, product and residual add; k/v are stored in the pool's
 * dtype. Logits stay fp32 (the lm_head's chains; no rounding).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "linear.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* attention.c */
int lmnb_attention(const float *q, const void *k, const void *v, int bf16,
                   const int64_t *table, int64_t table_stride, const int64_t *rows,
                   const int64_t *lens, int64_t num_q, int64_t heads, int64_t kv_heads,
                   int64_t dim, float scale, float *out, int num_threads);

typedef struct LmnbLayer {
    const float *input_norm, *post_norm; /* [hidden] */
    LmnbWeight qkv, o, gate_up, down;    /* qkv: q, k, v rows; gate_up: gate rows, up rows */
} LmnbLayer;

typedef struct LmnbModel {
    int64_t num_layers, hidden, heads, kv_heads, head_dim, inter, vocab;
    float eps, scale; /* RMSNorm's epsilon; attention's score scale */
    int32_t bf16;     /* round activations to bf16 where the torch path does */
    const void *embed; /* [vocab, hidden]: bf16 if bf16, else fp32 */
    const float *final_norm;
    const LmnbLayer *layers;
    LmnbWeight lm_head;
} LmnbModel;

typedef struct LmnbStep {
    int64_t num_tokens;
    const int64_t *ids, *out_slots;   /* [num_tokens]: input ids, where k/v are written */
    const int64_t *rows, *lens;       /* [num_tokens]: query t attends table[rows[t], :lens[t]] */
    const float *cos, *sin;           /* [num_tokens, head_dim / 2]: this token's angles */
    const int64_t *table;
    int64_t table_stride;
    void *k_pool, *v_pool;            /* [layers, slots, kv_heads, head_dim] */
    int64_t num_slots;
    int32_t pool_bf16;
    int64_t num_logits;
    const int64_t *logit_index;       /* [num_logits]: tokens whose logits are wanted */
    float *logits;                    /* [num_logits, vocab] */
    double *profile;                  /* NULL, or seconds added: [linear, attention, total] */
} LmnbStep;

enum { T_LINEAR, T_ATTENTION, T_TOTAL };
#define LANES 16 /* RMSNorm's sum of squares: lane i holds elements i, i+16, ... */
#define PARALLEL_ROWS 16 /* row-wise ops run on one thread below this many rows */

static inline float round_bf16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    bits += 0x7FFF + ((bits >> 16) & 1); /* nearest even, as torch rounds */
    bits &= 0xFFFF0000u;
    memcpy(&x, &bits, sizeof x);
    return x;
}

static inline float widen_bf16(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t to_bf16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    bits += 0x7FFF + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

#define PARALLEL_ELEMS (PARALLEL_ROWS * 1024) /* elementwise ops: one thread below this */

/* rounds x in place where the model is bf16 */
static void round_all(float *x, int64_t count, int bf16, int num_threads) {
    if (!bf16) return;
#pragma omp parallel for num_threads(num_threads) if (count >= PARALLEL_ELEMS)
    for (int64_t i = 0; i < count; i++) x[i] = round_bf16(x[i]);
}

/* exp(x) for x <= 0, relative error ~1e-7, 0 below -87: multiplies and adds only, so its
 * vectorised and scalar copies agree bit for bit. */
static inline float exp_neg(float x) {
    const float xc = x < -87.0f ? -87.0f : x;
    const float kf = (xc * 1.44269504f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    const float r = (xc - kf * 0.693359375f) - kf * -2.12194440e-4f;   /* x - k ln 2 */
    float p = 2.48015873e-5f;                                           /* 1/8! .. 1/0! */
    p = p * r + 1.98412698e-4f;
    p = p * r + 1.38888889e-3f;
    p = p * r + 8.33333333e-3f;
    p = p * r + 4.16666667e-2f;
    p = p * r + 1.66666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = ((int32_t)kf + 127) << 23;
    float two_k;
    memcpy(&two_k, &bits, sizeof two_k);
    return x < -87.0f ? 0.0f : p * two_k;
}

/* x / (1 + exp(-x)), from an exp of a non-positive argument on both sides of 0: x / (1 + e)
 * with e = exp(-x) for x >= 0, x e / (1 + e) with e = exp(x) below. Written with selects, not
 * branches, so that the loops calling it vectorise (the same operations either way). */
static inline float silu(float x) {
    const int pos = x >= 0.0f;
    const float e = exp_neg(pos ? -x : x);
    return (pos ? x : x * e) / (1.0f + e);
}

static double now(void) {
#ifdef _OPENMP
    return omp_get_wtime();
#else
    return 0.0;
#endif
}

/* out = weight * (x / sqrt(mean(x^2) + eps)) for one row, as the torch path computes it:
 * the normalised row rounded to bf16 before the weight multiplies it (bf16 models) */
static void rms_norm_row(const float *x, const float *weight, int64_t hidden, float eps,
                         int bf16, float *out) {
    float lanes[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= hidden; i += LANES)
        for (int l = 0; l < LANES; l++) lanes[l] += x[i + l] * x[i + l];
    for (int l = 0; i + l < hidden; l++) lanes[l] += x[i + l] * x[i + l];
    for (int width = LANES / 2; width >= 1; width /= 2)
        for (int l = 0; l < width; l++) lanes[l] += lanes[l + width];
    const float inv = 1.0f / sqrtf(lanes[0] / (float)hidden + eps);
    for (i = 0; i < hidden; i++) {
        const float y = bf16 ? round_bf16(x[i] * inv) : x[i] * inv;
        out[i] = bf16 ? round_bf16(weight[i] * y) : weight[i] * y;
    }
}

static void rms_norm(const float *h, const float *weight, const LmnbModel *m, int64_t n,
                     float *out, int num_threads) {
    const int64_t hidden = m->hidden;
#pragma omp parallel for num_threads(num_threads) if (n >= PARALLEL_ROWS)
    for (int64_t t = 0; t < n; t++)
        rms_norm_row(h + t * hidden, weight, hidden, m->eps, m->bf16, out + t * hidden);
}

/* Rotate one head in place (halves: (a, b) -> (a cos - b sin, b cos + a sin)), with the torch
 * path's roundings for bf16: a cos and b sin rounded before the difference; b cos rounded
 * before the sum (addcmul adds a sin unrounded). */
static void rope_head(float *x, const float *cos, const float *sin, int64_t half, int bf16) {
    for (int64_t i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half], c = cos[i], s = sin[i];
        if (bf16) {
            x[i] = round_bf16(round_bf16(a * c) - round_bf16(b * s));
            x[i + half] = round_bf16(round_bf16(b * c) + a * s);
        } else {
            x[i] = a * c - b * s;
            x[i + half] = b * c + a * s;
        }
    }
}

static void store_row(void *pool, int bf16, int64_t at, const float *x, int64_t count) {
    if (bf16) {
        uint16_t *dst = (uint16_t *)pool + at;
        for (int64_t i = 0; i < count; i++) dst[i] = to_bf16(x[i]);
    } else {
        memcpy((float *)pool + at, x, sizeof(float) * (size_t)count);
    }
}

/* q (rotated) into its own contiguous rows for attention; k (rotated) and v into the pool */
static void rope_and_store(const LmnbModel *m, const LmnbStep *s, int64_t layer, float *qkv,
                           float *q, int num_threads) {
    const int64_t dim = m->head_dim, half = dim / 2;
    const int64_t q_size = m->heads * dim, kv_size = m->kv_heads * dim;
    const int64_t width = q_size + 2 * kv_size, n = s->num_tokens;
    const int64_t pool_layer = layer * s->num_slots * kv_size;
#pragma omp parallel for num_threads(num_threads) if (n >= PARALLEL_ROWS)
    for (int64_t t = 0; t < n; t++) {
        float *row = qkv + t * width;
        const float *cos = s->cos + t * half, *sin = s->sin + t * half;
        for (int64_t h = 0; h < m->heads + m->kv_heads; h++)
            rope_head(row + h * dim, cos, sin, half, m->bf16);
        memcpy(q + t * q_size, row, sizeof(float) * (size_t)q_size);
        const int64_t at = pool_layer + s->out_slots[t] * kv_size;
        store_row(s->k_pool, s->pool_bf16, at, row + q_size, kv_size);
        store_row(s->v_pool, s->pool_bf16, at, row + q_size + kv_size, kv_size);
    }
}

/* h += y, each sum rounded for bf16 (y already rounded) */
static void residual(float *h, const float *y, int64_t count, int bf16, int num_threads) {
#pragma omp parallel for num_threads(num_threads) if (count >= PARALLEL_ELEMS)
    for (int64_t i = 0; i < count; i++) h[i] = bf16 ? round_bf16(h[i] + y[i]) : h[i] + y[i];
}

/* act[t] = silu(gate[t]) * up[t], the SiLU rounded before the product for bf16 */
static void swiglu(const LmnbModel *m, int64_t n, const float *gate_up, float *act,
                   int num_threads) {
    const int64_t inter = m->inter;
    const int bf16 = m->bf16;
#pragma omp parallel for num_threads(num_threads) if (n >= PARALLEL_ROWS)
    for (int64_t t = 0; t < n; t++) {
        const float *gate = gate_up + t * 2 * inter, *up = gate + inter;
        float *out = act + t * inter;
        for (int64_t i = 0; i < inter; i++) {
            const float g = silu(gate[i]);
            out[i] = bf16 ? round_bf16(round_bf16(g) * up[i]) : g * up[i];
        }
    }
}

/* The workspace floats a step of n tokens needs. */
int64_t lmnb_forward_work(const LmnbModel *m, int64_t n) {
    const int64_t q_size = m->heads * m->head_dim, kv_size = m->kv_heads * m->head_dim;
    return n * (2 * m->hidden + q_size + 2 * kv_size + 2 * q_size + 3 * m->inter);
}

typedef struct {
    float *h, *x, *qkv, *q, *att, *gate_up, *act;
} Buffers;

static Buffers carve(const LmnbModel *m, int64_t n, float *work) {
    const int64_t q_size = m->heads * m->head_dim, kv_size = m->kv_heads * m->head_dim;
    Buffers b;
    b.h = work;                            /* [n, hidden]: the residual stream */
    b.x = b.h + n * m->hidden;             /* [n, hidden]: norm outputs, o and down outputs */
    b.qkv = b.x + n * m->hidden;           /* [n, q_size + 2 kv_size] */
    b.q = b.qkv + n * (q_size + 2 * kv_size); /* [n, heads, dim] */
    b.att = b.q + n * q_size;              /* [n, heads, dim] */
    b.gate_up = b.att + n * q_size;        /* [n, 2 inter] */
    b.act = b.gate_up + n * 2 * m->inter;  /* [n, inter] */
    return b;
}

static int linear(const LmnbWeight *w, const float *x, int64_t n, float *y, int bf16,
                  int num_threads, double *profile) {
    const double start = now();
    const int failed = lmnb_linear_w_round(w, x, n, y, num_threads, bf16);
    if (profile) profile[T_LINEAR] += now() - start;
    return failed;
}

static int layer(const LmnbModel *m, const LmnbStep *s, int64_t i, const Buffers *b,
                 int num_threads) {
    const LmnbLayer *L = &m->layers[i];
    const int64_t n = s->num_tokens, hidden = m->hidden, q_size = m->heads * m->head_dim;
    const int64_t pool_layer = i * s->num_slots * m->kv_heads * m->head_dim;
    const int64_t elem = s->pool_bf16 ? 2 : 4;
    double *prof = s->profile;
    int failed = 0;
    rms_norm(b->h, L->input_norm, m, n, b->x, num_threads);
    failed |= linear(&L->qkv, b->x, n, b->qkv, m->bf16, num_threads, prof);
    rope_and_store(m, s, i, b->qkv, b->q, num_threads);
    const double start = now();
    failed |= lmnb_attention(b->q, (const char *)s->k_pool + pool_layer * elem,
                             (const char *)s->v_pool + pool_layer * elem, s->pool_bf16,
                             s->table, s->table_stride, s->rows, s->lens, n, m->heads,
                             m->kv_heads, m->head_dim, m->scale, b->att, num_threads);
    if (prof) prof[T_ATTENTION] += now() - start;
    round_all(b->att, n * q_size, m->bf16, num_threads);
    failed |= linear(&L->o, b->att, n, b->x, m->bf16, num_threads, prof);
    residual(b->h, b->x, n * hidden, m->bf16, num_threads);
    rms_norm(b->h, L->post_norm, m, n, b->x, num_threads);
    failed |= linear(&L->gate_up, b->x, n, b->gate_up, m->bf16, num_threads, prof);
    swiglu(m, n, b->gate_up, b->act, num_threads);
    failed |= linear(&L->down, b->act, n, b->x, m->bf16, num_threads, prof);
    residual(b->h, b->x, n * hidden, m->bf16, num_threads);
    return failed;
}

/* One step: writes every layer's k/v of the step's tokens into the pool and the logits of
 * the tokens in logit_index. work: lmnb_forward_work(m, num_tokens) floats. 0 on success, 1 if
 * a matrix product's format is missing from this build or attention ran out of memory. */
int lmnb_forward(const LmnbModel *m, const LmnbStep *s, float *work, int num_threads) {
    const double start = now();
    const int64_t n = s->num_tokens, hidden = m->hidden;
    const Buffers b = carve(m, n, work);
    for (int64_t t = 0; t < n; t++) {
        const int64_t at = s->ids[t] * hidden;
        for (int64_t i = 0; i < hidden; i++)
            b.h[t * hidden + i] = m->bf16 ? widen_bf16(((const uint16_t *)m->embed)[at + i])
                                          : ((const float *)m->embed)[at + i];
    }
    int failed = 0;
    for (int64_t i = 0; i < m->num_layers && !failed; i++) failed |= layer(m, s, i, &b, num_threads);
    if (failed) return 1;
    for (int64_t j = 0; j < s->num_logits; j++) /* the wanted rows, normed into x */
        rms_norm_row(b.h + s->logit_index[j] * hidden, m->final_norm, hidden, m->eps, m->bf16,
                     b.x + j * hidden);
    const double lm = now();
    failed = lmnb_linear_w(&m->lm_head, b.x, s->num_logits, s->logits, num_threads);
    if (s->profile) {
        const double end = now();
        s->profile[T_LINEAR] += end - lm;
        s->profile[T_TOTAL] += end - start;
    }
    return failed;
}
