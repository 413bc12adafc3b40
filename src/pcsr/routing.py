"""Routing rules: which upsampler each output pixel gets. Pure tensor functions.

Classes are ordered by cost, 0 the cheapest. The cost rule itself (argmax p_j / cost_j^k) is
`models.pcsr.PCSR.route_rows`, which applies it to logits.
"""
from __future__ import annotations

import torch


def kmeans_1d(x: torch.Tensor, iters: int = 20, tol: float = 1e-4) -> torch.Tensor:
    """Two-cluster k-means on values in [0, 1] as the reference runs it: True for the high cluster.

    The reference starts from a single centroid at 0.5, so its first pass puts every value in one
    cluster and leaves the other empty (centroid 0): the real start is (mean(x), 0). Lloyd steps
    follow until the centroids move by at most `tol` (sum of squares) or `iters` passes in all;
    the labels are those of the last assignment, made before the last centroid update.
    """
    x = x.reshape(-1).to(torch.float32)
    c = torch.stack([x.mean(), torch.zeros((), dtype=x.dtype, device=x.device)])
    labels = torch.zeros_like(x, dtype=torch.long)
    for _ in range(iters - 1):
        labels = ((x - c[1]).abs() < (x - c[0]).abs()).long()  # ties go to cluster 0
        sums = torch.zeros(2, dtype=torch.float64, device=x.device).index_add_(0, labels, x.double())
        counts = torch.bincount(labels, minlength=2).double()
        new = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums)).to(x.dtype)
        moved = float(((new - c) ** 2).sum())
        c = new
        if moved <= tol:
            break
    low_label = labels[torch.argmin(x)]
    return labels != low_label


def adaptive(prob_heavy: torch.Tensor) -> torch.Tensor:
    """The paper's adaptive decision: k-means on the min-max normalised heavy probability of one image."""
    p = prob_heavy.to(torch.float32)
    lo, hi = p.min(), p.max()
    if hi <= lo:
        return torch.zeros_like(p, dtype=torch.bool)
    return kmeans_1d((p - lo) / (hi - lo)).reshape(p.shape)


def budget(score: torch.Tensor, fraction: float) -> torch.Tensor:
    """True for the round(fraction * n) pixels of highest score: a heavy share met to within one pixel."""
    flat = score.reshape(-1)
    n = int(round(min(max(fraction, 0.0), 1.0) * flat.numel()))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if n:
        mask[torch.topk(flat, n, sorted=False).indices] = True
    return mask.reshape(score.shape)


BAND_ELEMENTS = 200_000  # a band of rows of the 3x3 mean: its few temporaries stay in L2 cache


def refine(sr: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Smooth the seams: a pixel with a costlier class among its 8 neighbours takes the 3x3 mean.

    sr (N, C, H, W), classes (N, H, W). The outermost rows and columns are left alone. Only the
    target pixels are averaged, from the unrefined values: by gathering when they are few, by a
    box filter when they are many.
    """
    n, c, h, w = sr.shape
    if h < 3 or w < 3:
        return sr
    cls = classes if classes.dtype == torch.uint8 else classes.to(torch.int64)
    rows = torch.maximum(torch.maximum(cls[:, :, :-2], cls[:, :, 1:-1]), cls[:, :, 2:])
    neigh = torch.maximum(torch.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])
    targets = neigh > cls[:, 1:-1, 1:-1]
    out = sr.clone()
    if int(torch.count_nonzero(targets)) * 4 > targets.numel():
        # dense: a separable 3x3 box filter everywhere, in bands of rows that stay in cache
        targets = targets.unsqueeze(1)
        band = max(8, BAND_ELEMENTS // (c * w))
        for a in range(1, h - 1, band):
            b = min(a + band, h - 1)
            src = sr[..., a - 1:b + 1, :]
            rows3 = src[..., :-2] + src[..., 1:-1]
            rows3 += src[..., 2:]
            box = rows3[..., :-2, :] + rows3[..., 1:-1, :]
            box += rows3[..., 2:, :]
            box /= 9
            inner = out[..., a:b, 1:-1]
            torch.where(targets[..., a - 1:b - 1, :], box, inner, out=inner)
        return out
    # sparse: the 3x3 mean at the target pixels only, gathered along the pixel dimension, which is
    # dim 0 of (pixels, C) rows for a channels_last image (C values side by side), dim 1 otherwise
    d = 0 if c > 1 and sr.is_contiguous(memory_format=torch.channels_last) else 1
    for i in range(n):
        y, x = torch.nonzero(targets[i], as_tuple=True)
        centre = (y + 1) * w + (x + 1)
        src, dst = (sr[i].permute(1, 2, 0).reshape(h * w, c), out[i].permute(1, 2, 0).view(h * w, c)) if d == 0 \
            else (sr[i].reshape(c, h * w), out[i].view(c, h * w))
        acc = src.index_select(d, centre - w - 1)
        for off in (-w, -w + 1, -1, 0, 1, w - 1, w, w + 1):
            acc += src.index_select(d, centre + off)
        dst.index_copy_(d, centre, acc / 9)
    return out
