/* Attention read straight from the token-indexed KV pool, one query token at a time (CPU).
 *
 * out[t, h] = softmax(scale * q[t, h] . K[s]) V[s] over the slots s = table[rows[t], 0 ..
 * lens[t]-1]. A decode step has one query per request; an extend step has one per new token,
 * whose len stops at its own position (causal). Both go through the same code, so a token's
 * attention gives the same bits whether it was computed in a prefill of the whole prompt, in
 * an extend over a cached prefix, alone or in a batch, or as a decode step.
 *
 * The arithmetic of one query and head, which depends only on its own q and its own keys:
 * keys are taken in blocks of 16 at fixed positions (0-15, 16-31, ...); a score is one FMA
 * chain over d = 0 .. dim-1, times scale; a block updates a running max m (rescaling the
 * running sums by exp(m_old - m_new) when it grows), adds exp(score - m) to lane (key % 16)
 * of the running sum and FMAs the weighted v rows into the output in key order; at the end
 * the 16 lanes are summed pairwise and the output divided by that sum. exp is our own
 * (`exp_poly`), so every copy of it computes the same bits. The code is plain C built without
 * -ffast-math and with -ffp-contract=off: the compiler keeps every operation as written and
 * vectorises only across independent lanes (keys, or elements of dim).
 *
 * A bf16 pool with heads of 64 on a CPU with the bf16 dot product takes the pair path instead
 * (`pair_path` below): the same blocks, max and lanes, with scores and weighted sums as chains
 * of pair steps (two exact products added to fp32 per step) and the weights rounded to bf16;
 * its own arithmetic, used by every query on that CPU alike.
 *
 * Speed: consecutive queries of one request (an extend) form a tile of up to 32 that shares
 * each block's keys, transposed once into [dim][16] (16 x 16 in registers with AVX-512; a
 * score is then a vector FMA per d) and widened from bf16 once (a bf16 pool's rows are
 * transposed as 32-bit words of two values and split by a shift and a mask); the score chains
 * of up to 8 (query, head) pairs and the weighted sums of up to 4 run interleaved, which hides
 * the FMA latency; the k/v rows of the blocks ahead are prefetched (slots are scattered over
 * the pool); (tile, kv head) items are spread over OpenMP threads. The AVX-512 code performs
 * the same operations as the plain C beside it. Tiling changes which queries are computed
 * together, never a query's own arithmetic.
 *
 * Layouts (all contiguous): q, out [num_q, heads, dim] fp32; k, v [slots, kv_heads, dim] fp32
 * or bf16; table [table_rows, table_stride] int64 slots; rows, lens [num_q] int64.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define BLOCK 16 /* keys per block, one lane each */
#define TILE 32 /* consecutive queries of one request computed together (8 -> 32: a long
                 * extend's keys are read and transposed a quarter as often, ~10-15% faster) */
#define AHEAD 3  /* blocks whose k/v rows are prefetched ahead */

static inline float widen(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float load(const void *base, int bf16, int64_t at) {
    return bf16 ? widen(((const uint16_t *)base)[at]) : ((const float *)base)[at];
}

#ifdef __AVX512F__
static inline __m512 load16(const void *base, int bf16, int64_t at) { /* 16 values as fp32 */
    if (bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + at))),
            16));
    return _mm512_loadu_ps((const float *)base + at);
}

/* c[j] = column j of the 16 x 16 block r (r[i] its rows), by shuffles in registers. */
static inline void transpose16(const __m512 r[16], __m512 c[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* u[4i + m]: columns m, m+4, m+8, m+12 of rows 4i..4i+3 */
        u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int m = 0; m < 4; m++) {
        const __m512 v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88);
        const __m512 v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xDD);
        const __m512 v2 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88);
        const __m512 v3 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xDD);
        c[m] = _mm512_shuffle_f32x4(v0, v2, 0x88);
        c[m + 8] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
        c[m + 4] = _mm512_shuffle_f32x4(v1, v3, 0x88);
        c[m + 12] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
    }
}
#endif

