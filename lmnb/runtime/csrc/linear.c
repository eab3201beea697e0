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
#define NP 2     /* panels a tile covers (32 columns) */
#define MR 6     /* rows a tile covers */
#define COL_BLOCK 4 /* panels a work item covers */
#define ROW_BLOCK 48 /* rows a work item covers (a multiple of MR) */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
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
                    uint32_t bits;
                    memcpy(&bits, &val, sizeof bits);
                    bits += 0x7FFF + ((bits >> 16) & 1); /* round to nearest even */
                    ((uint16_t *)dst)[at] = (uint16_t)(bits >> 16);
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

static inline void store_tile(int rows, __m512 acc[MR][NP], float *y, int64_t ldy, int64_t row0,
                              int64_t col0, int64_t n, const float *bias) {
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < NP; p++) {
            float out[PANEL];
            _mm512_storeu_ps(out, acc[i][p]);
            for (int j = 0; j < PANEL; j++)
                store(y, ldy, row0 + i, col0 + p * PANEL + j, n, out[j], bias);
        }
}

/* rows x (NP panels) of y; acc[i][p] lane j holds the chain of element (i, 16p + j). */
static inline __attribute__((always_inline)) void tile(
    int rows, const float *x, int64_t k, const void *const wps[NP], int bf16, float *y,
    int64_t ldy, int64_t row0, int64_t col0, int64_t n, const float *bias) {
    __m512 acc[MR][NP];
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < NP; p++) acc[i][p] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k; kk++) {
        __m512 wv[NP];
        for (int p = 0; p < NP; p++) wv[p] = load_panel(wps[p], kk, bf16);
        for (int i = 0; i < rows; i++) {
            const __m512 xv = _mm512_set1_ps(x[i * k + kk]);
            for (int p = 0; p < NP; p++) acc[i][p] = _mm512_fmadd_ps(xv, wv[p], acc[i][p]);
        }
    }
    store_tile(rows, acc, y, ldy, row0, col0, n, bias);
}

static void tile_rows(int rows, const float *x, int64_t k, const void *const wps[NP], int bf16,
                      float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
                      const float *bias) {
    switch (rows) { /* a constant row count per case, so the accumulators stay in registers */
    case 6: tile(6, x, k, wps, bf16, y, ldy, row0, col0, n, bias); break;
    case 5: tile(5, x, k, wps, bf16, y, ldy, row0, col0, n, bias); break;
    case 4: tile(4, x, k, wps, bf16, y, ldy, row0, col0, n, bias); break;
    case 3: tile(3, x, k, wps, bf16, y, ldy, row0, col0, n, bias); break;
    case 2: tile(2, x, k, wps, bf16, y, ldy, row0, col0, n, bias); break;
    default: tile(1, x, k, wps, bf16, y, ldy, row0, col0, n, bias); break;
    }
}
#elif defined(__AVX2__) && defined(__FMA__)
/* The same chains with 8-wide vectors: a panel is two halves; tiles of up to 3 rows keep the
 * 12 accumulators in the 16 registers. */
#define MR2 3
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
        for (int p = 0; p < 2 * NP; p++) {
            float out[8];
            _mm256_storeu_ps(out, acc[i][p]);
            for (int j = 0; j < 8; j++)
                store(y, ldy, row0 + i, col0 + p * 8 + j, n, out[j], bias);
        }
}

static void tile_rows(int rows, const float *x, int64_t k, const void *const wps[NP], int bf16,
                      float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
                      const float *bias) {
    for (int i = 0; i < rows; i += MR2) {
        const int r = rows - i < MR2 ? rows - i : MR2;
        const float *xi = x + i * k;
        switch (r) {
        case 3: tile2(3, xi, k, wps, bf16, y, ldy, row0 + i, col0, n, bias); break;
        case 2: tile2(2, xi, k, wps, bf16, y, ldy, row0 + i, col0, n, bias); break;
        default: tile2(1, xi, k, wps, bf16, y, ldy, row0 + i, col0, n, bias); break;
        }
    }
}
#else
static void tile_rows(int rows, const float *x, int64_t k, const void *const wps[NP], int bf16,
                      float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
                      const float *bias) {
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < NP; p++)
            for (int j = 0; j < PANEL; j++)
                store(y, ldy, row0 + i, col0 + p * PANEL + j, n,
                      chain(x + i * k, wps[p], k, bf16, j), bias);
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
    int rows, const uint16_t *x, int64_t k, const void *const wps[NP], float *y, int64_t ldy,
    int64_t row0, int64_t col0, int64_t n, const float *bias) {
    __m512 acc[MR][NP];
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < NP; p++) acc[i][p] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k / 2; kk++) {
        __m512bh wv[NP];
        for (int p = 0; p < NP; p++)
            wv[p] = (__m512bh)_mm512_loadu_si512((const uint16_t *)wps[p] + kk * 2 * PANEL);
        for (int i = 0; i < rows; i++) {
            int32_t pair;
            memcpy(&pair, x + i * k + 2 * kk, sizeof pair);
            const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
            for (int p = 0; p < NP; p++) acc[i][p] = _mm512_dpbf16_ps(acc[i][p], xv, wv[p]);
        }
    }
    store_tile(rows, acc, y, ldy, row0, col0, n, bias);
}

