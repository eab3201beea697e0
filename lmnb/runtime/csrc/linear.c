/* Batch-invariant matrix products for the CPU: y[m, n] = sum_k x[m, k] w[n, k] (+ b[n]).
 *
 * Why our own: a BLAS picks its kernel, blocking and K-splitting by the shape, so the same row
 * of x gives different bits when it is multiplied alone (a decode step) or among 37 rows (a
 * prefill), and in bf16 those bits flip greedy answers. Here every output element is one fused
 * multiply-add chain over k = 0 .. K-1 starting from 0, whatever the number of rows, the tile
 * the element falls in, or the thread that computes it; then the bias is added. The vector code
 * and the scalar tail compute that same chain (fmaf is one correctly rounded FMA, like the
 * vector instruction), so tiles of any size agree bit for bit.
 *
 * Weights are packed once into panels of 16 output columns: packed[p][k][16] (N padded to a
 * multiple of 16 with zeros), in fp32 or bf16 (bf16 is widened exactly to fp32 as it is read).
 * x and y are fp32 [M, K] and [M, N], contiguous. Work is split over OpenMP threads by blocks
 * of rows and columns, never over k.
 *
 * Quantized weights (linear.h: Q4, Q8, INT8) keep the same panels of 16 columns, with their
 * integers and scales side by side. A tile de-quantizes 32 k of its panels at a time into fp32
 * (w = fma(d, q, m) for Q4, s * q for the int8 formats; for the GGUF's blocks that is exactly
 * the value the file means, since d * q is exact in fp32 for an fp16 d and a 4- or 8-bit q)
 * and runs the same FMA chain over them, so a quantized weight gives the bits of the fp32
 * weight holding its de-quantized values, while a decode step reads 5 (Q4) or 8-9 (int8) bits
 * a weight instead of 16 or 32. With bf16 activations on a CPU with the bf16 dot product, the
 * same Q4 and Q8 panels serve the pair formats (Q4_PAIRS, Q8_PAIRS, tile_q_pairs): per group
 * of 32 k a chain of pair steps from 0, then the group's scales, in one fixed order.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "linear.h"
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define PANEL 16 /* output columns a panel holds */
#define NP 2     /* panels a register tile of MR rows covers (32 columns) */
#define WP 4     /* panels a tile call covers: up to 2 rows take all 4 at once (more chains in
                  * flight: one or two rows are otherwise bound by the FMA latency) */
#define MR 6     /* rows a tile covers */
#define MR_PAIRS 8 /* rows a tile of the quantized pair formats covers */
#define COL_BLOCK 4 /* panels a work item covers */
#define ROW_BLOCK 96 /* rows a work item covers (a multiple of MR and MR_PAIRS; 48 -> 96: a q4/q8
                      * pair item decodes its panels for twice the rows, ~2-4% faster extends) */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* x rounded to bf16, nearest even (as torch rounds) */
static inline uint16_t f32_to_bf16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    bits += 0x7FFF + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

#define GROUP 32 /* k a quantized span covers: the GGUF's block (Q4 and Q8 scales: one a group) */

/* IEEE half -> float, exactly (every half is a float). */
static inline float half_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13); /* inf, nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* a subnormal half is a normal float */
        exp = 113;
        while (!(man & 0x400)) {
            man <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* The effective weight of column j of a quantized panel at k = kk: what every path multiplies
 * by. wp, sp: the panel's integers and scales; group: k per scale (Q8: 32, INT8: k). */
static inline float q_weight(int fmt, const void *wp, const void *sp, int64_t group, int64_t kk,
                             int j) {
    if (fmt == LMNB_W_Q4 || fmt == LMNB_W_Q4_PAIRS || fmt == LMNB_W_Q4_Q8) {
        /* [k/2][16]: low nibble k even */
        const uint8_t b = ((const uint8_t *)wp)[(kk / 2) * PANEL + j];
        const float q = (float)(kk % 2 ? b >> 4 : b & 0xF);
        const uint16_t *s = (const uint16_t *)sp + (kk / GROUP) * 2 * PANEL; /* d[16], m[16] */
        return fmaf(half_to_f32(s[j]), q, half_to_f32(s[PANEL + j]));
    }
    const float q = (float)((const int8_t *)wp)[kk * PANEL + j];
    return ((const float *)sp)[(kk / group) * PANEL + j] * q;
}

/* Pack w [N, K] (fp32) into panels; dst holds ceil(N/16) * K * 16 elements of the given
 * width (4: fp32, 2: bf16, rounded to nearest even). */
void lmnb_pack_weight(const float *w, int64_t n, int64_t k, void *dst, int elem_bytes) {
    const int64_t panels = (n + PANEL - 1) / PANEL;
#pragma omp parallel for
    for (int64_t p = 0; p < panels; p++) {
        for (int64_t kk = 0; kk < k; kk++) {
            for (int64_t j = 0; j < PANEL; j++) {
                const int64_t col = p * PANEL + j, at = (p * k + kk) * PANEL + j;
                const float val = col < n ? w[col * k + kk] : 0.0f;
                if (elem_bytes == 4) {
                    ((float *)dst)[at] = val;
                } else {
                    ((uint16_t *)dst)[at] = f32_to_bf16(val);
                }
            }
        }
    }
}

/* The scalar chain for one element: the reference the vector tiles reproduce bit for bit. */
static float chain(const float *x, const void *wp, int64_t k, int bf16, int64_t j) {
    float acc = 0.0f;
    for (int64_t kk = 0; kk < k; kk++) {
        const float wv = bf16 ? bf16_to_f32(((const uint16_t *)wp)[kk * PANEL + j])
                              : ((const float *)wp)[kk * PANEL + j];
        acc = fmaf(x[kk], wv, acc);
    }
    return acc;
}

/* The same chain over a quantized panel's effective weights. */
static float qchain(int fmt, const float *x, const void *wp, const void *sp, int64_t k,
                    int64_t group, int j) {
    float acc = 0.0f;
    for (int64_t kk = 0; kk < k; kk++) acc = fmaf(x[kk], q_weight(fmt, wp, sp, group, kk, j), acc);
    return acc;
}

static void store(float *y, int64_t ldy, int64_t row, int64_t col, int64_t n, float v,
                  const float *bias) {
    if (col < n) y[row * ldy + col] = bias ? v + bias[col] : v;
}

#ifdef __AVX512F__
static inline __m512 load_panel(const void *wp, int64_t kk, int bf16) {
    if (bf16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)wp + kk * PANEL));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_loadu_ps((const float *)wp + kk * PANEL);
}

/* store() for the 16 columns from col of a row at once (those < n): one masked vector store
 * rather than 16 scalar ones (the same fp32 add of the bias, the same bits). */
static inline void store_panel(float *y, int64_t ldy, int64_t row, int64_t col, int64_t n,
                               __m512 v, const float *bias) {
    if (col >= n) return;
    const __mmask16 keep =
        n - col >= PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - col)) - 1);
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(keep, bias + col));
    _mm512_mask_storeu_ps(y + row * ldy + col, keep, v);
}

static inline void store_tile(int rows, int np, __m512 acc[MR][WP], float *y, int64_t ldy,
                              int64_t row0, int64_t col0, int64_t n, const float *bias) {
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < np; p++)
            store_panel(y, ldy, row0 + i, col0 + p * PANEL, n, acc[i][p], bias);
}

/* rows x (np panels) of y; acc[i][p] lane j holds the chain of element (i, 16p + j). */
static inline __attribute__((always_inline)) void tile(
    int rows, int np, const float *x, int64_t k, const void *const wps[WP], int bf16, float *y,
    int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
    __m512 acc[MR][WP];
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < np; p++) acc[i][p] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k; kk++) {
        __m512 wv[WP];
        for (int p = 0; p < np; p++) wv[p] = load_panel(wps[p], kk, bf16);
        for (int i = 0; i < rows; i++) {
            const __m512 xv = _mm512_set1_ps(x[i * k + kk]);
            for (int p = 0; p < np; p++) acc[i][p] = _mm512_fmadd_ps(xv, wv[p], acc[i][p]);
        }
    }
    store_tile(rows, np, acc, y, ldy, row0, col0, n, bias);
}

/* rows <= 2: all WP panels in one pass; more rows: NP panels a pass (registers). */
#define BY_ROWS(call, wide)                                                                  \
    do {                                                                                     \
        if (rows <= 2) {                                                                     \
            if (rows == 2) wide(2); else wide(1);                                            \
            break;                                                                           \
        }                                                                                    \
        for (int h = 0; h < WP; h += NP) {                                                   \
            const void *const *wh = wps + h, *const *sh = sps + h;                           \
            const int64_t ch = col0 + h * PANEL;                                             \
            (void)sh;                                                                        \
            switch (rows) { /* a constant row count per case: accumulators in registers */   \
            case 6: call(6); break;                                                          \
            case 5: call(5); break;                                                          \
            case 4: call(4); break;                                                          \
            default: call(3); break;                                                         \
            }                                                                                \
        }                                                                                    \
    } while (0)