/* kt[d][l] = k[slots[l]][off + d] as fp32, for one block's 16 keys of one kv head. */
static void transpose_keys(const void *k, int bf16, const int64_t *slots, int64_t row,
                           int64_t off, int64_t dim, float *kt) {
#ifdef __AVX512F__
    if (bf16 && dim % 32 == 0) { /* 32-bit words of two bf16 transposed, then split: half the
                                  * shuffles, and widening is a shift or a mask */
        const uint16_t *k16 = k;
        const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
        for (int64_t d0 = 0; d0 < dim; d0 += 32) {
            __m512 r[16], c[16];
            for (int l = 0; l < BLOCK; l++)
                r[l] = _mm512_castsi512_ps(_mm512_loadu_si512(k16 + slots[l] * row + off + d0));
            transpose16(r, c); /* c[j]: dims d0 + 2j (low half) and d0 + 2j + 1 (high half) */
            for (int j = 0; j < 16; j++) {
                const __m512i w = _mm512_castps_si512(c[j]);
                _mm512_storeu_si512(kt + (d0 + 2 * j) * BLOCK, _mm512_slli_epi32(w, 16));
                _mm512_storeu_si512(kt + (d0 + 2 * j + 1) * BLOCK, _mm512_and_si512(w, high));
            }
        }
        return;
    }
    if (dim % 16 == 0) {
        for (int64_t d0 = 0; d0 < dim; d0 += 16) {
            __m512 r[16], c[16];
            for (int l = 0; l < BLOCK; l++) r[l] = load16(k, bf16, slots[l] * row + off + d0);
            transpose16(r, c);
            for (int j = 0; j < 16; j++) _mm512_storeu_ps(kt + (d0 + j) * BLOCK, c[j]);
        }
        return;
    }
#endif
    for (int l = 0; l < BLOCK; l++)
        for (int64_t d = 0; d < dim; d++) kt[d * BLOCK + l] = load(k, bf16, slots[l] * row + off + d);
}