static void tile_pairs_rows(int rows, const uint16_t *x, int64_t k, const void *const wps[NP],
                            float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
                            const float *bias) {
    switch (rows) {
    case 6: tile_pairs(6, x, k, wps, y, ldy, row0, col0, n, bias); break;
    case 5: tile_pairs(5, x, k, wps, y, ldy, row0, col0, n, bias); break;
    case 4: tile_pairs(4, x, k, wps, y, ldy, row0, col0, n, bias); break;
    case 3: tile_pairs(3, x, k, wps, y, ldy, row0, col0, n, bias); break;
    case 2: tile_pairs(2, x, k, wps, y, ldy, row0, col0, n, bias); break;
    default: tile_pairs(1, x, k, wps, y, ldy, row0, col0, n, bias); break;
    }
}
#endif

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
                uint32_t bits;
                memcpy(&bits, &val, sizeof bits);
                bits += 0x7FFF + ((bits >> 16) & 1); /* round to nearest even */
                dst[((p * (k / 2) + kk / 2) * PANEL + j) * 2 + kk % 2] = (uint16_t)(bits >> 16);
            }
}

/* A tile of up to MR rows of x (fp32, or bf16 for the pair path) against NP panels. */
typedef void (*TileFn)(int rows, const void *x, int64_t k, const void *const wps[NP], int bf16,
                       float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
                       const float *bias);

static void chain_tiles(int rows, const void *x, int64_t k, const void *const wps[NP], int bf16,
                        float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
                        const float *bias) {
    tile_rows(rows, (const float *)x, k, wps, bf16, y, ldy, row0, col0, n, bias);
}

#ifdef __AVX512BF16__
static void pair_tiles(int rows, const void *x, int64_t k, const void *const wps[NP], int bf16,
                       float *y, int64_t ldy, int64_t row0, int64_t col0, int64_t n,
                       const float *bias) {
    (void)bf16;
    tile_pairs_rows(rows, (const uint16_t *)x, k, wps, y, ldy, row0, col0, n, bias);
}
#endif

/* Every tile of y [m, n], work items of ROW_BLOCK rows x COL_BLOCK panels over the threads.
 * x_bytes, w_bytes: the size of one element of x and of the packed weights. */
static void all_tiles(TileFn fn, const void *x, int x_bytes, int64_t m, int64_t k,
                      const void *packed, int w_bytes, int bf16, int64_t n, const float *bias,
                      float *y, int num_threads) {
    const int64_t panels = (n + PANEL - 1) / PANEL;
    const int64_t col_blocks = (panels + COL_BLOCK - 1) / COL_BLOCK;
    const int64_t row_blocks = (m + ROW_BLOCK - 1) / ROW_BLOCK;
#pragma omp parallel for collapse(2) schedule(static) num_threads(num_threads)
    for (int64_t rb = 0; rb < row_blocks; rb++) {
        for (int64_t cb = 0; cb < col_blocks; cb++) {
            const int64_t p_end = (cb + 1) * COL_BLOCK < panels ? (cb + 1) * COL_BLOCK : panels;
            const int64_t r_end = (rb + 1) * ROW_BLOCK < m ? (rb + 1) * ROW_BLOCK : m;
            for (int64_t p = cb * COL_BLOCK; p < p_end; p += NP) {
                const void *wps[NP];
                for (int q = 0; q < NP; q++) { /* a missing last panel reads a real one */
                    const int64_t pp = p + q < panels ? p + q : p;
                    wps[q] = (const char *)packed + pp * k * PANEL * w_bytes;
                }
                for (int64_t r = rb * ROW_BLOCK; r < r_end; r += MR) {
                    const int rows = r_end - r < MR ? (int)(r_end - r) : MR;
                    /* columns of a duplicated panel are past n or written twice identically */
                    fn(rows, (const char *)x + r * k * x_bytes, k, wps, bf16, y, n, r,
                       p * PANEL, n, bias);
                }
            }
        }
    }
}

/* y [m, n] = x [m, k] (bf16) @ w.T (+ bias), w packed by lmnb_pack_pairs; 1 if unsupported. */
int lmnb_linear_pairs(const uint16_t *x, int64_t m, int64_t k, const uint16_t *packed,
                      int64_t n, const float *bias, float *y, int num_threads) {
#ifdef __AVX512BF16__
    all_tiles(pair_tiles, x, 2, m, k, packed, 2, 1, n, bias, y, num_threads);
    return 0;
#else
    (void)x; (void)m; (void)k; (void)packed; (void)n; (void)bias; (void)y; (void)num_threads;
    return 1;
#endif
}

/* y [m, n] = x [m, k] @ w.T (+ bias), w packed by lmnb_pack_weight. */
void lmnb_linear(const float *x, int64_t m, int64_t k, const void *packed, int bf16, int64_t n,
                 const float *bias, float *y, int num_threads) {
    all_tiles(chain_tiles, x, 4, m, k, packed, bf16 ? 2 : 4, bf16, n, bias, y, num_threads);
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

/* One entry point for every weight format (linear.h). */
int lmnb_linear_w(const LmnbWeight *w, const float *x, int64_t m, float *y, int num_threads) {
    switch (w->format) {
    case LMNB_W_F32:
    case LMNB_W_BF16:
        lmnb_linear(x, m, w->k, w->data, w->format == LMNB_W_BF16, w->n, w->bias, y,
                    num_threads);
        return 0;
    case LMNB_W_BF16_PAIRS: {
        if (!lmnb_has_pairs()) return 1;
        uint16_t *xb = malloc((size_t)(m * w->k) * sizeof *xb);
        if (!xb) return 1;
        for (int64_t i = 0; i < m * w->k; i++) { /* round to nearest even, as torch does */
            uint32_t bits;
            memcpy(&bits, &x[i], sizeof bits);
            bits += 0x7FFF + ((bits >> 16) & 1);
            xb[i] = (uint16_t)(bits >> 16);
        }
        const int failed = lmnb_linear_pairs(xb, m, w->k, w->data, w->n, w->bias, y, num_threads);
        free(xb);
        return failed;
    }
    default:
        return 1;
    }
}
