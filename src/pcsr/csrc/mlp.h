/* What the two MLP kernels share (mlp.c: fp32, AVX2; mlp_bf16.c: bf16, AVX512-BF16): their
 * arguments, their size limits and the checks made before any row is touched. */
#ifndef PCSR_MLP_H
#define PCSR_MLP_H
#include <stdint.h>

#define MLP_BLOCK 32  /* rows per pass through all layers */
#define MLP_MAXW 128  /* widest layer (padded) the kernels take */

struct mlp_args {
    const void *proj;             /* (n_lr, w0): fp32 in mlp.c, bf16 in mlp_bf16.c */
    const float *sub_bias;        /* (ss, w0): the first layer's bias per sub-pixel, see mlp.c */
    int64_t w0, ss;
    const int64_t *rows;          /* pixel indices, or NULL for pixels 0 .. n-1 */
    int scatter, n_layers;
    const int32_t *dims;          /* dims[0] the first layer's width, dims[l + 1] layer l+1's outputs */
    const void *const *wt;        /* per later layer: fp32 (mlp.c) or bf16 pairs (mlp_bf16.c) */
    const float *const *b;
    float *out;
};

/* 1 where every width padded to `lanes` fits and w0 is the first layer's padded width. */
static inline int mlp_args_ok(const struct mlp_args *a, int lanes) {
    if (a->n_layers < 1 || a->w0 % lanes || a->w0 > MLP_MAXW || (a->scatter && !a->rows)) return 0;
    if ((a->dims[0] + lanes - 1) / lanes * lanes != a->w0) return 0;
    for (int l = 0; l <= a->n_layers; l++)
        if (a->dims[l] < 1 || (a->dims[l] + lanes - 1) / lanes * lanes > MLP_MAXW) return 0;
    return 1;
}

#endif