/* exp(x) for x <= 0 (softmax arguments), relative error ~1e-7; 0 below -87. */
static inline float exp_poly(float x) {
    const float xc = x < -87.0f ? -87.0f : x;
    const float kf = (xc * 1.44269504f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    const float r = (xc - kf * 0.693359375f) - kf * -2.12194440e-4f; /* x - k ln 2 */
    float p = 1.38888889e-3f;
    p = p * r + 8.33333333e-3f;
    p = p * r + 4.16666667e-2f;
    p = p * r + 1.66666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = ((int32_t)kf + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -87.0f ? 0.0f : p * scale;
}

/* Into L2 (prefetcht1), not non-temporal: AHEAD blocks of k and v rows (36 KB for a bf16
 * pool of 3 kv heads) outgrow L1, and a non-temporal line was gone again before its block came
 * (decode over 8 x 2000 keys: 34-38 -> 23-26 ms a step). */
static inline void prefetch_row(const char *row, int64_t bytes) {
    for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(row + i, 0, 2);
}

typedef struct { /* one query and head */
    float max;
    float sum[BLOCK];
} Running;

#define CHAINS 8 /* (query, head) pairs whose score chains run interleaved */

/* Scores of one block's 16 keys for `count` (query, head) pairs: s[p][l] = scale * (FMA chain
 * of q_p . k_l over d). Pairs go CHAINS at a time so that their chains overlap in the FMA
 * pipeline (one chain alone waits on each FMA's latency). */
#ifdef __AVX512F__
/* n chains at once (n a constant after inlining, so the accumulators stay in registers). */
static inline __attribute__((always_inline)) void score_chains(
    int n, const float *const *qs, const float *kt, int64_t dim, float scale, float (*s)[BLOCK]) {
    __m512 acc[CHAINS];
    for (int p = 0; p < n; p++) acc[p] = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; d++) {
        const __m512 kd = _mm512_loadu_ps(kt + d * BLOCK);
        for (int p = 0; p < n; p++)
            acc[p] = _mm512_fmadd_ps(_mm512_set1_ps(qs[p][d]), kd, acc[p]);
    }
    for (int p = 0; p < n; p++)
        _mm512_storeu_ps(s[p], _mm512_mul_ps(acc[p], _mm512_set1_ps(scale)));
}
#endif

static void scores(const float *const *qs, int count, const float *kt, int64_t dim, float scale,
                   float (*s)[BLOCK]) {
    for (int first = 0; first < count; first += CHAINS) {
        const int n = count - first < CHAINS ? count - first : CHAINS;
#ifdef __AVX512F__
        const float *const *q = qs + first;
        float (*out)[BLOCK] = s + first;
        switch (n) {
        case 8: score_chains(8, q, kt, dim, scale, out); break;
        case 7: score_chains(7, q, kt, dim, scale, out); break;
        case 6: score_chains(6, q, kt, dim, scale, out); break;
        case 5: score_chains(5, q, kt, dim, scale, out); break;
        case 4: score_chains(4, q, kt, dim, scale, out); break;
        case 3: score_chains(3, q, kt, dim, scale, out); break;
        case 2: score_chains(2, q, kt, dim, scale, out); break;
        default: score_chains(1, q, kt, dim, scale, out); break;
        }
#else
        float acc[CHAINS][BLOCK] = {{0}};
        for (int64_t d = 0; d < dim; d++) {
            const float *kd = kt + d * BLOCK;
            for (int p = 0; p < n; p++) {
                const float qd = qs[first + p][d];
                for (int l = 0; l < BLOCK; l++) acc[p][l] = fmaf(qd, kd[l], acc[p][l]);
            }
        }
        for (int p = 0; p < n; p++)
            for (int l = 0; l < BLOCK; l++) s[first + p][l] = acc[p][l] * scale;
#endif
    }
}

#ifdef __AVX512F__
/* exp_poly on 16 lanes: the same operations in the same order on each lane (the same bits). */
static inline __m512 exp_poly16(__m512 x) {
    const __mmask16 low = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    const __m512 xc = _mm512_mask_blend_ps(low, x, _mm512_set1_ps(-87.0f));
    const __m512 big = _mm512_set1_ps(12582912.0f);
    const __m512 kf = _mm512_sub_ps(
        _mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504f)), big), big);
    const __m512 r = _mm512_sub_ps(_mm512_sub_ps(xc, _mm512_mul_ps(kf, _mm512_set1_ps(0.693359375f))),
                                   _mm512_mul_ps(kf, _mm512_set1_ps(-2.12194440e-4f)));
    static const float coef[6] = {8.33333333e-3f, 4.16666667e-2f, 1.66666667e-1f, 0.5f, 1.0f,
                                  1.0f};
    __m512 p = _mm512_set1_ps(1.38888889e-3f);
    for (int i = 0; i < 6; i++) p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(coef[i]));
    const __m512i bits = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvttps_epi32(kf), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(~low, p, _mm512_castsi512_ps(bits));
}
#endif

/* One block for one query and head, given its scores: the running max (rescaling the sums
 * and the output when it grows), then s becomes the weights exp(s - max), 0 past `valid`.
 * pairs (the pair path): the weights rounded to bf16 go there instead, as 8 words of two. */
static void update(float *s, int valid, int64_t dim, Running *run, float *acc, uint32_t *pairs) {
#ifdef __AVX512F__
    if (BLOCK == 16) { /* the same values, without a chain of 16 scalar compares */
        const __mmask16 live = valid >= 16 ? 0xFFFF : (__mmask16)((1u << valid) - 1u);
        const __m512 sv = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), live, s);
        const float block_top = _mm512_reduce_max_ps(sv);
        const float top = block_top > run->max ? block_top : run->max;
        __m512 sum = _mm512_loadu_ps(run->sum);
        if (top > run->max) {
            const float f = exp_poly(run->max - top);
            for (int64_t d = 0; d < dim; d++) acc[d] *= f;
            sum = _mm512_mul_ps(sum, _mm512_set1_ps(f));
            run->max = top;
        }
        const __m512 w = exp_poly16(_mm512_sub_ps(sv, _mm512_set1_ps(top)));
#ifdef __AVX512BF16__
        if (pairs) { /* the weighted sums read the words; the sum adds the rounded weights */
            const __m256i half = (__m256i)_mm512_cvtneps_pbh(w);
            _mm256_storeu_si256((__m256i *)pairs, half);
            const __m512 rounded =
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
            _mm512_storeu_ps(run->sum, _mm512_add_ps(sum, rounded));
            return;
        }
#endif
        _mm512_storeu_ps(s, w);
        _mm512_storeu_ps(run->sum, _mm512_add_ps(sum, w));
        return;
    }