/* The row-count switch of the tiles that keep their chains in memory (tile_q_pairs, tile_q8:
 * fn(rows, panels, mode, x, k, wps, sps, y, ldy, row0, col0, n, bias)): rows <= 2 take all WP
 * panels at once, up to MR_PAIRS rows NP panels a pass; a constant row count per case keeps
 * the dot products in registers. */
#define MEMORY_TILE(fn, r, mode)                                                             \
    do {                                                                                     \
        if ((r) <= 2) {                                                                      \
            fn(r, WP, mode, x, k, wps, sps, y, ldy, row0, col0, n, bias);                    \
            break;                                                                           \
        }                                                                                    \
        for (int h = 0; h < WP; h += NP)                                                     \
            fn(r, NP, mode, x, k, wps + h, sps + h, y, ldy, row0, col0 + h * PANEL, n,      \
               bias);                                                                    \
    } while (0)
#define MEMORY_TILES(fn, mode)                                                               \
    switch (rows) {                                                                          \
    case 8: MEMORY_TILE(fn, 8, mode); break;                                                 \
    case 7: MEMORY_TILE(fn, 7, mode); break;                                                 \
    case 6: MEMORY_TILE(fn, 6, mode); break;                                                 \
    case 5: MEMORY_TILE(fn, 5, mode); break;                                                 \
    case 4: MEMORY_TILE(fn, 4, mode); break;                                                 \
    case 3: MEMORY_TILE(fn, 3, mode); break;                                                 \
    case 2: MEMORY_TILE(fn, 2, mode); break;                                                 \
    default: MEMORY_TILE(fn, 1, mode); break;                                                \
    }

static void tile_rows(int rows, const float *x, int64_t k, const void *const wps[WP], int bf16,
                      float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
                      const float *bias) {
    const void *const *sps = wps; /* no scales */
#define CALL(r) tile(r, NP, x, k, wh, bf16, y, ldy, row0, ch, n, bias)
#define WIDE(r) tile(r, WP, x, k, wps, bf16, y, ldy, row0, col0, n, bias)
    BY_ROWS(CALL, WIDE);
#undef CALL
#undef WIDE
}

/* rows x (np quantized panels): each k's 16 weights a panel de-quantized in registers (the same
 * values as q_weight), then the same FMA chain as the fp32 tiles. */
static inline __attribute__((always_inline)) void qtile(
    int rows, int np, int fmt, const float *x, int64_t k, int64_t group, const void *const wps[WP],
    const void *const sps[WP], float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
    const float *bias) {
    __m512 acc[MR][WP];
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < np; p++) acc[i][p] = _mm512_setzero_ps();
    if (fmt == LMNB_W_Q4) {
        /* q as a float: vpermps reads the index's low 4 bits, the low nibble as it is */
        const __m512 values = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (int64_t g = 0; g < k / GROUP; g++) {
            __m512 d[WP], m[WP];
            const uint8_t *q[WP];
            for (int p = 0; p < np; p++) {
                const uint16_t *s = (const uint16_t *)sps[p] + g * 2 * PANEL;
                d[p] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)s));
                m[p] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + PANEL)));
                q[p] = (const uint8_t *)wps[p] + g * (GROUP / 2) * PANEL;
            }
            for (int i = 0; i < GROUP / 2; i++) {
                const int64_t kk = g * GROUP + 2 * i;
                __m512 w0[WP], w1[WP];
                for (int p = 0; p < np; p++) {
                    const __m512i b = _mm512_cvtepu8_epi32(
                        _mm_loadu_si128((const __m128i *)(q[p] + i * PANEL)));
                    const __m512 q0 = _mm512_permutexvar_ps(b, values);
                    const __m512 q1 = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), values);
                    w0[p] = _mm512_fmadd_ps(d[p], q0, m[p]);
                    w1[p] = _mm512_fmadd_ps(d[p], q1, m[p]);
                }
                for (int i2 = 0; i2 < rows; i2++) {
                    const __m512 x0 = _mm512_set1_ps(x[i2 * k + kk]);
                    const __m512 x1 = _mm512_set1_ps(x[i2 * k + kk + 1]);
                    for (int p = 0; p < np; p++) {
                        acc[i2][p] = _mm512_fmadd_ps(x0, w0[p], acc[i2][p]);
                        acc[i2][p] = _mm512_fmadd_ps(x1, w1[p], acc[i2][p]);
                    }
                }
            }
        }
    } else { /* int8 formats: a scale per group of k (Q8: 32, INT8: all of k) */
        for (int64_t k0 = 0; k0 < k; k0 += GROUP) {
            const int64_t len = k - k0 < GROUP ? k - k0 : GROUP;
            __m512 s[WP];
            for (int p = 0; p < np; p++)
                s[p] = _mm512_loadu_ps((const float *)sps[p] + (k0 / group) * PANEL);
            for (int64_t kk = k0; kk < k0 + len; kk++) {
                __m512 wv[WP];
                for (int p = 0; p < np; p++) {
                    const __m512i b = _mm512_cvtepi8_epi32(
                        _mm_loadu_si128((const __m128i *)((const int8_t *)wps[p] + kk * PANEL)));
                    wv[p] = _mm512_mul_ps(s[p], _mm512_cvtepi32_ps(b));
                }
                for (int i = 0; i < rows; i++) {
                    const __m512 xv = _mm512_set1_ps(x[i * k + kk]);
                    for (int p = 0; p < np; p++) acc[i][p] = _mm512_fmadd_ps(xv, wv[p], acc[i][p]);
                }
            }
        }
    }
    store_tile(rows, np, acc, y, ldy, row0, col0, n, bias);
}

static void qtile_rows(int rows, int fmt, const float *x, int64_t k, int64_t group,
                       const void *const wps[WP], const void *const sps[WP], float *y,
                       int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
#define CALL(r) qtile(r, NP, fmt, x, k, group, wh, sh, y, ldy, row0, ch, n, bias)
#define WIDE(r) qtile(r, WP, fmt, x, k, group, wps, sps, y, ldy, row0, col0, n, bias)
    BY_ROWS(CALL, WIDE);
#undef CALL
#undef WIDE
}
#elif defined(__AVX2__) && defined(__FMA__)
/* The same chains with 8-wide vectors: a panel is two halves; tiles of up to 3 rows keep the
 * 12 accumulators in the 16 registers. */
#define MR2 3
/* store() for the 8 columns from col of a row: one vector store where all 8 are < n (the same
 * fp32 add of the bias, the same bits), else column by column. */
static inline void store8(float *y, int64_t ldy, int64_t row, int64_t col, int64_t n, __m256 v,
                          const float *bias) {
    if (col + 8 <= n) {
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + col));
        _mm256_storeu_ps(y + row * ldy + col, v);
        return;
    }
    float out[8];
    _mm256_storeu_ps(out, v);
    for (int j = 0; j < 8; j++) store(y, ldy, row, col + j, n, out[j], bias);
}

static inline __m256 load_half(const void *wp, int64_t kk, int half, int bf16) {
    if (bf16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)wp + kk * PANEL + 8 * half));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float *)wp + kk * PANEL + 8 * half);
}

static inline __attribute__((always_inline)) void tile2(
    int rows, const float *x, int64_t k, const void *const wps[NP], int bf16, float *y,
    int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
    __m256 acc[MR2][2 * NP];
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < 2 * NP; p++) acc[i][p] = _mm256_setzero_ps();
    for (int64_t kk = 0; kk < k; kk++) {
        __m256 wv[2 * NP];
        for (int p = 0; p < 2 * NP; p++) wv[p] = load_half(wps[p / 2], kk, p % 2, bf16);
        for (int i = 0; i < rows; i++) {
            const __m256 xv = _mm256_set1_ps(x[i * k + kk]);
            for (int p = 0; p < 2 * NP; p++) acc[i][p] = _mm256_fmadd_ps(xv, wv[p], acc[i][p]);
        }
    }
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < 2 * NP; p++)
            store8(y, ldy, row0 + i, col0 + p * 8, n, acc[i][p], bias);
}

static void tile_rows(int rows, const float *x, int64_t k, const void *const wps[WP], int bf16,
                      float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
                      const float *bias) {
    for (int h = 0; h < WP; h += NP)
        for (int i = 0; i < rows; i += MR2) {
            const int r = rows - i < MR2 ? rows - i : MR2;
            const float *xi = x + i * k;
            const void *const *wh = wps + h;
            const int64_t ch = col0 + h * PANEL;
            switch (r) {
            case 3: tile2(3, xi, k, wh, bf16, y, ldy, row0 + i, ch, n, bias); break;
            case 2: tile2(2, xi, k, wh, bf16, y, ldy, row0 + i, ch, n, bias); break;
            default: tile2(1, xi, k, wh, bf16, y, ldy, row0 + i, ch, n, bias); break;
            }
        }
}

