/* The per-pixel MLP of mlp.c in bfloat16 with fp32 accumulation, AVX512-BF16 (vdpbf16ps).
 *
 * Why: on CPUs with AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake, Sapphire Rapids and
 * later) one vdpbf16ps does twice the multiply-adds of an fp32 FMA, and in bf16 torch runs these
 * 10- to 74-wide layers one library call per layer, streaming every row's activations through
 * memory between layers. Here, as in mlp.c, a block of rows goes through all layers in L1.
 *
 * Numerics: the first layer's input is formed in fp32 (the bf16 projection + the fp32 sub-pixel
 * bias, ReLU) and rounded to bf16; every product accumulates in fp32 from bf16 inputs; hidden
 * outputs are rounded to bf16 (round to nearest even) after their ReLU; the last layer stays fp32.
 *
 * Layout the caller prepares (pcsr/kernels.py):
 *   proj      (n_lr, w0) bf16, the first layer's feature projection per LR pixel (one bf16 GEMM,
 *             fp32 accumulation), w0 = width padded to 16
 *   sub_bias  (ss, w0)   fp32, the first layer's bias plus coordinate part per sub-pixel
 *   wt[l]     (ceil(k_l / 2), np_l, 2) bf16 bits: layer l+1's weight as pairs of inputs per output
 *             column (the operand layout of vdpbf16ps), output columns zero-padded to np_l = 16 * m
 *   b[l]      (np_l) fp32, its bias, zero-padded
 * Rows, scatter and threads as in mlp.c.
 */
#include <stdint.h>
#include <string.h>

#include "mlp.h"
#include "parallel.h"

#define ROWS 4     /* rows per micro-tile: 4 x 5 vectors = 20 accumulators */
#define BLOCK MLP_BLOCK
#define MAXW MLP_MAXW

#if HAVE_BF16
#define TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

typedef int32_t pair_t __attribute__((may_alias, aligned(2))); /* two bf16 activations, read as one */

/* Columns n0 .. n0 + 16*NB of one layer for ROWS rows: bf16 h (row stride MAXW) times the pairs
 * layout wt. Hidden layers (last == 0) store ReLU'd bf16 into o16; the last layer stores fp32 into
 * of. Accumulators are named variables (gcc spills an array of vectors). */
#define BACC(r) __m512 a##r##0 = b0, a##r##1 = b1, a##r##2 = b2, a##r##3 = b3, a##r##4 = b4;
#define BSTEP(r, NB)                                                                                \
    {                                                                                               \
        __m512bh x = (__m512bh)_mm512_set1_epi32(*(const pair_t *)(h + r * MAXW + 2 * i));          \
        a##r##0 = _mm512_dpbf16_ps(a##r##0, x, w0);                                                 \
        if (NB > 1) a##r##1 = _mm512_dpbf16_ps(a##r##1, x, w1);                                     \
        if (NB > 2) a##r##2 = _mm512_dpbf16_ps(a##r##2, x, w2);                                     \
        if (NB > 3) a##r##3 = _mm512_dpbf16_ps(a##r##3, x, w3);                                     \
        if (NB > 4) a##r##4 = _mm512_dpbf16_ps(a##r##4, x, w4);                                     \
    }
#define BPUT(acc, r, j)                                                                             \
    if (last)                                                                                       \
        _mm512_storeu_ps(of + r * MAXW + n0 + 16 * j, acc);                                         \
    else                                                                                            \
        _mm256_storeu_si256((__m256i *)(o16 + r * MAXW + n0 + 16 * j),                              \
                            (__m256i)_mm512_cvtneps_pbh(_mm512_max_ps(acc, zero)));
