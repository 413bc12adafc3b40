/* Grouped 3x3 convolution (stride 1, zero padding 1), channels-last fp32, AVX2 + FMA.
 *
 * Why: CARN's residual units are grouped 3x3 convolutions of narrow groups (CARN-M: 52 channels
 * in 4 groups of 13). oneDNN's kernels run such narrow groups far below the speed of a dense
 * convolution of the same work. Here each output pixel's group is two vectors of 8 output
 * channels, six pixels at a time: 12 accumulators, each input value loaded once per tap and
 * broadcast against the group's weights.
 *
 * Layout the caller prepares (pcsr/kernels.py):
 *   in   (N, H, W, C) channels-last input, C = groups * cin
 *   wt   (groups, 9, cin, 16) weights, tap = ky * 3 + kx, output channels zero-padded to 16
 *   bias (groups, 16) zero-padded
 *   out  (N, H, W, groups * cout), 8 <= cout <= 16
 * Threads: torch's OpenMP team (parallel.h), over output rows.
 */
#include <stdint.h>

#include "parallel.h"

#if HAVE_X86
#define PIX 6 /* output pixels per micro-tile */

#define GACC(r) __m256 c##r##0 = b0, c##r##1 = b1;
#define GSTEP(r)                                                                                    \
    {                                                                                               \
        __m256 a = _mm256_broadcast_ss(px + r * C + i);                                             \
        c##r##0 = _mm256_fmadd_ps(a, w0, c##r##0);                                                  \
        c##r##1 = _mm256_fmadd_ps(a, w1, c##r##1);                                                  \
    }
#define GSTORE(r)                                                                                   \
    {                                                                                               \
        float *d = o + r * Cout;                                                                    \
        __m256 v0 = relu ? _mm256_max_ps(c##r##0, zero) : c##r##0;                                 \
        __m256 v1 = relu ? _mm256_max_ps(c##r##1, zero) : c##r##1;                                  \
        _mm256_storeu_ps(d, v0);                                                                    \
        _mm256_storeu_ps(d + 8, _mm256_blendv_ps(_mm256_loadu_ps(d + 8), v1, _mm256_castsi256_ps(m1))); \
    }

/* PIX output pixels x0 .. x0 + PIX - 1 of row y, all with their 3x3 window inside the row. */
TARGET static inline void interior(const float *in, int64_t W, int64_t C, int64_t y, int64_t H, int64_t x0,
                                   const float *wg, int cin, const float *bg, float *o, int64_t Cout,
                                   __m256i m1, int relu) {
    __m256 zero = _mm256_setzero_ps();
    __m256 b0 = _mm256_loadu_ps(bg), b1 = _mm256_loadu_ps(bg + 8);
    GACC(0) GACC(1) GACC(2) GACC(3) GACC(4) GACC(5)
    for (int ky = 0; ky < 3; ky++) {
        int64_t yy = y + ky - 1;
        if (yy < 0 || yy >= H) continue;
        for (int kx = 0; kx < 3; kx++) {
            const float *px = in + (yy * W + x0 + kx - 1) * C;
            const float *w = wg + (ky * 3 + kx) * cin * 16;
            for (int i = 0; i < cin; i++, w += 16) {
                __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
                GSTEP(0) GSTEP(1) GSTEP(2) GSTEP(3) GSTEP(4) GSTEP(5)
            }
        }
    }
    GSTORE(0) GSTORE(1) GSTORE(2) GSTORE(3) GSTORE(4) GSTORE(5)
}

/* One output pixel anywhere (the borders and what is left of a row). */
TARGET static inline void single(const float *in, int64_t W, int64_t C, int64_t y, int64_t H, int64_t x,
                                 const float *wg, int cin, const float *bg, float *o, __m256i m0, __m256i m1,
                                 int relu) {
    __m256 zero = _mm256_setzero_ps();
    __m256 c0 = _mm256_loadu_ps(bg), c1 = _mm256_loadu_ps(bg + 8);
    for (int ky = 0; ky < 3; ky++) {
        int64_t yy = y + ky - 1;
        if (yy < 0 || yy >= H) continue;
        for (int kx = 0; kx < 3; kx++) {
            int64_t xx = x + kx - 1;
            if (xx < 0 || xx >= W) continue;
            const float *px = in + (yy * W + xx) * C;
            const float *w = wg + (ky * 3 + kx) * cin * 16;
            for (int i = 0; i < cin; i++, w += 16) {
                __m256 a = _mm256_broadcast_ss(px + i);
                c0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(w), c0);
                c1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(w + 8), c1);
            }
        }
    }
    _mm256_maskstore_ps(o, m0, relu ? _mm256_max_ps(c0, zero) : c0);
    _mm256_maskstore_ps(o + 8, m1, relu ? _mm256_max_ps(c1, zero) : c1);
}