/* As the AVX-512 dequant_span, 8 columns at a time. */
static void dequant_span(int fmt, const void *wp, const void *sp, int64_t group, int64_t k0,
                         int64_t len, float *buf) {
    for (int h = 0; h < 2; h++) {
        if (fmt == LMNB_W_Q4) {
            const uint16_t *s = (const uint16_t *)sp + (k0 / GROUP) * 2 * PANEL + 8 * h;
            const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)s));
            const __m256 m = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + PANEL)));
            const __m256i low = _mm256_set1_epi32(0xF);
            const uint8_t *q = (const uint8_t *)wp + k0 / 2 * PANEL + 8 * h;
            for (int64_t i = 0; i < len / 2; i++) {
                const __m256i b =
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + i * PANEL)));
                const __m256 q0 = _mm256_cvtepi32_ps(_mm256_and_si256(b, low));
                const __m256 q1 = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
                _mm256_store_ps(buf + 2 * i * PANEL + 8 * h, _mm256_fmadd_ps(d, q0, m));
                _mm256_store_ps(buf + (2 * i + 1) * PANEL + 8 * h, _mm256_fmadd_ps(d, q1, m));
            }
            continue;
        }
        const __m256 s = _mm256_loadu_ps((const float *)sp + (k0 / group) * PANEL + 8 * h);
        const int8_t *q = (const int8_t *)wp + k0 * PANEL + 8 * h;
        for (int64_t i = 0; i < len; i++) {
            const __m256i b =
                _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + i * PANEL)));
            _mm256_store_ps(buf + i * PANEL + 8 * h, _mm256_mul_ps(s, _mm256_cvtepi32_ps(b)));
        }
    }
}

static inline __attribute__((always_inline)) void qtile2(
    int rows, int fmt, const float *x, int64_t k, int64_t group, const void *const wps[NP],
    const void *const sps[NP], float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
    const float *bias) {
    float buf[NP][GROUP * PANEL] __attribute__((aligned(32)));
    __m256 acc[MR2][2 * NP];
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < 2 * NP; p++) acc[i][p] = _mm256_setzero_ps();
    for (int64_t k0 = 0; k0 < k; k0 += GROUP) {
        const int64_t len = k - k0 < GROUP ? k - k0 : GROUP;
        for (int p = 0; p < NP; p++) dequant_span(fmt, wps[p], sps[p], group, k0, len, buf[p]);
        for (int64_t kk = 0; kk < len; kk++) {
            __m256 wv[2 * NP];
            for (int p = 0; p < 2 * NP; p++)
                wv[p] = _mm256_load_ps(buf[p / 2] + kk * PANEL + 8 * (p % 2));
            for (int i = 0; i < rows; i++) {
                const __m256 xv = _mm256_set1_ps(x[i * k + k0 + kk]);
                for (int p = 0; p < 2 * NP; p++) acc[i][p] = _mm256_fmadd_ps(xv, wv[p], acc[i][p]);
            }
        }
    }
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < 2 * NP; p++)
            store8(y, ldy, row0 + i, col0 + p * 8, n, acc[i][p], bias);
}

static void qtile_rows(int rows, int fmt, const float *x, int64_t k, int64_t group,
                       const void *const wps[WP], const void *const sps[WP], float *y,
                       int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
    for (int h = 0; h < WP; h += NP)
        for (int i = 0; i < rows; i += MR2) {
            const int r = rows - i < MR2 ? rows - i : MR2;
            const float *xi = x + i * k;
            const void *const *wh = wps + h, *const *sh = sps + h;
            const int64_t ch = col0 + h * PANEL;
            switch (r) {
            case 3: qtile2(3, fmt, xi, k, group, wh, sh, y, ldy, row0 + i, ch, n, bias); break;
            case 2: qtile2(2, fmt, xi, k, group, wh, sh, y, ldy, row0 + i, ch, n, bias); break;
            default: qtile2(1, fmt, xi, k, group, wh, sh, y, ldy, row0 + i, ch, n, bias); break;
            }
        }
}
#else
static void tile_rows(int rows, const float *x, int64_t k, const void *const wps[WP], int bf16,
                      float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
                      const float *bias) {
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < WP; p++)
            for (int j = 0; j < PANEL; j++)
                store(y, ldy, row0 + i, col0 + p * PANEL + j, n,
                      chain(x + i * k, wps[p], k, bf16, j), bias);
}

static void qtile_rows(int rows, int fmt, const float *x, int64_t k, int64_t group,
                       const void *const wps[WP], const void *const sps[WP], float *y,
                       int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < WP; p++)
            for (int j = 0; j < PANEL; j++)
                store(y, ldy, row0 + i, col0 + p * PANEL + j, n,
                      qchain(fmt, x + i * k, wps[p], sps[p], k, group, j), bias);
}
#endif

#ifdef __AVX512BF16__
/* bf16 activations times bf16 weights with the CPU's bf16 dot product (avx512_bf16): each
 * instruction adds two products, x[2i] w[2i] and x[2i+1] w[2i+1], to an fp32 lane, so an
 * element is one chain of these pair steps over i = 0 .. K/2-1, whatever the tile. Weights are
 * packed in pairs: packed[p][i][16][2] (lmnb_pack_pairs); K must be even. Twice the products
 * per instruction of the fp32 chain; the bits differ from it (another arithmetic), but depend
 * on nothing but the row, like it. */
static inline __attribute__((always_inline)) void tile_pairs(
    int rows, int np, const uint16_t *x, int64_t k, const void *const wps[WP], float *y,
    int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
    __m512 acc[MR][WP];
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < np; p++) acc[i][p] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k / 2; kk++) {
        __m512bh wv[WP];
        for (int p = 0; p < np; p++)
            wv[p] = (__m512bh)_mm512_loadu_si512((const uint16_t *)wps[p] + kk * 2 * PANEL);
        for (int i = 0; i < rows; i++) {
            int32_t pair;
            memcpy(&pair, x + i * k + 2 * kk, sizeof pair);
            const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
            for (int p = 0; p < np; p++) acc[i][p] = _mm512_dpbf16_ps(acc[i][p], xv, wv[p]);
        }
    }
    store_tile(rows, np, acc, y, ldy, row0, col0, n, bias);
}

static void tile_pairs_rows(int rows, const uint16_t *x, int64_t k, const void *const wps[WP],
                            float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
                            const float *bias) {
    const void *const *sps = wps; /* no scales */
#define CALL(r) tile_pairs(r, NP, x, k, wh, y, ldy, row0, ch, n, bias)
#define WIDE(r) tile_pairs(r, WP, x, k, wps, y, ldy, row0, col0, n, bias)
    BY_ROWS(CALL, WIDE);
#undef CALL
#undef WIDE
}

/* Quantized weights times bf16 activations on the CPU's bf16 dot product (LMNB_W_Q4_PAIRS,
 * LMNB_W_Q8_PAIRS: the Q4 and Q8 panels as they are). A 4-bit or 8-bit q is exact in bf16, so
 * per group of 32 k an element takes dot = the pair steps of x[k] q[k] from 0 (exact products,
 * fp32 sums), then, Q4: acc = fma(m, sx, acc), acc = fma(d, dot, acc), where sx is the sum of
 * the row's x over the group (fp32, in k order, once per row); Q8: acc = fma(d, dot, acc).
 * The row's arithmetic, whatever the tile: another rounding of the same sum as the fp32 chain
 * over the de-quantized weights, at about half its instructions per row.
 * x rows: k bf16, then k/32 fp32 group sums (pair_rows). */
/* A format flag of the pair tiles: the panels were decoded beforehand (decode_pairs), each
 * k pair's 16 lanes as q_pair returns them, so tiles after the first read them as they are. */
#define DECODED 0x100