#define BSTORE(r, NB)                                                                               \
    {                                                                                               \
        BPUT(a##r##0, r, 0)                                                                         \
        if (NB > 1) { BPUT(a##r##1, r, 1) }                                                         \
        if (NB > 2) { BPUT(a##r##2, r, 2) }                                                         \
        if (NB > 3) { BPUT(a##r##3, r, 3) }                                                         \
        if (NB > 4) { BPUT(a##r##4, r, 4) }                                                         \
    }
#define BMICRO(NB)                                                                                  \
    TARGET_BF16 static inline void bmicro##NB(const uint16_t *h, int k2, const uint16_t *wt, int np,  \
                                              const float *b, int n0, uint16_t *o16, float *of,       \
                                              int last) {                                             \
        __m512 zero = _mm512_setzero_ps();                                                          \
        __m512 b0 = _mm512_loadu_ps(b + n0);                                                        \
        __m512 b1 = NB > 1 ? _mm512_loadu_ps(b + n0 + 16) : zero;                                   \
        __m512 b2 = NB > 2 ? _mm512_loadu_ps(b + n0 + 32) : zero;                                   \
        __m512 b3 = NB > 3 ? _mm512_loadu_ps(b + n0 + 48) : zero;                                   \
        __m512 b4 = NB > 4 ? _mm512_loadu_ps(b + n0 + 64) : zero;                                   \
        BACC(0) BACC(1) BACC(2) BACC(3)                                                             \
        const uint16_t *w = wt + 2 * n0;                                                            \
        for (int i = 0; i < k2; i++, w += 2 * np) {                                                 \
            __m512bh w0 = (__m512bh)_mm512_loadu_si512(w);                                          \
            __m512bh w1 = (__m512bh)(NB > 1 ? _mm512_loadu_si512(w + 32) : _mm512_setzero_si512()); \
            __m512bh w2 = (__m512bh)(NB > 2 ? _mm512_loadu_si512(w + 64) : _mm512_setzero_si512()); \
            __m512bh w3 = (__m512bh)(NB > 3 ? _mm512_loadu_si512(w + 96) : _mm512_setzero_si512()); \
            __m512bh w4 = (__m512bh)(NB > 4 ? _mm512_loadu_si512(w + 128) : _mm512_setzero_si512());\
            BSTEP(0, NB) BSTEP(1, NB) BSTEP(2, NB) BSTEP(3, NB)                                     \
        }                                                                                           \
        BSTORE(0, NB) BSTORE(1, NB) BSTORE(2, NB) BSTORE(3, NB)                                     \
    }
BMICRO(1)
BMICRO(2)
BMICRO(3)
BMICRO(4)
BMICRO(5)

/* One layer over `rows` (a multiple of ROWS) rows: up to five column vectors per pass, so a
 * layer up to 80 wide (PCSR's 74-wide upsampler) is one pass over its weight. */
TARGET_BF16 static void layer_bf16(const uint16_t *h, int k, const uint16_t *wt, int np, const float *b,
                                   uint16_t *o16, float *of, int rows, int last) {
    int k2 = (k + 1) / 2;
    for (int n0 = 0; n0 < np; n0 += 80) {
        int nv = (np - n0) / 16 < 5 ? (np - n0) / 16 : 5;
        for (int r = 0; r < rows; r += ROWS) {
            const uint16_t *hr = h + r * MAXW;
            uint16_t *o = o16 + r * MAXW;
            float *f = of + r * MAXW;
            switch (nv) {
            case 1: bmicro1(hr, k2, wt, np, b, n0, o, f, last); break;
            case 2: bmicro2(hr, k2, wt, np, b, n0, o, f, last); break;
            case 3: bmicro3(hr, k2, wt, np, b, n0, o, f, last); break;
            case 4: bmicro4(hr, k2, wt, np, b, n0, o, f, last); break;
            default: bmicro5(hr, k2, wt, np, b, n0, o, f, last); break;
            }
        }
    }
}

TARGET_BF16 static void run_block_bf16(const struct mlp_args *a, const struct mlp_block *blk, uint16_t *buf_a,
                                       uint16_t *buf_b, float *buf_f) {
    __m512 zero = _mm512_setzero_ps();
    int rows = blk->n, tile = (rows + ROWS - 1) / ROWS * ROWS;
    for (int r = 0; r < tile; r++) {
        uint16_t *dst = buf_a + r * MAXW;
        if (r >= rows) { /* padding rows of the last micro-tile: computed, never stored */
            memset(dst, 0, sizeof(uint16_t) * (size_t)a->w0);
            continue;
        }
        int64_t g = blk->pix[r];
        const uint16_t *p = (const uint16_t *)a->proj + (g / a->ss) * a->w0;
        const float *q = a->sub_bias + (g % a->ss) * a->w0;
        for (int64_t c = 0; c < a->w0; c += 16) { /* bf16 -> fp32: the bits, 16 places up */
            __m512i bits = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + c))), 16);
            __m512 v = _mm512_max_ps(_mm512_add_ps(_mm512_castsi512_ps(bits), _mm512_loadu_ps(q + c)), zero);
            _mm256_storeu_si256((__m256i *)(dst + c), (__m256i)_mm512_cvtneps_pbh(v));
        }
    }
    uint16_t *h = buf_a, *o = buf_b;
    for (int l = 0; l < a->n_layers; l++) {
        int last = l == a->n_layers - 1, np = (a->dims[l + 1] + 15) / 16 * 16;
        layer_bf16(h, a->dims[l], (const uint16_t *)a->wt[l], np, a->b[l], o, buf_f, tile, last);
        uint16_t *t = h; h = o; o = t;
    }
    int out_dim = a->dims[a->n_layers];
    for (int r = 0; r < rows; r++)
        memcpy(a->out + blk->dst[r] * out_dim, buf_f + r * MAXW, sizeof(float) * (size_t)out_dim);
}

static void bf16_range(void *ctx, int64_t r0, int64_t r1) {
    const struct mlp_args *a = (const struct mlp_args *)ctx;
    uint16_t buf_a[BLOCK * MAXW] __attribute__((aligned(64)));
    uint16_t buf_b[BLOCK * MAXW] __attribute__((aligned(64)));
    float buf_f[BLOCK * MAXW] __attribute__((aligned(64)));
    struct mlp_block blk;
    while (mlp_next_block(a, &r0, r1, &blk)) run_block_bf16(a, &blk, buf_a, buf_b, buf_f);
}
#endif

/* As pcsr_mlp_f32, in bf16 (layout above); every padded width (to 16) must be <= MLP_MAXW.
 * Returns 0, or -1 if refused (no AVX512-BF16 in this build or CPU, bad sizes). */
int pcsr_mlp_bf16(const void *proj, int64_t w0, const float *sub_bias, int64_t ss, const int64_t *rows,
                  const uint8_t *classes, int32_t want, int32_t scatter, int64_t n, int32_t n_layers,
                  const int32_t *dims, const void *const *wt, const float *const *b, float *out, int32_t threads) {
    struct mlp_args a = {proj, sub_bias, w0, ss, rows, classes, want, scatter, n_layers, dims, wt, b, out};
    if (!pcsr_bf16_supported() || !mlp_args_ok(&a, 16)) return -1;
#if HAVE_BF16
    mlp_launch(&a, n, threads, bf16_range);
#else
    (void)n; (void)threads;
#endif
    return 0;
}
