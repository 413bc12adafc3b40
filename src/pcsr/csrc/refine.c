/* The seam refinement of pcsr/routing.py in one pass over a channels-last fp32 image.
 *
 * Why: in torch it takes a clone of the image, passes for the neighbours' classes, a box filter
 * and a select over every pixel, several passes over the image; here each output row
 * is read and written once, from three input rows that stay in cache.
 *
 * A pixel off the outermost rows and columns whose 3x3 neighbourhood holds a costlier class than
 * its own takes the 3x3 mean (horizontal sums of three, then the three rows, then / 9); every
 * other pixel is copied. Plain C: the compiler vectorises the loops over a row.
 *
 *   sr   (N, H, W, C) fp32     cls (N, H, W) uint8     out (N, H, W, C) fp32, not sr
 * Threads: torch's OpenMP team (parallel.h), over output rows.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parallel.h"

struct refine_args {
    const float *sr;
    const uint8_t *cls;
    int64_t H, W, C;
    float *out;
};

static inline uint8_t max3(uint8_t a, uint8_t b, uint8_t c) {
    uint8_t m = a > b ? a : b;
    return m > c ? m : c;
}

static void refine_rows(void *ctx, int64_t r0, int64_t r1) {
    const struct refine_args *a = (const struct refine_args *)ctx;
    int64_t H = a->H, W = a->W, C = a->C, row = W * C;
    float *hsum = malloc(sizeof(float) * (size_t)(3 * row)); /* horizontal sums of rows y-1, y, y+1 */
    uint8_t *vmax = malloc((size_t)W);                        /* column maxima of the three class rows */
    if (!hsum || !vmax) { /* out of memory: copy, never leave rows unwritten */
        memcpy(a->out + r0 * row, a->sr + r0 * row, sizeof(float) * (size_t)((r1 - r0) * row));
        free(hsum);
        free(vmax);
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        int64_t y = r % H;
        const float *src = a->sr + r * row;
        float *dst = a->out + r * row;
        memcpy(dst, src, sizeof(float) * (size_t)row);
        if (y == 0 || y == H - 1 || W < 3) continue;
        const uint8_t *c0 = a->cls + (r - 1) * W, *c1 = c0 + W, *c2 = c1 + W;
        for (int64_t x = 0; x < W; x++) vmax[x] = max3(c0[x], c1[x], c2[x]);
        for (int k = 0; k < 3; k++) {
            const float *s = a->sr + (r - 1 + k) * row;
            float *h = hsum + k * row;
            for (int64_t i = C; i < row - C; i++) h[i] = s[i - C] + s[i] + s[i + C];
        }
        const float *h0 = hsum, *h1 = hsum + row, *h2 = hsum + 2 * row;
        for (int64_t x = 1; x < W - 1; x++) {
            if (max3(vmax[x - 1], vmax[x], vmax[x + 1]) <= c1[x]) continue;
            for (int64_t ch = 0; ch < C; ch++) {
                int64_t i = x * C + ch;
                dst[i] = (h0[i] + h1[i] + h2[i]) / 9.0f;
            }
        }
    }
    free(hsum);
    free(vmax);
}

/* N images; out must not overlap sr. Returns 0, or -1 if refused. */
int pcsr_refine_f32(const float *sr, const uint8_t *cls, int64_t N, int64_t H, int64_t W, int64_t C, float *out,
                    int32_t threads) {
    if (N < 1 || H < 1 || W < 1 || C < 1 || sr == out) return -1;
    struct refine_args a = {sr, cls, H, W, C, out};
    pcsr_parallel_for(N * H, 16, threads, refine_rows, &a);
    return 0;
}