TARGET static __m256i lane_mask(int n) { /* lanes 0 .. n-1 set */
    int32_t v[8];
    for (int i = 0; i < 8; i++) v[i] = i < n ? -1 : 0;
    return _mm256_loadu_si256((const __m256i *)v);
}
#endif

#if HAVE_X86
TARGET static void rows(const float *in, int64_t H, int64_t W, int groups, int cin, int cout, const float *wt,
                        const float *bias, int relu, float *out, int64_t r0, int64_t r1) {
    int64_t C = (int64_t)groups * cin, Cout = (int64_t)groups * cout;
    __m256i m0 = lane_mask(cout < 8 ? cout : 8), m1 = lane_mask(cout > 8 ? cout - 8 : 0);
    for (int64_t r = r0; r < r1; r++) {
        int64_t n = r / H, y = r % H;
        const float *img = in + n * H * W * C;
        float *orow = out + r * W * Cout;
        for (int g = 0; g < groups; g++) {
            const float *ig = img + g * cin, *wg = wt + (int64_t)g * 9 * cin * 16, *bg = bias + g * 16;
            float *og = orow + g * cout;
            int64_t x = 1;
            single(ig, W, C, y, H, 0, wg, cin, bg, og, m0, m1, relu);
            for (; x + PIX <= W - 1; x += PIX)
                interior(ig, W, C, y, H, x, wg, cin, bg, og + x * Cout, Cout, m1, relu);
            for (; x < W; x++) single(ig, W, C, y, H, x, wg, cin, bg, og + x * Cout, m0, m1, relu);
        }
    }
}
#endif

#if HAVE_X86
struct gconv_args {
    const float *in, *wt, *bias;
    int64_t H, W;
    int groups, cin, cout, relu;
    float *out;
};

static void gconv_range(void *ctx, int64_t r0, int64_t r1) {
    const struct gconv_args *a = (const struct gconv_args *)ctx;
    rows(a->in, a->H, a->W, a->groups, a->cin, a->cout, a->wt, a->bias, a->relu, a->out, r0, r1);
}
#endif

/* N images of H x W on up to `threads` threads. Returns 0, or -1 if refused. */
int pcsr_gconv3x3_f32(const float *in, int64_t N, int64_t H, int64_t W, int32_t groups, int32_t cin, int32_t cout,
                      const float *wt, const float *bias, int32_t relu, float *out, int32_t threads) {
#if HAVE_X86
    if (!pcsr_cpu_supported() || cout < 8 || cout > 16 || cin < 1 || groups < 1 || H < 1 || W < 1) return -1;
    struct gconv_args a = {in, wt, bias, H, W, groups, cin, cout, relu, out};
    pcsr_parallel_for(N * H, 1, threads, gconv_range, &a);
    return 0;
#else
    (void)in; (void)N; (void)H; (void)W; (void)groups; (void)cin; (void)cout; (void)wt; (void)bias; (void)relu;
    (void)out; (void)threads;
    return -1;
#endif
}