#endif
    (void)pairs; /* the pair path has AVX-512 */
    float top = run->max;
    for (int l = 0; l < BLOCK; l++) {
        s[l] = l < valid ? s[l] : -INFINITY;
        top = s[l] > top ? s[l] : top;
    }
    if (top > run->max) {
        const float f = exp_poly(run->max - top);
        for (int64_t d = 0; d < dim; d++) acc[d] *= f;
        for (int l = 0; l < BLOCK; l++) run->sum[l] *= f;
        run->max = top;
    }
    for (int l = 0; l < BLOCK; l++) {
        s[l] = exp_poly(s[l] - top);
        run->sum[l] += s[l];
    }
}

#define VPAIRS 4 /* pairs whose weighted sums run together, sharing each v row */

/* A bf16 pool's v rows of 64 are widened without shuffles: each 32-bit word of two bf16 gives
 * its low one by a shift and its high one by a mask, so the output row accumulates in the
 * split order (dims 0, 2, .. 30, then 1, 3, .. 31, then the same for 32 .. 63) and is put
 * back in order once, at the end. Each element's arithmetic is the same in either order. */
static inline int split_order(int bf16, int64_t dim) {
#ifdef __AVX512F__
    return bf16 && dim == 64;
#else
    (void)bf16;
    (void)dim;
    return 0;
#endif
}

static void unsplit64(float *o) {
    float t[64];
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 16; i++) {
            t[32 * h + 2 * i] = o[32 * h + i];
            t[32 * h + 2 * i + 1] = o[32 * h + 16 + i];
        }
    memcpy(o, t, sizeof t);
}

#ifdef __AVX512BF16__
/* The bf16 pair path (a bf16 pool with heads of 64, on a CPU with the bf16 dot product): each
 * vdpbf16ps adds two exact products to an fp32 lane, so scores and weighted sums take half the
 * instructions of the FMA chains. Its arithmetic, the same for every query wherever it is
 * computed: q rounded to bf16 (exact in a bf16 model, whose q is bf16 already); a score is a
 * chain of pair steps over d = (0, 1), (2, 3), .. (62, 63), times scale; a block's weights
 * exp(s - max) are rounded to bf16, and the running sum adds the rounded weights; the output
 * takes one pair step per key pair (0, 1), .. (14, 15) of each block. It gives other bits than
 * the FMA chains (as the linear's pair path does), on every path of this CPU alike. */
static inline int pair_path(int bf16, int64_t dim) { return bf16 && dim == 64; }

/* kt[i][l] = the 32-bit word (k_l[2i], k_l[2i+1]) of one block's 16 keys of one kv head. */
static void transpose_key_pairs(const uint16_t *k, const int64_t *slots, int64_t row,
                                int64_t off, uint32_t *kt) {
    for (int64_t d0 = 0; d0 < 64; d0 += 32) {
        __m512 r[16], c[16];
        for (int l = 0; l < BLOCK; l++)
            r[l] = _mm512_castsi512_ps(_mm512_loadu_si512(k + slots[l] * row + off + d0));
        transpose16(r, c);
        for (int j = 0; j < 16; j++) _mm512_storeu_ps((float *)kt + (d0 / 2 + j) * BLOCK, c[j]);
    }
}

/* vt[m][x] = the word (v_2m[d], v_2m+1[d]) for the dims d in the pair order: interleaving two
 * rows within each 128-bit lane puts dims 8L .. 8L+3 (low) or 8L+4 .. 8L+7 (high) of each
 * 32 in lane L (`unpair64` puts an output row back in order). */
static void interleave_value_pairs(const uint16_t *v, const int64_t *slots, int64_t row,
                                   int64_t off, uint32_t *vt) {
    for (int m = 0; m < BLOCK / 2; m++) {
        const uint16_t *a = v + slots[2 * m] * row + off, *b = v + slots[2 * m + 1] * row + off;
        for (int h = 0; h < 2; h++) {
            const __m512i x = _mm512_loadu_si512(a + 32 * h), y = _mm512_loadu_si512(b + 32 * h);
            _mm512_storeu_si512(vt + m * 64 + 32 * h, _mm512_unpacklo_epi16(x, y));
            _mm512_storeu_si512(vt + m * 64 + 32 * h + 16, _mm512_unpackhi_epi16(x, y));
        }
    }
}