static inline __attribute__((always_inline)) __m512bh q_pair(int fmt, const void *wp,
                                                               int64_t kk) {
    if (fmt & DECODED)
        return (__m512bh)_mm512_load_si512((const uint32_t *)wp + kk / 2 * PANEL);
    /* lane c: bf16(q[c][kk]) | bf16(q[c][kk + 1]) << 16 (small integers: the high half of the
     * float's bits, the low half being zero) */
    if (fmt == LMNB_W_Q4_PAIRS) { /* a table of the 16 values' bf16 bits, indexed by word */
        static const uint16_t bf16_of[32] __attribute__((aligned(64))) = {
            0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0,
            0x4100, 0x4110, 0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0x4170};
        const __m512i b = _mm512_cvtepu8_epi32(
            _mm_loadu_si128((const __m128i *)((const uint8_t *)wp + kk / 2 * PANEL)));
        /* low word: the low nibble (bits 12-15 hold the same nibble again: vpermw reads bits
         * 0-4); high word: the high nibble */
        const __m512i idx = _mm512_ternarylogic_epi32(b, _mm512_slli_epi32(b, 12),
                                                      _mm512_set1_epi32(0xF), 0xE4);
        return (__m512bh)_mm512_permutexvar_epi16(idx, _mm512_load_si512(bf16_of));
    }
    const int8_t *q = (const int8_t *)wp + kk * PANEL;
    __m512i lo = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q));
    __m512i hi = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + PANEL)));
    lo = _mm512_castps_si512(_mm512_cvtepi32_ps(lo));
    hi = _mm512_castps_si512(_mm512_cvtepi32_ps(hi));
    return (__m512bh)_mm512_or_si512(_mm512_srli_epi32(lo, 16), hi);
}

static inline __attribute__((always_inline)) void tile_q_pairs(
    int rows, int np, int fmt, const uint8_t *x, int64_t k, const void *const wps[WP],
    const void *const sps[WP], float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
    const float *bias) {
    const int64_t stride = 2 * k + k / GROUP * 4; /* bytes a row of x */
    /* the chains' running values live in memory (touched once a group), so that the dot
     * products of up to MR_PAIRS rows fit the registers and a weight is decoded once */
    float acc[MR_PAIRS][WP][PANEL] __attribute__((aligned(64)));
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < np; p++) _mm512_store_ps(acc[i][p], _mm512_setzero_ps());
    for (int64_t g = 0; g < k / GROUP; g++) {
        __m512 dot[MR_PAIRS][WP];
        for (int i = 0; i < rows; i++)
            for (int p = 0; p < np; p++) dot[i][p] = _mm512_setzero_ps();
        for (int64_t kk = g * GROUP; kk < (g + 1) * GROUP; kk += 2) {
            __m512bh wv[WP];
            for (int p = 0; p < np; p++) wv[p] = q_pair(fmt, wps[p], kk);
            for (int i = 0; i < rows; i++) {
                int32_t pair;
                memcpy(&pair, x + i * stride + kk * 2, sizeof pair);
                const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
                for (int p = 0; p < np; p++) dot[i][p] = _mm512_dpbf16_ps(dot[i][p], xv, wv[p]);
            }
        }
        for (int p = 0; p < np; p++) {
            if ((fmt & ~DECODED) == LMNB_W_Q4_PAIRS) {
                const uint16_t *s = (const uint16_t *)sps[p] + g * 2 * PANEL;
                const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)s));
                const __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + PANEL)));
                for (int i = 0; i < rows; i++) {
                    float sx;
                    memcpy(&sx, x + i * stride + 2 * k + g * 4, sizeof sx);
                    __m512 a = _mm512_load_ps(acc[i][p]);
                    a = _mm512_fmadd_ps(m, _mm512_set1_ps(sx), a);
                    _mm512_store_ps(acc[i][p], _mm512_fmadd_ps(d, dot[i][p], a));
                }
            } else {
                const __m512 d = _mm512_loadu_ps((const float *)sps[p] + g * PANEL);
                for (int i = 0; i < rows; i++)
                    _mm512_store_ps(acc[i][p],
                                    _mm512_fmadd_ps(d, dot[i][p], _mm512_load_ps(acc[i][p])));
            }
        }
    }
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < np; p++)
            store_panel(y, ldy, row0 + i, col0 + p * PANEL, n, _mm512_load_ps(acc[i][p]), bias);
}

static void tile_q_pairs_rows(int rows, int fmt, const uint8_t *x, int64_t k,
                              const void *const wps[WP], const void *const sps[WP], float *y,
                              int64_t ldy, int64_t row0, int64_t col0, int64_t n,
                              const float *bias) {
    switch (fmt) { /* a constant format per case */
    case LMNB_W_Q4_PAIRS: MEMORY_TILES(tile_q_pairs, LMNB_W_Q4_PAIRS); break;
    case LMNB_W_Q4_PAIRS | DECODED: MEMORY_TILES(tile_q_pairs, LMNB_W_Q4_PAIRS | DECODED); break;
    case LMNB_W_Q8_PAIRS | DECODED: MEMORY_TILES(tile_q_pairs, LMNB_W_Q8_PAIRS | DECODED); break;
    default: MEMORY_TILES(tile_q_pairs, LMNB_W_Q8_PAIRS); break;
    }
}

/* A panel's pair lanes for every k pair, out [k/2][16] (64-byte aligned): what q_pair gives,
 * computed once for all the row tiles of a work item instead of once a tile (the same bits:
 * the tiles read them where they would have decoded them). */
static void decode_pairs(int fmt, const void *wp, int64_t k, uint32_t *out) {
    for (int64_t kk = 0; kk < k; kk += 2)
        _mm512_store_si512(out + kk / 2 * PANEL, (__m512i)q_pair(fmt, wp, kk));
}

#endif

#ifdef __AVX512F__
/* This thread's buffer of decoded panels, grown to the largest asked for (kept: a work item
 * a step needs it again). NULL without memory. */
static uint32_t *decoded_buffer(size_t words) {
    static __thread uint32_t *buf;
    static __thread size_t cap;
    if (words > cap) {
        free(buf);
        buf = aligned_alloc(64, (words * sizeof *buf + 63) / 64 * 64);
        cap = buf ? words : 0;
    }
    return buf;
}
#endif

/* ---- int8 activations: LMNB_W_Q4_Q8 ------------------------------------------------------
 * The Q4 panels as they are, times x quantized to int8 per group of 32 k, with integer dot
 * products. A row of x becomes Q8_ROW(k) bytes: per group its 32 qx in the order the panels'
 * bytes give them (per 8 k: the 4 even k, then the 4 odd ones, since a panel byte holds k and
 * k + 1 in its two nibbles), then after all groups' qx, per group dx and sx (fp32):
 *     amax = max |x| over the group, dx = amax / 127, qx = rint(x * (127 / amax)) (nearest
 *     even; 0 where amax is 0), sx = dx * sum(qx).
 * An element then takes, per group g in order from acc = 0:
 *     dot = sum of q * qx over the group (an exact integer),
 *     acc = fma(m, sx, acc), acc = fma(d * dx, dot, acc),
 * the value of the fp32 weights' product with x rounded to dx * qx. The integer sum has one
 * value whatever the order it is added in, and the fp32 steps are the same in the scalar and
 * the vector code, so every CPU and build gives the same bits (vpdpbusd where the CPU has
 * avx512_vnni and avx512_vbmi, vpmaddwd with AVX2, else the scalar code). */
#define Q8_ROW(k) ((k) + (k) / GROUP * 8) /* bytes of a quantized row of x */
#define DECODED_Q8 0x200 /* tile_q8's mode flag: panels decoded beforehand (decode_q8) */

/* position t (0..31) of a group's stored qx -> its k within the group */
static inline int q8_k_of(int t) {
    const int r = t % 8;
    return t - r + (r < 4 ? 2 * r : 2 * (r - 4) + 1);
}

/* One row: the reference the vector quantizer reproduces bit for bit. */
static void q8_row_scalar(const float *x, int64_t k, uint8_t *out) {
    int8_t *q = (int8_t *)out;
    float *s = (float *)(out + k);
    for (int64_t g = 0; g < k / GROUP; g++) {
        const float *xg = x + g * GROUP;
        float amax = 0.0f;
        for (int t = 0; t < GROUP; t++) {
            const float a = fabsf(xg[t]);
            amax = a > amax ? a : amax; /* a NaN is skipped, as the vector max does */
        }
        const float dx = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        for (int t = 0; t < GROUP; t++) {
            const int8_t v = (int8_t)lrintf(xg[q8_k_of(t)] * id);
            q[g * GROUP + t] = v;
            sum += v;
        }
        s[2 * g] = dx;
        s[2 * g + 1] = dx * (float)sum;
    }
}

