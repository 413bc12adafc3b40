"""MATLAB-compatible bicubic ``imresize`` on torch tensors.

The reference models were trained and evaluated on LR images made with
MATLAB's ``imresize(x, s, 'bicubic')``; PIL or ``torch.nn.functional.interpolate``
give different pixels and therefore different PSNR numbers, so we reproduce
MATLAB's ``contributions`` logic exactly and apply it as a dense matrix per axis.
"""

from __future__ import annotations

import math

import torch

__all__ = ["imresize", "resize_matrix"]

_KERNEL_WIDTH = 4.0  # support of the a=-0.5 cubic kernel


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys cubic kernel with a=-0.5, the one MATLAB calls 'bicubic'."""
    ax = x.abs()
    ax2 = ax * ax
    ax3 = ax2 * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def resize_matrix(
    in_length: int,
    out_length: int,
    scale: float,
    antialias: bool = True,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Dense (out, in) matrix equal to MATLAB's sparse contributions for one axis.

    Built in float64 so the weights match MATLAB's double arithmetic before any cast.
    """
    if scale < 1 and antialias:
        kernel_width = _KERNEL_WIDTH / scale

        def kernel(x: torch.Tensor) -> torch.Tensor:
            return scale * _cubic(scale * x)

    else:
        kernel_width = _KERNEL_WIDTH
        kernel = _cubic

    x = torch.arange(1, out_length + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = torch.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(dim=1, keepdim=True)

    # Mirror out-of-range taps the way MATLAB does: aux = [1..in, in..1].
    idx = indices.long() - 1  # zero-based
    period = 2 * in_length
    idx = torch.remainder(idx, period)
    idx = torch.where(idx < in_length, idx, period - 1 - idx)

    # MATLAB drops all-zero tap columns; with a dense matrix a zero weight adds
    # nothing, so scattering every tap is equivalent.
    mat = torch.zeros(out_length, in_length, dtype=torch.float64)
    mat.scatter_add_(1, idx, weights)
    return mat.to(dtype=dtype, device=device)


def _output_sizes(
    in_hw: tuple[int, int], scale: float | None, size: tuple[int, int] | None
) -> tuple[tuple[int, int], tuple[float, float]]:
    if (scale is None) == (size is None):
        raise ValueError("imresize needs exactly one of scale or size")
    if scale is not None:
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale}")
        out = (int(math.ceil(in_hw[0] * scale)), int(math.ceil(in_hw[1] * scale)))
        return out, (scale, scale)
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"size must be two positive integers, got {size}")
    out = (int(size[0]), int(size[1]))
    return out, (out[0] / in_hw[0], out[1] / in_hw[1])


def imresize(
    img: torch.Tensor,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> torch.Tensor:
    """Resize (C,H,W) or (N,C,H,W) float images exactly like MATLAB bicubic imresize.

    Values are not clamped: MATLAB on doubles overshoots too, and the reference
    LR images keep that overshoot.
    """
    if not torch.is_tensor(img) or not img.is_floating_point():
        raise TypeError("imresize expects a floating point torch.Tensor")
    if img.dim() not in (3, 4):
        raise ValueError(f"imresize expects (C,H,W) or (N,C,H,W), got shape {tuple(img.shape)}")
    in_hw = (img.shape[-2], img.shape[-1])
    if min(in_hw) < 1:
        raise ValueError(f"cannot resize an empty image of shape {tuple(img.shape)}")
    out_hw, scales = _output_sizes(in_hw, scale, size)

    work_dtype = torch.float64 if img.dtype == torch.float64 else torch.float32
    out = img.to(work_dtype)

    # MATLAB resizes the dimension with the smaller scale first (ties: rows first).
    order = sorted(range(2), key=lambda d: scales[d])
    for dim in order:
        mat = resize_matrix(
            in_hw[dim], out_hw[dim], scales[dim], antialias, dtype=work_dtype, device=img.device
        )
        if dim == 0:
            out = torch.einsum("oh,...hw->...ow", mat, out)
        else:
            out = torch.einsum("ow,...hw->...ho", mat, out)
    return out.to(img.dtype)