static void unpair64(float *o) {
    float t[64];
    for (int j = 0; j < 4; j++)
        for (int lane = 0; lane < 4; lane++)
            for (int e = 0; e < 4; e++)
                t[32 * (j / 2) + 8 * lane + 4 * (j % 2) + e] = o[16 * j + 4 * lane + e];
    memcpy(o, t, sizeof t);
}

/* q rows of 64 as bf16 words: out[i] = (q[2i], q[2i+1]), nearest even. */
static void round_q_pairs(const float *q, uint32_t *out) {
    for (int h = 0; h < 2; h++)
        _mm512_storeu_si512(out + 16 * h, (__m512i)_mm512_cvtne2ps_pbh(
                                              _mm512_loadu_ps(q + 32 * h + 16),
                                              _mm512_loadu_ps(q + 32 * h)));
}

static inline __attribute__((always_inline)) void pair_score_chains(
    int n, const uint32_t *const *qs, const uint32_t *kt, float scale, float (*s)[BLOCK]) {
    __m512 acc[CHAINS];
    for (int p = 0; p < n; p++) acc[p] = _mm512_setzero_ps();
    for (int i = 0; i < 32; i++) {
        const __m512bh kd = (__m512bh)_mm512_loadu_si512(kt + i * BLOCK);
        for (int p = 0; p < n; p++)
            acc[p] = _mm512_dpbf16_ps(acc[p], (__m512bh)_mm512_set1_epi32((int)qs[p][i]), kd);
    }
    for (int p = 0; p < n; p++)
        _mm512_storeu_ps(s[p], _mm512_mul_ps(acc[p], _mm512_set1_ps(scale)));
}

static void pair_scores(const uint32_t *const *qs, int count, const uint32_t *kt, float scale,
                        float (*s)[BLOCK]) {
    for (int first = 0; first < count; first += CHAINS) {
        const int n = count - first < CHAINS ? count - first : CHAINS;
        const uint32_t *const *q = qs + first;
        float (*out)[BLOCK] = s + first;
        switch (n) {
        case 8: pair_score_chains(8, q, kt, scale, out); break;
        case 7: pair_score_chains(7, q, kt, scale, out); break;
        case 6: pair_score_chains(6, q, kt, scale, out); break;
        case 5: pair_score_chains(5, q, kt, scale, out); break;
        case 4: pair_score_chains(4, q, kt, scale, out); break;
        case 3: pair_score_chains(3, q, kt, scale, out); break;
        case 2: pair_score_chains(2, q, kt, scale, out); break;
        default: pair_score_chains(1, q, kt, scale, out); break;
        }
    }
}

/* acc_p (pair order) += the block's weights times its v rows, one pair step per key pair.
 * The v pairs come from vt (interleave_value_pairs), or, where vt is NULL, are interleaved
 * here from the rows (v, slots, row, off): the same words. */
static inline __attribute__((always_inline)) void pair_weighted_chains(
    int n, float *const *accs, const uint32_t *ws, const uint32_t *vt, const uint16_t *v,
    const int64_t *slots, int64_t row, int64_t off) {
    __m512 acc[VPAIRS][4];
    for (int p = 0; p < n; p++)
        for (int j = 0; j < 4; j++) acc[p][j] = _mm512_loadu_ps(accs[p] + 16 * j);
    for (int m = 0; m < BLOCK / 2; m++) {
        __m512bh vm[4];
        if (vt) {
            for (int j = 0; j < 4; j++) vm[j] = (__m512bh)_mm512_loadu_si512(vt + m * 64 + 16 * j);
        } else {
            const uint16_t *a = v + slots[2 * m] * row + off, *b = v + slots[2 * m + 1] * row + off;
            for (int h = 0; h < 2; h++) {
                const __m512i x = _mm512_loadu_si512(a + 32 * h), y = _mm512_loadu_si512(b + 32 * h);
                vm[2 * h] = (__m512bh)_mm512_unpacklo_epi16(x, y);
                vm[2 * h + 1] = (__m512bh)_mm512_unpackhi_epi16(x, y);
            }
        }
        for (int p = 0; p < n; p++) {
            const __m512bh w = (__m512bh)_mm512_set1_epi32((int)ws[8 * p + m]);
            for (int j = 0; j < 4; j++) acc[p][j] = _mm512_dpbf16_ps(acc[p][j], w, vm[j]);
        }
    }
    for (int p = 0; p < n; p++)
        for (int j = 0; j < 4; j++) _mm512_storeu_ps(accs[p] + 16 * j, acc[p][j]);
}

