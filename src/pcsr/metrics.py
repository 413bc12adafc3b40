"""PSNR and SSIM with the BasicSR / MATLAB conventions used by SR papers.

Published numbers are computed on [0,255] images, on the Y channel of MATLAB's
``rgb2ycbcr`` applied to uint8 (so Y is rounded), with a border shaved; any other
convention shifts PSNR by tenths of a dB, so every step here mirrors that recipe.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["rgb_to_y", "psnr", "ssim"]

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


def rgb_to_y(img: torch.Tensor, rounded: bool = False) -> torch.Tensor:
    """BT.601 luma of (...,3,H,W) values in [0,255], as MATLAB's rgb2ycbcr.

    ``rounded=True`` mimics rgb2ycbcr on uint8 input, whose result is uint8.
    Computed in float64 so the rounding decision does not depend on the input dtype.
    """
    if img.dim() < 3 or img.shape[-3] != 3:
        raise ValueError(f"rgb_to_y expects (...,3,H,W), got shape {tuple(img.shape)}")
    x = img.to(torch.float64)
    r, g, b = x.unbind(dim=-3)
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    if rounded:
        y = torch.round(y)
    out_dtype = img.dtype if img.is_floating_point() else torch.float64
    return y.unsqueeze(-3).to(out_dtype)


def _prepare(
    a: torch.Tensor, b: torch.Tensor, shave: int, y_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared preprocessing so PSNR and SSIM see exactly the same pixels."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() < 3:
        raise ValueError(f"expected (C,H,W) images, got shape {tuple(a.shape)}")
    if shave < 0:
        raise ValueError(f"shave must be >= 0, got {shave}")
    channels = a.shape[-3]
    if y_channel and channels == 3:
        a = rgb_to_y(a, rounded=True)
        b = rgb_to_y(b, rounded=True)
    elif y_channel and channels != 1:
        raise ValueError(f"y_channel needs 1 or 3 channels, got {channels}")
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    if shave:
        h, w = a.shape[-2], a.shape[-1]
        if 2 * shave >= h or 2 * shave >= w:
            raise ValueError(f"shave={shave} leaves nothing of a {h}x{w} image")
        a = a[..., shave : h - shave, shave : w - shave]
        b = b[..., shave : h - shave, shave : w - shave]
    return a, b


def psnr(
    a: torch.Tensor,
    b: torch.Tensor,
    shave: int = 0,
    y_channel: bool = False,
    data_range: float = 255.0,
) -> float:
    """PSNR in dB of (C,H,W) images in [0,255]; inf for identical images."""
    a, b = _prepare(a, b, shave, y_channel)
    mse = torch.mean((a - b) ** 2).item()
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(device: torch.device) -> torch.Tensor:
    """Normalised 11x11 Gaussian, the same as cv2.getGaussianKernel(11, 1.5) outer itself."""
    half = _SSIM_WINDOW // 2
    x = torch.arange(-half, half + 1, dtype=torch.float64, device=device)
    g = torch.exp(-(x * x) / (2.0 * _SSIM_SIGMA**2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor, shave: int = 0, y_channel: bool = False) -> float:
    """SSIM of Wang et al. on [0,255] values, 'valid' filtering, averaged over channels."""
    a, b = _prepare(a, b, shave, y_channel)
    h, w = a.shape[-2], a.shape[-1]
    if h < _SSIM_WINDOW or w < _SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels, got {h}x{w}")
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    window = _gaussian_window(a.device)

    # One conv call per quantity, every channel as a separate image, no padding.
    x = a.reshape(-1, 1, h, w)
    y = b.reshape(-1, 1, h, w)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    mu_x = filt(x)
    mu_y = filt(y)
    mu_x2 = mu_x * mu_x
    mu_y2 = mu_y * mu_y
    mu_xy = mu_x * mu_y
    sigma_x2 = filt(x * x) - mu_x2
    sigma_y2 = filt(y * y) - mu_y2
    sigma_xy = filt(x * y) - mu_xy
    ssim_map = ((2.0 * mu_xy + c1) * (2.0 * sigma_xy + c2)) / (
        (mu_x2 + mu_y2 + c1) * (sigma_x2 + sigma_y2 + c2)
    )
    # Mean per channel, then over channels (equal sizes, so this is the overall mean,
    # but keep BasicSR's order of averaging).
    per_channel = ssim_map.flatten(1).mean(dim=1)
    return per_channel.mean().item()
