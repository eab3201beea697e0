/* The weight formats of the batch-invariant matrix products (linear.c) behind one descriptor,
 * so that callers in C (a whole-model forward) multiply by any weight without knowing its
 * layout. Every format keeps linear.c's promise: an output element's bits never depend on the
 * number of rows, the tile or the thread.
 *
 * Every format but the pair ones (BF16_PAIRS, Q4_PAIRS, Q8_PAIRS) computes the same thing:
 * each output element is one fp32 FMA chain over k = 0 .. K-1 of x[k] times the weight's value
 * w[k] (its "effective" weight: the fp32 value, the bf16 value widened, or the quantized value
 * de-quantized exactly as below), so a quantized weight gives the bits of the fp32 weight
 * holding its de-quantized values. The pair formats round x to bf16 and use the CPU's bf16
 * dot product (avx512_bf16): other bits, twice the products an instruction, still a fixed
 * order per element. Q4_Q8 quantizes x to int8 per group of 32 k (llama.cpp's arithmetic for
 * these blocks): exact integer dot products, then a fixed fp32 order per group; four times the
 * products an instruction of the fp32 chain, the same bits on every CPU (an integer sum has
 * one value whatever the order, and the fp32 steps are the same everywhere). */
#ifndef LMNB_LINEAR_H
#define LMNB_LINEAR_H
#include <stdint.h>

enum {
    LMNB_W_F32 = 0,        /* panels of fp32 (lmnb_pack_weight, 4-byte elements) */
    LMNB_W_BF16 = 1,       /* panels of bf16 widened to fp32 chains (2-byte elements) */
    LMNB_W_BF16_PAIRS = 2, /* bf16 pair panels for the CPU's bf16 dot product (x rounded to bf16) */
    LMNB_W_Q4 = 3,         /* group-32 asymmetric int4, the GGUF's Q4_1 blocks (lmnb_pack_q4_1):
                            * w = fma(d, q, m), q in 0..15, d and m fp16 per 32 k and column */
    LMNB_W_INT8 = 4,       /* int8 weight-only, symmetric, an fp32 scale per output column
                            * (lmnb_pack_int8): w = s * q */
    LMNB_W_Q8 = 5,         /* group-32 symmetric int8, the GGUF's Q8_0 blocks (lmnb_pack_q8_0):
                            * w = d * q, d an fp16 per 32 k and column (held as fp32) */
    LMNB_W_Q4_PAIRS = 6,   /* the Q4 panels with x rounded to bf16, on the CPU's bf16 dot
                            * product: per group, d * dot(x, q) + m * sum(x) (linear.c) */
    LMNB_W_Q8_PAIRS = 7,   /* the Q8 panels likewise: per group, d * dot(x, q) */
    LMNB_W_Q4_Q8 = 8,      /* the Q4 panels with x quantized to int8 per 32 k (dx = max|x| / 127,
                            * qx = rint(x * 127 / max|x|)), integer dot products (the CPU's
                            * vpdpbusd where it has it): per group, acc = fma(m, sx, acc), acc =
                            * fma(d * dx, dot(qx, q), acc), sx = dx * sum(qx) (linear.c) */
};

typedef struct LmnbWeight {
    int32_t format;      /* LMNB_W_* */
    int64_t n, k;        /* output and input features */
    const void *data;    /* the packed weight */
    const void *scales;  /* per-group or per-channel scales where the format has them */
    const float *bias;   /* [n] or NULL */
} LmnbWeight;

/* y [m, n] (fp32) = x [m, k] (fp32) @ w.T (+ bias); 0 on success, 1 if this build or CPU lacks
 * the format (or k does not suit it: Q4 and Q8 need k % 32 == 0, pairs an even k). */
int lmnb_linear_w(const LmnbWeight *w, const float *x, int64_t m, float *y, int num_threads);

/* lmnb_linear_w, each element of y then rounded to bf16 (nearest even) where round_bf16 is
 * set: by the thread that computed it, while it is in cache (a bf16 model's products). */
int lmnb_linear_w_round(const LmnbWeight *w, const float *x, int64_t m, float *y,
                        int num_threads, int round_bf16);

#endif