/* ws: each pair's 8 weight words in turn; vt: a buffer for the block's v pairs, made once
 * where more than one pass reads them. */
static void pair_weighted_sum(float *const *accs, const uint32_t *ws, int count,
                              uint32_t *vt, const uint16_t *v, const int64_t *slots,
                              int64_t row, int64_t off) {
    if (count > VPAIRS)
        interleave_value_pairs(v, slots, row, off, vt);
    else
        vt = NULL;
    for (int first = 0; first < count; first += VPAIRS) {
        const int n = count - first < VPAIRS ? count - first : VPAIRS;
        float *const *a = accs + first;
        const uint32_t *w = ws + 8 * first;
        switch (n) {
        case 4: pair_weighted_chains(4, a, w, vt, v, slots, row, off); break;
        case 3: pair_weighted_chains(3, a, w, vt, v, slots, row, off); break;
        case 2: pair_weighted_chains(2, a, w, vt, v, slots, row, off); break;
        default: pair_weighted_chains(1, a, w, vt, v, slots, row, off); break;
        }
    }
}
#else
static inline int pair_path(int bf16, int64_t dim) {
    (void)bf16;
    (void)dim;
    return 0;
}
#endif

/* acc_p[d] = fma(w_p[l], v_l[d], acc_p[d]) for l = 0 .. 15 in order, for `count` pairs that
 * read the same 16 v rows (weights past a query's keys are 0, adding exactly nothing). */
#ifdef __AVX512F__
/* n pairs (a constant after inlining) over a head of 64: 4n accumulators in registers. */
static inline __attribute__((always_inline)) void weighted_sum64(
    int n, float *const *accs, const float *const *ws, const void *v, int bf16,
    const int64_t *slots, int64_t row, int64_t off) {
    __m512 acc[VPAIRS][4];
    for (int p = 0; p < n; p++)
        for (int j = 0; j < 4; j++) acc[p][j] = _mm512_loadu_ps(accs[p] + 16 * j);
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    for (int l = 0; l < BLOCK; l++) {
        const int64_t at = slots[l] * row + off;
        __m512 vl[4];
        if (bf16) { /* in the split order (`split_order`): even dims of each 32, then odd */
            for (int h = 0; h < 2; h++) {
                const __m512i w = _mm512_loadu_si512((const uint16_t *)v + at + 32 * h);
                vl[2 * h] = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
                vl[2 * h + 1] = _mm512_castsi512_ps(_mm512_and_si512(w, high));
            }
        } else {
            for (int j = 0; j < 4; j++) vl[j] = load16(v, bf16, at + 16 * j);
        }
        for (int p = 0; p < n; p++) {
            const __m512 w = _mm512_set1_ps(ws[p][l]);
            for (int j = 0; j < 4; j++) acc[p][j] = _mm512_fmadd_ps(w, vl[j], acc[p][j]);
        }
    }
    for (int p = 0; p < n; p++)
        for (int j = 0; j < 4; j++) _mm512_storeu_ps(accs[p] + 16 * j, acc[p][j]);
}
#endif

static void weighted_sum(float *const *accs, const float *const *ws, int count, const void *v,
                         int bf16, const int64_t *slots, int64_t row, int64_t off, int64_t dim) {
#ifdef __AVX512F__
    if (dim == 64) { /* the common head size */
        for (int first = 0; first < count; first += VPAIRS) {
            const int n = count - first < VPAIRS ? count - first : VPAIRS;
            float *const *a = accs + first;
            const float *const *w = ws + first;
            switch (n) {
            case 4: weighted_sum64(4, a, w, v, bf16, slots, row, off); break;
            case 3: weighted_sum64(3, a, w, v, bf16, slots, row, off); break;
            case 2: weighted_sum64(2, a, w, v, bf16, slots, row, off); break;
            default: weighted_sum64(1, a, w, v, bf16, slots, row, off); break;
            }
        }
        return;
    }
#endif
    for (int p = 0; p < count; p++)
        for (int l = 0; l < BLOCK; l++) {
            const int64_t at = slots[l] * row + off;
            const float w = ws[p][l];
            float *acc = accs[p];
            for (int64_t d = 0; d < dim; d++) acc[d] = fmaf(w, load(v, bf16, at + d), acc[d]);
        }
}