#ifdef __AVX512F__
static void q8_row(const float *x, int64_t k, uint8_t *out) {
    /* within each 8: the even k, then the odd ones (q8_k_of) */
    const __m512i order = _mm512_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
    int8_t *q = (int8_t *)out;
    float *s = (float *)(out + k);
    for (int64_t g = 0; g < k / GROUP; g++) {
        const __m512 a = _mm512_loadu_ps(x + g * GROUP), b = _mm512_loadu_ps(x + g * GROUP + 16);
        /* max(v, m) returns m where v is NaN: NaNs skipped, as in q8_row_scalar */
        const __m512 mx = _mm512_max_ps(_mm512_abs_ps(b),
                                        _mm512_max_ps(_mm512_abs_ps(a), _mm512_setzero_ps()));
        const float amax = _mm512_reduce_max_ps(mx);
        const float dx = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        const __m512 idv = _mm512_set1_ps(id);
        const __m128i qa = _mm512_cvtepi32_epi8(
            _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_permutexvar_ps(order, a), idv)));
        const __m128i qb = _mm512_cvtepi32_epi8(
            _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_permutexvar_ps(order, b), idv)));
        _mm_storeu_si128((__m128i *)(q + g * GROUP), qa);
        _mm_storeu_si128((__m128i *)(q + g * GROUP + 16), qb);
        const int32_t sum = _mm512_reduce_add_epi32(
            _mm512_add_epi32(_mm512_cvtepi8_epi32(qa), _mm512_cvtepi8_epi32(qb)));
        s[2 * g] = dx;
        s[2 * g + 1] = dx * (float)sum;
    }
}
#else
#define q8_row q8_row_scalar
#endif

/* x [m, k] fp32 -> m quantized rows of Q8_ROW(k) bytes. NULL without memory. */
static uint8_t *q8_rows(const float *x, int64_t m, int64_t k, int num_threads) {
    uint8_t *rows = malloc((size_t)(m * Q8_ROW(k)));
    if (!rows) return NULL;
#pragma omp parallel for num_threads(num_threads) if (m >= 16)
    for (int64_t r = 0; r < m; r++) q8_row(x + r * k, k, rows + r * Q8_ROW(k));
    return rows;
}

/* One element: a quantized row of x against column j of a Q4 panel (the reference, and the
 * path of builds without the vector one). */
static float q8_element(const uint8_t *xr, const void *wp, const void *sp, int64_t k, int j) {
    const int8_t *qx = (const int8_t *)xr;
    const float *s = (const float *)(xr + k);
    float acc = 0.0f;
    for (int64_t g = 0; g < k / GROUP; g++) {
        int32_t dot = 0;
        for (int t = 0; t < GROUP; t++) {
            const int64_t kk = g * GROUP + q8_k_of(t);
            const uint8_t b = ((const uint8_t *)wp)[(kk / 2) * PANEL + j];
            dot += (kk % 2 ? b >> 4 : b & 0xF) * qx[g * GROUP + t];
        }
        const uint16_t *sc = (const uint16_t *)sp + g * 2 * PANEL;
        acc = fmaf(half_to_f32(sc[PANEL + j]), s[2 * g + 1], acc);
        acc = fmaf(half_to_f32(sc[j]) * s[2 * g], (float)dot, acc);
    }
    return acc;
}

#if defined(__AVX512VNNI__) && defined(__AVX512VBMI__)
#define HAVE_Q8_DOT 1
#define Q8_VNNI 1 /* tile_q8, decode_q8 */
/* The 8 k from 8s of a Q4 panel as two vectors of unsigned bytes, lane j holding column j's:
 * lo = q at k = 8s, 8s+2, 8s+4, 8s+6, hi = at the odd k (the order of a quantized row). The
 * 64 panel bytes of those k (rows 4s .. 4s+3 of 16 bytes) gathered by column with one vpermb. */
static inline __attribute__((always_inline)) void q4_lanes(const void *wp, int64_t s,
                                                           __m512i *lo, __m512i *hi) {
    /* lane j: bytes j, 16 + j, 32 + j, 48 + j */
    const __m512i idx = _mm512_add_epi32(
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32(0x01010101)),
        _mm512_set1_epi32(0x30201000));
    const __m512i v =
        _mm512_permutexvar_epi8(idx, _mm512_loadu_si512((const uint8_t *)wp + s * 4 * PANEL));
    const __m512i nibble = _mm512_set1_epi8(0xF);
    *lo = _mm512_and_si512(v, nibble);
    *hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
}

/* rows x (np panels): per group, each (row, panel) an integer sum of 8 vpdpbusd (64 products
 * each), then the group's fp32 steps (the sums of one or two rows split in two chains, the
 * vpdpbusd latency otherwise the bound: an integer sum's value does not depend on it). The
 * chains' fp32 values live in memory, touched once a group. decoded: the panels were decoded
 * beforehand (decode_q8: per 8 k, lo then hi, 128 bytes). */
static inline __attribute__((always_inline)) void tile_q8(
    int rows, int np, int decoded, const uint8_t *x, int64_t k, const void *const wps[WP],
    const void *const sps[WP], float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
    const float *bias) {
    const int64_t stride = Q8_ROW(k);
    const int split = rows <= 2;
    float acc[MR_PAIRS][WP][PANEL] __attribute__((aligned(64)));
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < np; p++) _mm512_store_ps(acc[i][p], _mm512_setzero_ps());
    for (int64_t g = 0; g < k / GROUP; g++) {
        __m512i dot[MR_PAIRS][WP], dot2[2][WP];
        for (int i = 0; i < rows; i++)
            for (int p = 0; p < np; p++) dot[i][p] = _mm512_setzero_si512();
        if (split)
            for (int i = 0; i < rows; i++)
                for (int p = 0; p < np; p++) dot2[i][p] = _mm512_setzero_si512();
        for (int64_t s = g * GROUP / 8; s < (g + 1) * GROUP / 8; s++) {
            __m512i lo[WP], hi[WP];
            for (int p = 0; p < np; p++) {
                if (decoded) {
                    lo[p] = _mm512_load_si512((const uint8_t *)wps[p] + s * 128);
                    hi[p] = _mm512_load_si512((const uint8_t *)wps[p] + s * 128 + 64);
                } else {
                    q4_lanes(wps[p], s, &lo[p], &hi[p]);
                }
            }
            for (int i = 0; i < rows; i++) {
                int32_t xl, xh;
                memcpy(&xl, x + i * stride + s * 8, sizeof xl);
                memcpy(&xh, x + i * stride + s * 8 + 4, sizeof xh);
                const __m512i xlv = _mm512_set1_epi32(xl), xhv = _mm512_set1_epi32(xh);
                for (int p = 0; p < np; p++) {
                    dot[i][p] = _mm512_dpbusd_epi32(dot[i][p], lo[p], xlv);
                    if (split)
                        dot2[i][p] = _mm512_dpbusd_epi32(dot2[i][p], hi[p], xhv);
                    else
                        dot[i][p] = _mm512_dpbusd_epi32(dot[i][p], hi[p], xhv);
                }
            }
        }
        for (int p = 0; p < np; p++) {
            const uint16_t *sc = (const uint16_t *)sps[p] + g * 2 * PANEL;
            const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sc));
            const __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc + PANEL)));
            for (int i = 0; i < rows; i++) {
                float dx_sx[2];
                memcpy(dx_sx, x + i * stride + k + g * 8, sizeof dx_sx);
                const __m512i total = split ? _mm512_add_epi32(dot[i][p], dot2[i][p]) : dot[i][p];
                __m512 a = _mm512_load_ps(acc[i][p]);
                a = _mm512_fmadd_ps(m, _mm512_set1_ps(dx_sx[1]), a);
                a = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(dx_sx[0])),
                                    _mm512_cvtepi32_ps(total), a);
                _mm512_store_ps(acc[i][p], a);
            }
        }
    }
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < np; p++)
            store_panel(y, ldy, row0 + i, col0 + p * PANEL, n, _mm512_load_ps(acc[i][p]), bias);
}

/* A Q4 panel's lanes for every 8 k (q4_lanes), out [k/8][2][64 bytes], 64-byte aligned. */
static void decode_q8(const void *wp, int64_t k, uint8_t *out) {
    for (int64_t s = 0; s < k / 8; s++) {
        __m512i lo, hi;
        q4_lanes(wp, s, &lo, &hi);
        _mm512_store_si512(out + s * 128, lo);
        _mm512_store_si512(out + s * 128 + 64, hi);
    }
}

