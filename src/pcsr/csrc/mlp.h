/* What the two MLP kernels share (mlp.c: fp32, AVX2; mlp_bf16.c: bf16, AVX512-BF16): their
 * arguments, their size limits and the checks made before any row is touched. */
#ifndef PCSR_MLP_H
#define PCSR_MLP_H
#include <stdint.h>

#include "parallel.h"

#define MLP_BLOCK 32  /* rows per pass through all layers */
#define MLP_MAXW 128  /* widest layer (padded) the kernels take */

struct mlp_args {
    const void *proj;             /* (n_lr, w0): fp32 in mlp.c, bf16 in mlp_bf16.c */
    const float *sub_bias;        /* (ss, w0): the first layer's bias per sub-pixel, see mlp.c */
    int64_t w0, ss;
    const int64_t *rows;          /* pixel indices, or NULL for pixels 0 .. n-1 */
    const uint8_t *classes;       /* or, instead of rows: every pixel g of 0 .. n-1 with classes[g] == want */
    int want, scatter, n_layers;
    const int32_t *dims;          /* dims[0] the first layer's width, dims[l + 1] layer l+1's outputs */
    const void *const *wt;        /* per later layer: fp32 (mlp.c) or bf16 pairs (mlp_bf16.c) */
    const float *const *b;
    float *out;
};

/* 1 where every width padded to `lanes` fits and w0 is the first layer's padded width. */
static inline int mlp_args_ok(const struct mlp_args *a, int lanes) {
    if (a->n_layers < 1 || a->w0 % lanes || a->w0 > MLP_MAXW) return 0;
    if ((a->scatter && !a->rows && !a->classes) || (a->classes && (a->rows || !a->scatter))) return 0;
    if ((a->dims[0] + lanes - 1) / lanes * lanes != a->w0) return 0;
    for (int l = 0; l <= a->n_layers; l++)
        if (a->dims[l] < 1 || (a->dims[l] + lanes - 1) / lanes * lanes > MLP_MAXW) return 0;
    return 1;
}

/* The rows of one pass through the layers: each one's pixel (sub-pixel order) and output row. */
struct mlp_block {
    int64_t pix[MLP_BLOCK], dst[MLP_BLOCK];
    int n;
};

/* Fills *blk with the next rows of [*r, r1) and moves *r past them; 0 when none is left. With a
 * class map the kernel picks its own pixels (no index tensor, no pass to make one). */
static inline int mlp_next_block(const struct mlp_args *a, int64_t *r, int64_t r1, struct mlp_block *blk) {
    int k = 0;
    if (a->classes) {
        int64_t g = *r;
        for (; g < r1 && k < MLP_BLOCK; g++)
            if (a->classes[g] == a->want) blk->pix[k] = blk->dst[k] = g, k++;
        *r = g;
    } else {
        for (; *r < r1 && k < MLP_BLOCK; (*r)++, k++) {
            int64_t g = a->rows ? a->rows[*r] : *r;
            blk->pix[k] = g;
            blk->dst[k] = a->scatter ? g : *r;
        }
    }
    blk->n = k;
    return k > 0;
}

#define MLP_CLASS_CHUNK 8192 /* pixels scanned per grab when picking by class: threads take them in turn */

/* Runs `range` over the n pixels on up to `threads` threads: rows in equal parts; a class map in
 * chunks taken dynamically, as a class's pixels gather where the image is detailed. */
static inline void mlp_launch(struct mlp_args *a, int64_t n, int threads, pcsr_range_fn range) {
    if (a->classes)
        pcsr_parallel_for_dynamic(n, MLP_CLASS_CHUNK, threads, range, a);
    else
        pcsr_parallel_for(n, MLP_BLOCK, threads, range, a);
}

#endif