static float lane_sum(const float *lanes) {
    float t[BLOCK];
    memcpy(t, lanes, sizeof t);
    for (int width = BLOCK / 2; width >= 1; width /= 2)
        for (int l = 0; l < width; l++) t[l] += t[l + width];
    return t[0];
}

/* Queries first .. first+count-1, all of one request (table row `slots`), their heads of kv
 * heads g0 .. g1-1 (each head's arithmetic is its own: which heads a call covers never changes
 * a bit). */
static int tile(const float *q, const void *k, const void *v, int bf16, const int64_t *slots,
                const int64_t *lens, int count, int64_t heads, int64_t kv_heads, int64_t g0,
                int64_t g1, int64_t dim, float scale, float *out) {
    const int64_t group = heads / kv_heads, row = kv_heads * dim;
    const int64_t elem = bf16 ? 2 : 4, row_bytes = row * elem;
    const int64_t h0 = g0 * group, h1 = g1 * group; /* the heads this call computes */
    int64_t longest = 0;
    for (int i = 0; i < count; i++) longest = lens[i] > longest ? lens[i] : longest;
    float *kt = malloc(sizeof(float) * (size_t)(dim * BLOCK));
    Running *runs = malloc(sizeof(Running) * (size_t)(count * heads));
    float (*s)[BLOCK] = malloc(sizeof(float) * BLOCK * (size_t)(count * group));
    const float **qs = malloc(sizeof(float *) * (size_t)(count * group));
    int *pair_query = malloc(sizeof(int) * (size_t)(count * group));
    float **accs = malloc(sizeof(float *) * (size_t)(count * group));
    const float **ws = malloc(sizeof(float *) * (size_t)(count * group));
    const int pairs_on = pair_path(bf16, dim);
    /* the pair path: q rows as bf16 words, each pair's weights as words, the block's v pairs */
    uint32_t *qw = pairs_on ? malloc(sizeof(uint32_t) * 32 * (size_t)(count * heads)) : NULL;
    uint32_t *wq = pairs_on ? malloc(sizeof(uint32_t) * 8 * (size_t)(count * group)) : NULL;
    uint32_t *vt = pairs_on ? malloc(sizeof(uint32_t) * 8 * 64) : NULL;
    const uint32_t **qws = pairs_on ? malloc(sizeof(uint32_t *) * (size_t)(count * group)) : NULL;
    if (kt == NULL || runs == NULL || s == NULL || qs == NULL || pair_query == NULL
        || accs == NULL || ws == NULL
        || (pairs_on && (qw == NULL || wq == NULL || vt == NULL || qws == NULL))) {
        free(qw);
        free(wq);
        free(vt);
        free((void *)qws);
        free(accs);
        free((void *)ws);
        free(kt);
        free(runs);
        free(s);
        free(qs);
        free(pair_query);
        return 1;
    }
    for (int i = 0; i < count; i++)
        for (int64_t h = h0; h < h1; h++) {
            for (int64_t d = 0; d < dim; d++) out[(i * heads + h) * dim + d] = 0.0f; /* accs */
            runs[i * heads + h].max = -INFINITY;
            for (int l = 0; l < BLOCK; l++) runs[i * heads + h].sum[l] = 0.0f;
#ifdef __AVX512BF16__
            if (pairs_on) round_q_pairs(q + (i * heads + h) * dim, qw + (i * heads + h) * 32);
#endif
        }
    int64_t block_slots[BLOCK];
    for (int64_t start = 0; start < longest; start += BLOCK) {
        const int present = longest - start < BLOCK ? (int)(longest - start) : BLOCK;
        for (int l = 0; l < BLOCK; l++) block_slots[l] = l < present ? slots[start + l] : 0;
        /* the next block's k and v rows: slots are scattered over the pool, which the
         * hardware prefetcher cannot guess, and the step is bound by reading them */
        for (int64_t j = start + AHEAD * BLOCK; j < longest && j < start + (AHEAD + 1) * BLOCK; j++) {
            const int64_t at = slots[j] * row_bytes + g0 * dim * elem;
            prefetch_row((const char *)k + at, (g1 - g0) * dim * elem);
            prefetch_row((const char *)v + at, (g1 - g0) * dim * elem);
        }
        for (int64_t g = g0; g < g1; g++) {
            int pairs = 0; /* the (query, head) pairs of this kv head that see the block */
            for (int i = 0; i < count; i++) {
                if (lens[i] <= start) continue;
                for (int64_t h = g * group; h < (g + 1) * group; h++) {
                    qs[pairs] = q + (i * heads + h) * dim;
                    if (pairs_on) qws[pairs] = qw + (i * heads + h) * 32;
                    pair_query[pairs++] = i;
                }
            }
#ifdef __AVX512BF16__
            if (pairs_on) {
                transpose_key_pairs(k, block_slots, row, g * dim, (uint32_t *)kt);
                pair_scores(qws, pairs, (const uint32_t *)kt, scale, s);
            } else
#endif
            {
                transpose_keys(k, bf16, block_slots, row, g * dim, dim, kt);
                scores(qs, pairs, kt, dim, scale, s);
            }
            for (int p = 0; p < pairs; p++) {
                const int i = pair_query[p];
                const int64_t h = g * group + p % group;
                const int valid = lens[i] - start < BLOCK ? (int)(lens[i] - start) : BLOCK;
                accs[p] = out + (i * heads + h) * dim;
                ws[p] = s[p];
                update(s[p], valid, dim, &runs[i * heads + h], accs[p],
                       pairs_on ? wq + 8 * p : NULL);
            }
#ifdef __AVX512BF16__
            if (pairs_on)
                pair_weighted_sum(accs, wq, pairs, vt, v, block_slots, row, g * dim);
            else
#endif
                weighted_sum(accs, ws, pairs, v, bf16, block_slots, row, g * dim, dim);
        }
    }
    for (int i = 0; i < count; i++)
        for (int64_t h = h0; h < h1; h++) {
            const float total = lane_sum(runs[i * heads + h].sum);
            float *o = out + (i * heads + h) * dim;
            for (int64_t d = 0; d < dim; d++) o[d] /= total;
#ifdef __AVX512BF16__
            if (pairs_on) {
                unpair64(o);
                continue;
            }
#endif
            if (split_order(bf16, dim)) unsplit64(o);
        }
    free(qw);
    free(wq);
    free(vt);
    free((void *)qws);
    free(kt);
    free(runs);
    free(s);
    free(qs);
    free(pair_query);
    free(accs);
    free((void *)ws);
    return 0;
}