static void q8_tiles(int rows, const void *x, int64_t k, int64_t group,
                     const void *const wps[WP], const void *const sps[WP], int mode, float *y,
                     int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
    (void)group;
    if (mode & DECODED_Q8) {
        MEMORY_TILES(tile_q8, 1);
    } else {
        MEMORY_TILES(tile_q8, 0);
    }
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define HAVE_Q8_DOT 1
/* Without vpdpbusd: a panel byte holds the q of k and k + 1 (its nibbles), which vpmaddwd
 * multiplies as an int16 pair by (qx[k], qx[k + 1]) and adds into an int32 lane: per group
 * the same integer sum (in another order: an integer has one value), then the same fp32 steps.
 * Per group each row's 16 pairs are made once for all panels; 4 rows x 16 columns a pass. */
#define Q8_AVX2_ROWS 4
static void q8_tiles(int rows, const void *x, int64_t k, int64_t group,
                     const void *const wps[WP], const void *const sps[WP], int fmt, float *y,
                     int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
    (void)group; (void)fmt;
    const uint8_t *xr = (const uint8_t *)x;
    const int64_t stride = Q8_ROW(k);
    __m256 acc[MR_PAIRS][WP][2];
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < WP; p++) acc[i][p][0] = acc[i][p][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < k / GROUP; g++) {
        int32_t xp[MR_PAIRS][GROUP / 2]; /* (qx[k], qx[k + 1]) for k = g * 32 + 2kp */
        float dx[MR_PAIRS], sx[MR_PAIRS];
        for (int i = 0; i < rows; i++) {
            const int8_t *q = (const int8_t *)(xr + i * stride) + g * GROUP;
            for (int kp = 0; kp < GROUP / 2; kp++) {
                const int at = 8 * (kp / 4) + kp % 4; /* stored order (q8_k_of) */
                xp[i][kp] = (int32_t)((uint16_t)(int16_t)q[at] |
                                      (uint32_t)(uint16_t)(int16_t)q[at + 4] << 16);
            }
            memcpy(&dx[i], xr + i * stride + k + g * 8, sizeof(float));
            memcpy(&sx[i], xr + i * stride + k + g * 8 + 4, sizeof(float));
        }
        for (int p = 0; p < WP; p++) {
            if (col0 + p * PANEL >= n) continue;
            const uint8_t *wq = (const uint8_t *)wps[p] + g * GROUP / 2 * PANEL;
            const uint16_t *sc = (const uint16_t *)sps[p] + g * 2 * PANEL;
            __m256 d[2], m[2];
            for (int h = 0; h < 2; h++) {
                d[h] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + 8 * h)));
                m[h] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + PANEL + 8 * h)));
            }
            for (int i0 = 0; i0 < rows; i0 += Q8_AVX2_ROWS) {
                const int r = rows - i0 < Q8_AVX2_ROWS ? rows - i0 : Q8_AVX2_ROWS;
                __m256i dot[Q8_AVX2_ROWS][2];
                for (int i = 0; i < r; i++) dot[i][0] = dot[i][1] = _mm256_setzero_si256();
                for (int kp = 0; kp < GROUP / 2; kp++) {
                    __m256i w[2];
                    for (int h = 0; h < 2; h++) {
                        const __m256i b = _mm256_cvtepu8_epi32(
                            _mm_loadl_epi64((const __m128i *)(wq + kp * PANEL + 8 * h)));
                        w[h] = _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(0xF)),
                                               _mm256_slli_epi32(_mm256_srli_epi32(b, 4), 16));
                    }
                    for (int i = 0; i < r; i++) {
                        const __m256i xv = _mm256_set1_epi32(xp[i0 + i][kp]);
                        dot[i][0] = _mm256_add_epi32(dot[i][0], _mm256_madd_epi16(w[0], xv));
                        dot[i][1] = _mm256_add_epi32(dot[i][1], _mm256_madd_epi16(w[1], xv));
                    }
                }
                for (int i = 0; i < r; i++)
                    for (int h = 0; h < 2; h++) {
                        __m256 a = acc[i0 + i][p][h];
                        a = _mm256_fmadd_ps(m[h], _mm256_set1_ps(sx[i0 + i]), a);
                        acc[i0 + i][p][h] =
                            _mm256_fmadd_ps(_mm256_mul_ps(d[h], _mm256_set1_ps(dx[i0 + i])),
                                            _mm256_cvtepi32_ps(dot[i][h]), a);
                    }
            }
        }
    }
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < WP; p++)
            for (int h = 0; h < 2; h++) {
                float v[8];
                _mm256_storeu_ps(v, acc[i][p][h]);
                for (int j = 0; j < 8; j++)
                    store(y, ldy, row0 + i, col0 + p * PANEL + 8 * h + j, n, v[j], bias);
            }
}
#else
#define HAVE_Q8_DOT 0
/* elements one by one (q8_element) */
static void q8_tiles(int rows, const void *x, int64_t k, int64_t group,
                     const void *const wps[WP], const void *const sps[WP], int fmt, float *y,
                     int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
    (void)group; (void)fmt;
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < WP; p++)
            for (int j = 0; j < PANEL; j++)
                store(y, ldy, row0 + i, col0 + p * PANEL + j, n,
                      q8_element((const uint8_t *)x + i * Q8_ROW(k), wps[p], sps[p], k, j),
                      bias);
}
#endif

/* 1 where this build multiplies LMNB_W_Q4_Q8 with vector integer dot products (vpdpbusd
 * with avx512_vnni and avx512_vbmi, else vpmaddwd with AVX2), 0 where the scalar code does
 * (the same bits, much slower). */
int lmnb_has_q8_dot(void) { return HAVE_Q8_DOT; }

/* 1 where this build has the bf16 pair path (lmnb_pack_pairs, lmnb_linear_pairs). */
int lmnb_has_pairs(void) {
#ifdef __AVX512BF16__
    return 1;
#else
    return 0;
#endif
}

/* Pack w [N, K] (fp32, K even) into bf16 pair panels: dst[p][i][j][2] = w[16p + j][2i + e]. */
void lmnb_pack_pairs(const float *w, int64_t n, int64_t k, uint16_t *dst) {
    const int64_t panels = (n + PANEL - 1) / PANEL;
#pragma omp parallel for
    for (int64_t p = 0; p < panels; p++)
        for (int64_t kk = 0; kk < k; kk++)
            for (int64_t j = 0; j < PANEL; j++) {
                const int64_t col = p * PANEL + j;
                const float val = col < n ? w[col * k + kk] : 0.0f;
                dst[((p * (k / 2) + kk / 2) * PANEL + j) * 2 + kk % 2] = f32_to_bf16(val);
            }
}

/* A tile of up to MR rows of x (fp32, or bf16 for the pair path) against WP panels (wps) and
 * their scales (sps, quantized formats); mode: the bf16 flag of the chain tiles, the format of
 * the quantized ones; group: k per scale. */
typedef void (*TileFn)(int rows, const void *x, int64_t k, int64_t group, const void *const wps[WP],
                       const void *const sps[WP], int mode, float *y, int64_t ldy, int64_t row0,
                       int64_t col0, int64_t n, const float *bias);

static void chain_tiles(int rows, const void *x, int64_t k, int64_t group,
                        const void *const wps[WP], const void *const sps[WP], int bf16, float *y,
                        int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
    (void)group; (void)sps;
    tile_rows(rows, (const float *)x, k, wps, bf16, y, ldy, row0, col0, n, bias);
}

static void quant_tiles(int rows, const void *x, int64_t k, int64_t group,
                        const void *const wps[WP], const void *const sps[WP], int fmt, float *y,
                        int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
    qtile_rows(rows, fmt, (const float *)x, k, group, wps, sps, y, ldy, row0, col0, n, bias);
}

#ifdef __AVX512BF16__
static void q_pair_tiles(int rows, const void *x, int64_t k, int64_t group,
                         const void *const wps[WP], const void *const sps[WP], int fmt, float *y,
                         int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
    (void)group;
    tile_q_pairs_rows(rows, fmt, (const uint8_t *)x, k, wps, sps, y, ldy, row0, col0, n, bias);
}

static void pair_tiles(int rows, const void *x, int64_t k, int64_t group,
                       const void *const wps[WP], const void *const sps[WP], int bf16, float *y,
                       int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
    (void)group; (void)sps; (void)bf16;
    tile_pairs_rows(rows, (const uint16_t *)x, k, wps, y, ldy, row0, col0, n, bias);
}
#endif

/* Where a weight's panel p starts: data + p * w_panel bytes, scales + p * s_panel bytes. */
typedef struct Panels {
    const void *data;
    int64_t w_panel;
    const void *scales;
    int64_t s_panel;
    int64_t group; /* k per scale */
} Panels;

/* Where a work item of the quantized pair tiles has more rows than one tile, its WP panels are
 * decoded once into this thread's buffer and wps points there; returns the tiles' mode. */
static int decode_once(TileFn fn, int mode, int mr, int64_t rows, int64_t k,
                       const void *wps[WP]) {
#ifdef Q8_VNNI
    if (fn == q8_tiles && rows > mr) {
        uint8_t *buf = (uint8_t *)decoded_buffer((size_t)(WP * 4 * k));
        if (!buf) return mode;
        for (int q = 0; q < WP; q++) {
            decode_q8(wps[q], k, buf + q * 16 * k);
            wps[q] = buf + q * 16 * k;
        }
        return mode | DECODED_Q8;
    }
#endif
#ifdef __AVX512BF16__
    if (fn != q_pair_tiles || rows <= mr) return mode;
    uint32_t *buf = decoded_buffer((size_t)(WP * k / 2 * PANEL));
    if (!buf) return mode;
    for (int q = 0; q < WP; q++) {
        decode_pairs(mode, wps[q], k, buf + q * k / 2 * PANEL);
        wps[q] = buf + q * k / 2 * PANEL;
    }
    return mode | DECODED;
#else
    (void)fn; (void)mr; (void)rows; (void)k; (void)wps;
    return mode;
#endif
}

