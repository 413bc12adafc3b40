/* A whole narrow ReLU MLP per pass over a few rows, fp32, AVX2 + FMA.
 *
 * Why: PCSR's per-pixel heads are 10- to 74-wide layers. One library call per layer streams every
 * row's activations through memory between layers, and widths that are not multiples of the
 * vector length cost padding in every call. Here a block of rows goes through all layers while its
 * activations stay in the L1 cache, and the first layer's input (a per-LR-pixel projection plus a
 * per-sub-pixel bias, see heads.SubpixelQueries) is gathered inside the kernel.
 *
 * Layout the caller prepares (pcsr/kernels.py):
 *   proj      (n_lr, w0) the first layer's feature projection per LR pixel, w0 = padded width
 *   sub_bias  (ss, w0)   the first layer's bias plus coordinate part per sub-pixel
 *   wt[l]     (k_l, np_l) layer l+1's weight, transposed, output columns zero-padded to np_l
 *   b[l]      (np_l)     its bias, zero-padded
 * Output pixel g (sub-pixel order) is LR pixel g / ss, sub-pixel g % ss. The kernel runs the pixels
 * rows[0 .. n), or with rows NULL the pixels 0 .. n-1 themselves, or with a class map the pixels g
 * of 0 .. n-1 whose classes[g] is `want` (mlp.h). The last layer has no ReLU; its first out_dim
 * columns go to row r of out, or with `scatter` to the pixel's own row of a full-size output.
 *
 * Threads: torch's OpenMP team (parallel.h).
 */
#include <stdint.h>
#include <string.h>

#include "mlp.h"
#include "parallel.h"

#define ROWS 4       /* rows per micro-tile: 4 x 3 vectors = 12 accumulators */
#define BLOCK MLP_BLOCK
#define MAXW MLP_MAXW

#if HAVE_X86

/* out[ROWS][n0 .. n0 + 8*NB) = act(h[ROWS][0..k) @ wt[0..k)[n0 ..] + b[n0 ..]).
 * Accumulators are named variables, not an array: gcc keeps an array of vectors in memory and
 * stores it back on every step of the loop. */
#define ACC_DECL(r) __m256 a##r##0 = b0, a##r##1 = b1, a##r##2 = b2;
#define ACC_STEP(r, NB)                                                                             \
    {                                                                                               \
        __m256 x = _mm256_broadcast_ss(h + r * hstride + i);                                        \
        a##r##0 = _mm256_fmadd_ps(x, w0, a##r##0);                                                  \
        if (NB > 1) a##r##1 = _mm256_fmadd_ps(x, w1, a##r##1);                                      \
        if (NB > 2) a##r##2 = _mm256_fmadd_ps(x, w2, a##r##2);                                      \
    }