int lmnb_attention(const float *q, const void *k, const void *v, int bf16,
                   const int64_t *table, int64_t table_stride, const int64_t *rows,
                   const int64_t *lens, int64_t num_q, int64_t heads, int64_t kv_heads,
                   int64_t dim, float scale, float *out, int num_threads) {
    /* tiles: runs of up to TILE consecutive queries that share a table row */
    int64_t *starts = malloc(sizeof(int64_t) * (size_t)(num_q + 1));
    if (starts == NULL) return 1;
    int64_t num_tiles = 0;
    for (int64_t t = 0; t < num_q; t++)
        if (t == 0 || rows[t] != rows[t - 1] || t - starts[num_tiles - 1] == TILE)
            starts[num_tiles++] = t;
    starts[num_tiles] = num_q;
    /* a work item is one tile's one kv head: items of a similar, smaller size balance the
     * threads (decode over contexts of different lengths, ~15-25% faster than a tile's every
     * head in one item at batch 8 to 64; extends neither gain nor lose) */
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t item = 0; item < num_tiles * kv_heads; item++) {
        const int64_t i = item / kv_heads, t = starts[i], g = item % kv_heads;
        if (tile(q + t * heads * dim, k, v, bf16, table + rows[t] * table_stride, lens + t,
                 (int)(starts[i + 1] - t), heads, kv_heads, g, g + 1, dim, scale,
                 out + t * heads * dim))
            failed = 1;
    }
    free(starts);
    return failed;
}