/* x[0 .. count-1] rounded to bf16 in place. */
static void round_span(float *x, int64_t count) {
    for (int64_t i = 0; i < count; i++) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
}

/* Every tile of y [m, n], work items of ROW_BLOCK rows x COL_BLOCK panels over the threads,
 * handed out one at a time (a thread that another process slows down takes fewer items, rather
 * than every thread waiting for its fixed share; which thread computes an element never
 * changes its bits). x_row: the bytes of one row of x. */
static void all_tiles(TileFn fn, int mode, int mr, const void *x, int64_t x_row, int64_t m,
                      int64_t k, Panels w, int64_t n, const float *bias, float *y,
                      int num_threads, int round) {
    const int64_t panels = (n + PANEL - 1) / PANEL;
    const int64_t col_blocks = (panels + COL_BLOCK - 1) / COL_BLOCK;
    const int64_t row_blocks = (m + ROW_BLOCK - 1) / ROW_BLOCK;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t rb = 0; rb < row_blocks; rb++) {
        for (int64_t cb = 0; cb < col_blocks; cb++) {
            const int64_t p_end = (cb + 1) * COL_BLOCK < panels ? (cb + 1) * COL_BLOCK : panels;
            const int64_t r_end = (rb + 1) * ROW_BLOCK < m ? (rb + 1) * ROW_BLOCK : m;
            for (int64_t p = cb * COL_BLOCK; p < p_end; p += WP) {
                const void *wps[WP], *sps[WP];
                for (int q = 0; q < WP; q++) { /* a missing last panel reads a real one */
                    const int64_t pp = p + q < panels ? p + q : p;
                    wps[q] = (const char *)w.data + pp * w.w_panel;
                    sps[q] = w.scales ? (const char *)w.scales + pp * w.s_panel : NULL;
                }
                const int tile_mode = decode_once(fn, mode, mr, r_end - rb * ROW_BLOCK, k, wps);
                for (int64_t r = rb * ROW_BLOCK; r < r_end; r += mr) {
                    const int rows = r_end - r < mr ? (int)(r_end - r) : mr;
                    /* columns of a duplicated panel are past n or written twice identically */
                    fn(rows, (const char *)x + r * x_row, k, w.group, wps, sps, tile_mode, y, n,
                       r, p * PANEL, n, bias);
                }
            }
            if (round)
                for (int64_t r = rb * ROW_BLOCK; r < r_end; r++)
                    round_span(y + r * n + cb * COL_BLOCK * PANEL,
                               (p_end < panels ? p_end * PANEL : n) - cb * COL_BLOCK * PANEL);
        }
    }
}

static Panels dense_panels(const void *packed, int64_t k, int elem_bytes) {
    return (Panels){packed, k * PANEL * elem_bytes, NULL, 0, k};
}

/* y [m, n] = x [m, k] (bf16) @ w.T (+ bias), w packed by lmnb_pack_pairs, y rounded to bf16
 * where round is set; 1 if unsupported. */
static int linear_pairs(const uint16_t *x, int64_t m, int64_t k, const uint16_t *packed,
                        int64_t n, const float *bias, float *y, int num_threads, int round) {
#ifdef __AVX512BF16__
    all_tiles(pair_tiles, 1, MR, x, 2 * k, m, k, dense_panels(packed, k, 2), n, bias, y,
              num_threads, round);
    return 0;
#else
    (void)x; (void)m; (void)k; (void)packed; (void)n; (void)bias; (void)y; (void)num_threads;
    (void)round;
    return 1;
#endif
}

int lmnb_linear_pairs(const uint16_t *x, int64_t m, int64_t k, const uint16_t *packed,
                      int64_t n, const float *bias, float *y, int num_threads) {
    return linear_pairs(x, m, k, packed, n, bias, y, num_threads, 0);
}

/* y [m, n] = x [m, k] @ w.T (+ bias), w packed by lmnb_pack_weight (y rounded: as above). */
static void linear(const float *x, int64_t m, int64_t k, const void *packed, int bf16,
                   int64_t n, const float *bias, float *y, int num_threads, int round) {
    all_tiles(chain_tiles, bf16, MR, x, 4 * k, m, k, dense_panels(packed, k, bf16 ? 2 : 4), n,
              bias, y, num_threads, round);
}

void lmnb_linear(const float *x, int64_t m, int64_t k, const void *packed, int bf16, int64_t n,
                 const float *bias, float *y, int num_threads) {
    linear(x, m, k, packed, bf16, n, bias, y, num_threads, 0);
}

/* Reference: the same chain element by element, no tiles (for tests). */
void lmnb_linear_reference(const float *x, int64_t m, int64_t k, const void *packed, int bf16,
                           int64_t n, const float *bias, float *y) {
    const int elem = bf16 ? 2 : 4;
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < n; c++) {
            const void *wp = (const char *)packed + (c / PANEL) * k * PANEL * elem;
            store(y, n, r, c, n, chain(x + r * k, wp, k, bf16, c % PANEL), bias);
        }
}

/* ---- quantized weights ------------------------------------------------------------------- */

/* The panels of a quantized weight (linear.h): Q4 data [panels][k/2][16] bytes (the low nibble
 * holds the even k), scales [panels][k/32][2][16] fp16 (d then m); Q8 and INT8 data
 * [panels][k][16] int8, scales [panels][groups][16] fp32 (Q8: a group per 32 k, INT8: one). */
static Panels quant_panels(const LmnbWeight *w) {
    switch (w->format) {
    case LMNB_W_Q4:
    case LMNB_W_Q4_PAIRS:
    case LMNB_W_Q4_Q8:
        return (Panels){w->data, w->k / 2 * PANEL, w->scales, w->k / GROUP * 2 * PANEL * 2, GROUP};
    case LMNB_W_Q8:
    case LMNB_W_Q8_PAIRS:
        return (Panels){w->data, w->k * PANEL, w->scales, w->k / GROUP * PANEL * 4, GROUP};
    default: /* LMNB_W_INT8 */
        return (Panels){w->data, w->k * PANEL, w->scales, PANEL * 4, w->k};
    }
}

/* GGUF Q4_1 blocks [n][k/32] of 20 bytes (fp16 d, fp16 m, 16 bytes: byte i holds element i in
 * its low nibble and element i + 16 in its high one) -> LMNB_W_Q4 panels. k % 32 == 0. */
void lmnb_pack_q4_1(const uint8_t *blocks, int64_t n, int64_t k, uint8_t *data,
                    uint16_t *scales) {
    const int64_t panels = (n + PANEL - 1) / PANEL, groups = k / GROUP;
#pragma omp parallel for
    for (int64_t p = 0; p < panels; p++)
        for (int64_t g = 0; g < groups; g++)
            for (int64_t j = 0; j < PANEL; j++) {
                const int64_t col = p * PANEL + j;
                uint16_t *s = scales + (p * groups + g) * 2 * PANEL;
                uint8_t *q = data + (p * groups + g) * (GROUP / 2) * PANEL;
                if (col >= n) { /* padding: w = 0 */
                    s[j] = s[PANEL + j] = 0;
                    for (int i = 0; i < GROUP / 2; i++) q[i * PANEL + j] = 0;
                    continue;
                }
                const uint8_t *b = blocks + (col * groups + g) * 20;
                memcpy(&s[j], b, 2);
                memcpy(&s[PANEL + j], b + 2, 2);
                for (int i = 0; i < GROUP / 2; i++) {
                    const int e0 = 2 * i, e1 = 2 * i + 1; /* elements of the block */
                    const uint8_t q0 = e0 < 16 ? b[4 + e0] & 0xF : b[4 + e0 - 16] >> 4;
                    const uint8_t q1 = e1 < 16 ? b[4 + e1] & 0xF : b[4 + e1 - 16] >> 4;
                    q[i * PANEL + j] = (uint8_t)(q0 | q1 << 4);
                }
            }
}