#define ACC_STORE(r, NB)                                                                            \
    {                                                                                               \
        float *d = o + r * ostride + n0;                                                            \
        _mm256_storeu_ps(d, relu ? _mm256_max_ps(a##r##0, zero) : a##r##0);                         \
        if (NB > 1) _mm256_storeu_ps(d + 8, relu ? _mm256_max_ps(a##r##1, zero) : a##r##1);         \
        if (NB > 2) _mm256_storeu_ps(d + 16, relu ? _mm256_max_ps(a##r##2, zero) : a##r##2);        \
    }
#define MICRO(NB)                                                                                   \
    TARGET static inline void micro##NB(const float *h, int hstride, int k, const float *wt, int np, \
                                        const float *b, int n0, float *o, int ostride, int relu) {    \
        __m256 zero = _mm256_setzero_ps();                                                          \
        __m256 b0 = _mm256_loadu_ps(b + n0);                                                        \
        __m256 b1 = NB > 1 ? _mm256_loadu_ps(b + n0 + 8) : zero;                                    \
        __m256 b2 = NB > 2 ? _mm256_loadu_ps(b + n0 + 16) : zero;                                   \
        ACC_DECL(0) ACC_DECL(1) ACC_DECL(2) ACC_DECL(3)                                             \
        const float *w = wt + n0;                                                                   \
        for (int i = 0; i < k; i++, w += np) {                                                      \
            __m256 w0 = _mm256_loadu_ps(w);                                                         \
            __m256 w1 = NB > 1 ? _mm256_loadu_ps(w + 8) : zero;                                     \
            __m256 w2 = NB > 2 ? _mm256_loadu_ps(w + 16) : zero;                                    \
            ACC_STEP(0, NB) ACC_STEP(1, NB) ACC_STEP(2, NB) ACC_STEP(3, NB)                         \
        }                                                                                           \
        ACC_STORE(0, NB) ACC_STORE(1, NB) ACC_STORE(2, NB) ACC_STORE(3, NB)                         \
    }
MICRO(1)
MICRO(2)
MICRO(3)

/* One layer over `rows` (a multiple of ROWS) rows of h: column blocks outside, so a block of the
 * weight stays in L1 while every micro-tile of rows passes it. */
TARGET static void layer(const float *h, int k, const float *wt, int np, const float *b, float *o,
                         int rows, int relu) {
    int n0 = 0;
    for (; n0 + 24 <= np; n0 += 24)
        for (int r = 0; r < rows; r += ROWS) micro3(h + r * MAXW, MAXW, k, wt, np, b, n0, o + r * MAXW, MAXW, relu);
    if (np - n0 == 16)
        for (int r = 0; r < rows; r += ROWS) micro2(h + r * MAXW, MAXW, k, wt, np, b, n0, o + r * MAXW, MAXW, relu);
    else if (np - n0 == 8)
        for (int r = 0; r < rows; r += ROWS) micro1(h + r * MAXW, MAXW, k, wt, np, b, n0, o + r * MAXW, MAXW, relu);
}

TARGET static void run_block(const struct mlp_args *a, const struct mlp_block *blk, float *buf_a, float *buf_b) {
    __m256 zero = _mm256_setzero_ps();
    int rows = blk->n, tile = (rows + ROWS - 1) / ROWS * ROWS;
    for (int r = 0; r < tile; r++) {
        float *dst = buf_a + r * MAXW;
        if (r >= rows) { /* padding rows of the last micro-tile: computed, never stored */
            memset(dst, 0, sizeof(float) * (size_t)a->w0);
            continue;
        }
        int64_t g = blk->pix[r];
        const float *p = (const float *)a->proj + (g / a->ss) * a->w0, *q = a->sub_bias + (g % a->ss) * a->w0;
        for (int64_t c = 0; c < a->w0; c += 8)
            _mm256_storeu_ps(dst + c, _mm256_max_ps(_mm256_add_ps(_mm256_loadu_ps(p + c), _mm256_loadu_ps(q + c)), zero));
    }
    float *h = buf_a, *o = buf_b;
    for (int l = 0; l < a->n_layers; l++) {
        int k = a->dims[l], np = (a->dims[l + 1] + 7) / 8 * 8;
        layer(h, k, (const float *)a->wt[l], np, a->b[l], o, tile, l < a->n_layers - 1);
        float *t = h; h = o; o = t;
    }
    int out_dim = a->dims[a->n_layers];
    for (int r = 0; r < rows; r++)
        memcpy(a->out + blk->dst[r] * out_dim, h + r * MAXW, sizeof(float) * (size_t)out_dim);
}

static void mlp_range(void *ctx, int64_t r0, int64_t r1) {
    float buf_a[BLOCK * MAXW] __attribute__((aligned(32)));
    float buf_b[BLOCK * MAXW] __attribute__((aligned(32)));
    struct mlp_block blk;
    while (mlp_next_block((const struct mlp_args *)ctx, &r0, r1, &blk))
        run_block((const struct mlp_args *)ctx, &blk, buf_a, buf_b);
}
#endif


int pcsr_max_width(void) { return MAXW; }

/* n rows (or n pixels of a class map, then with scatter) on up to `threads` threads. dims[0] is
 * the real first-layer width (w0 its padded row length), dims[l + 1] layer l+1's real output
 * width; every padded width must be <= MAXW. Returns 0, or -1 if refused. */
int pcsr_mlp_f32(const void *proj, int64_t w0, const float *sub_bias, int64_t ss, const int64_t *rows,
                 const uint8_t *classes, int32_t want, int32_t scatter, int64_t n, int32_t n_layers,
                 const int32_t *dims, const void *const *wt, const float *const *b, float *out, int32_t threads) {
    struct mlp_args a = {proj, sub_bias, w0, ss, rows, classes, want, scatter, n_layers, dims, wt, b, out};
    if (!pcsr_cpu_supported() || !mlp_args_ok(&a, 8)) return -1; /* 0 off x86 */
#if HAVE_X86
    mlp_launch(&a, n, threads, mlp_range);
#else
    (void)n; (void)threads;
#endif
    return 0;
}