/* GGUF Q8_0 blocks [n][k/32] of 34 bytes (fp16 d, 32 int8) -> LMNB_W_Q8 panels. */
void lmnb_pack_q8_0(const uint8_t *blocks, int64_t n, int64_t k, int8_t *data, float *scales) {
    const int64_t panels = (n + PANEL - 1) / PANEL, groups = k / GROUP;
#pragma omp parallel for
    for (int64_t p = 0; p < panels; p++)
        for (int64_t g = 0; g < groups; g++)
            for (int64_t j = 0; j < PANEL; j++) {
                const int64_t col = p * PANEL + j;
                const uint8_t *b = blocks + (col * groups + g) * 34;
                uint16_t d = 0;
                if (col < n) memcpy(&d, b, 2);
                scales[(p * groups + g) * PANEL + j] = half_to_f32(d);
                for (int i = 0; i < GROUP; i++)
                    data[(p * k + g * GROUP + i) * PANEL + j] = col < n ? (int8_t)b[2 + i] : 0;
            }
}

/* q [n][k] int8 and one scale a row, s [n] -> LMNB_W_INT8 panels. */
void lmnb_pack_int8(const int8_t *q, const float *s, int64_t n, int64_t k, int8_t *data,
                    float *scales) {
    const int64_t panels = (n + PANEL - 1) / PANEL;
#pragma omp parallel for
    for (int64_t p = 0; p < panels; p++)
        for (int64_t j = 0; j < PANEL; j++) {
            const int64_t col = p * PANEL + j;
            scales[p * PANEL + j] = col < n ? s[col] : 0.0f;
            for (int64_t kk = 0; kk < k; kk++)
                data[(p * k + kk) * PANEL + j] = col < n ? q[col * k + kk] : 0;
        }
}

static int is_quant(int32_t format) {
    return format == LMNB_W_Q4 || format == LMNB_W_INT8 || format == LMNB_W_Q8 ||
           format == LMNB_W_Q4_PAIRS || format == LMNB_W_Q8_PAIRS || format == LMNB_W_Q4_Q8;
}

static int fits(const LmnbWeight *w) {
    if (w->format == LMNB_W_Q4 || w->format == LMNB_W_Q8 || w->format == LMNB_W_Q4_Q8)
        return w->k % GROUP == 0;
    if (w->format == LMNB_W_Q4_PAIRS || w->format == LMNB_W_Q8_PAIRS)
        return w->k % GROUP == 0 && lmnb_has_pairs();
    return w->format >= LMNB_W_F32 && w->format <= LMNB_W_INT8;
}

#ifdef __AVX512BF16__
/* x [m, k] fp32 -> rows of k bf16 (nearest even, as torch rounds) and k/32 fp32 sums of those
 * bf16 values over each group, in k order: what tile_q_pairs reads. NULL without memory. */
static uint8_t *pair_rows(const float *x, int64_t m, int64_t k, int num_threads) {
    const int64_t stride = 2 * k + k / GROUP * 4;
    uint8_t *rows = malloc((size_t)(m * stride));
    if (!rows) return NULL;
#pragma omp parallel for num_threads(num_threads) if (m >= 16)
    for (int64_t r = 0; r < m; r++) {
        uint16_t *xb = (uint16_t *)(rows + r * stride);
        float *sums = (float *)(rows + r * stride + 2 * k);
        for (int64_t kk = 0; kk < k; kk++) xb[kk] = f32_to_bf16(x[r * k + kk]);
        /* each group's sum in k order from 0; the groups' chains interleaved (one chain alone
         * waits on each add's latency) */
        for (int64_t g = 0; g < k / GROUP; g++) sums[g] = 0.0f;
        for (int64_t j = 0; j < GROUP; j++)
            for (int64_t g = 0; g < k / GROUP; g++) sums[g] += bf16_to_f32(xb[g * GROUP + j]);
    }
    return rows;
}
#endif

/* The weight's effective values out [n][k] (fp32), element by element (for tests). */
int lmnb_dequantize(const LmnbWeight *w, float *out) {
    if (!fits(w)) return 1;
    const int64_t k = w->k;
    for (int64_t c = 0; c < w->n; c++)
        for (int64_t kk = 0; kk < k; kk++) {
            const int64_t p = c / PANEL, j = c % PANEL;
            float v;
            if (is_quant(w->format)) {
                const Panels pw = quant_panels(w);
                v = q_weight(w->format, (const char *)pw.data + p * pw.w_panel,
                             (const char *)pw.scales + p * pw.s_panel, pw.group, kk, (int)j);
            } else if (w->format == LMNB_W_F32) {
                v = ((const float *)w->data)[(p * k + kk) * PANEL + j];
            } else if (w->format == LMNB_W_BF16) {
                v = bf16_to_f32(((const uint16_t *)w->data)[(p * k + kk) * PANEL + j]);
            } else { /* pairs: [p][k/2][16][2] */
                const int64_t at = ((p * (k / 2) + kk / 2) * PANEL + j) * 2 + kk % 2;
                v = bf16_to_f32(((const uint16_t *)w->data)[at]);
            }
            out[c * k + kk] = v;
        }
    return 0;
}

/* Reference for every format but the pair ones: each element's chain alone, no tiles. */
int lmnb_linear_w_reference(const LmnbWeight *w, const float *x, int64_t m, float *y) {
    if (!fits(w) || w->format == LMNB_W_BF16_PAIRS || w->format == LMNB_W_Q4_PAIRS ||
        w->format == LMNB_W_Q8_PAIRS)
        return 1;
    if (!is_quant(w->format)) {
        lmnb_linear_reference(x, m, w->k, w->data, w->format == LMNB_W_BF16, w->n, w->bias, y);
        return 0;
    }
    const Panels pw = quant_panels(w);
    if (w->format == LMNB_W_Q4_Q8) { /* the scalar quantizer and dot product, no tiles */
        uint8_t *xr = malloc((size_t)Q8_ROW(w->k));
        if (!xr) return 1;
        for (int64_t r = 0; r < m; r++) {
            q8_row_scalar(x + r * w->k, w->k, xr);
            for (int64_t c = 0; c < w->n; c++) {
                const int64_t p = c / PANEL;
                store(y, w->n, r, c, w->n,
                      q8_element(xr, (const char *)pw.data + p * pw.w_panel,
                                 (const char *)pw.scales + p * pw.s_panel, w->k,
                                 (int)(c % PANEL)),
                      w->bias);
            }
        }
        free(xr);
        return 0;
    }
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < w->n; c++) {
            const int64_t p = c / PANEL;
            store(y, w->n, r, c, w->n,
                  qchain(w->format, x + r * w->k, (const char *)pw.data + p * pw.w_panel,
                         (const char *)pw.scales + p * pw.s_panel, w->k, pw.group,
                         (int)(c % PANEL)),
                  w->bias);
        }
    return 0;
}

/* One entry point for every weight format (linear.h). */
int lmnb_linear_w(const LmnbWeight *w, const float *x, int64_t m, float *y, int num_threads) {
    return lmnb_linear_w_round(w, x, m, y, num_threads, 0);
}

int lmnb_linear_w_round(const LmnbWeight *w, const float *x, int64_t m, float *y,
                        int num_threads, int round) {
    if (!fits(w)) return 1;
    switch (w->format) {
    case LMNB_W_F32:
    case LMNB_W_BF16:
        linear(x, m, w->k, w->data, w->format == LMNB_W_BF16, w->n, w->bias, y, num_threads,
               round);
        return 0;
    case LMNB_W_BF16_PAIRS: {
        if (!lmnb_has_pairs() || w->k % 2) return 1;
        uint16_t *xb = malloc((size_t)(m * w->k) * sizeof *xb);
        if (!xb) return 1;
#pragma omp parallel for num_threads(num_threads) if (m >= 16)
        for (int64_t i = 0; i < m * w->k; i++) xb[i] = f32_to_bf16(x[i]);
        const int failed = linear_pairs(xb, m, w->k, w->data, w->n, w->bias, y, num_threads,
                                        round);
        free(xb);
        return failed;
    }
    case LMNB_W_Q4_PAIRS:
    case LMNB_W_Q8_PAIRS: {
#ifdef __AVX512BF16__
        uint8_t *rows = pair_rows(x, m, w->k, num_threads);
        if (!rows) return 1;
        all_tiles(q_pair_tiles, w->format, MR_PAIRS, rows, 2 * w->k + w->k / GROUP * 4, m, w->k,
                  quant_panels(w), w->n, w->bias, y, num_threads, round);
        free(rows);
        return 0;
#else
        return 1;
#endif
    }
    case LMNB_W_Q4_Q8: {
        uint8_t *rows = q8_rows(x, m, w->k, num_threads);
        if (!rows) return 1;
        all_tiles(q8_tiles, w->format, MR_PAIRS, rows, Q8_ROW(w->k), m, w->k, quant_panels(w),
                  w->n, w->bias, y, num_threads, round);
        free(rows);
        return 0;
    }
    default:
        all_tiles(quant_tiles, w->format, MR, x, 4 * w->k, m, w->k, quant_panels(w), w->n,
                  w->bias, y, num_threads, round);
        return 0;
    }
}
