"""The benchmark metrics of an 8-bit SR output against its HR image, as metrics.psnr / metrics.ssim
compute them (BasicSR conventions: a border of `scale` pixels shaved; Y per MATLAB's rgb2ycbcr,
rounded), with the HR side computed once per image so that every setting of a sweep reuses it.
"""
from __future__ import annotations

import math

import torch

from ..errors import PcsrError
from ..metrics import rgb_to_y

_GAUSS = None


def _gauss() -> torch.Tensor:
    """The 11-tap, sigma 1.5 Gaussian of SSIM (Wang et al.; BasicSR), normalised."""
    global _GAUSS
    if _GAUSS is None:
        x = torch.arange(-5, 6, dtype=torch.float64)
        g = torch.exp(-(x * x) / (2 * 1.5 ** 2))
        _GAUSS = g / g.sum()
    return _GAUSS


def _band(n: int) -> torch.Tensor:
    """(n, n - 10) matrix whose product is the 'valid' correlation with the Gaussian."""
    g = _gauss()
    m = torch.zeros(n, n - 10, dtype=torch.float64)
    j = torch.arange(n - 10)
    for i in range(11):
        m[j + i, j] = g[i]
    return m


def _filter_rows(x: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Valid Gaussian filtering along the last axis, as blocked matrix products: the same sums as
    the 2-D convolution of metrics.ssim (to 1e-13), several times faster in float64 on a CPU."""
    n = x.shape[-1]
    out = torch.empty(*x.shape[:-1], n - 10, dtype=x.dtype)
    bands = {}
    for j0 in range(0, n - 10, block):
        j1 = min(j0 + block, n - 10)
        b = bands.get(j1 - j0)
        if b is None:
            b = bands[j1 - j0] = _band(j1 - j0 + 10)
        out[..., j0:j1] = x[..., j0:j1 + 10] @ b
    return out


def _gauss_filter(x: torch.Tensor) -> torch.Tensor:
    return _filter_rows(_filter_rows(x).transpose(-1, -2)).transpose(-1, -2)


class Reference:
    """The HR side of every comparison: its Y plane and SSIM statistics, computed once per image and
    reused by every setting. Metrics as metrics.psnr / metrics.ssim (scale border shaved, Y of
    MATLAB's rgb2ycbcr on uint8, rounded; SSIM with 'valid' 11x11 Gaussian windows, the RGB
    figure the mean over channels)."""

    C1 = (0.01 * 255.0) ** 2
    C2 = (0.03 * 255.0) ** 2

    def __init__(self, hr: torch.Tensor, shave: int, ssim: bool = False):
        self.shave = shave
        self.planes = self._planes(hr)
        h, w = self.planes.shape[-2:]
        if h < 1 or w < 1:
            raise PcsrError(f"a {hr.shape[-2]}x{hr.shape[-1]} image has nothing left after shaving {shave} pixels")
        self.ssim = ssim and h >= 11 and w >= 11
        if self.ssim:
            self.mu = _gauss_filter(self.planes)
            self.sq = _gauss_filter(self.planes * self.planes)

    def _planes(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> float64 (4, h, w): R, G, B, Y with the border shaved."""
        y = rgb_to_y(img, rounded=True)
        p = torch.cat([img.double(), y.double()])
        s = self.shave
        return p[..., s:p.shape[-2] - s, s:p.shape[-1] - s] if s else p

    def score(self, sr: torch.Tensor, ssim: bool = True) -> dict:
        a = self._planes(sr)
        d = (a - self.planes) ** 2
        out = {"psnr_rgb": _psnr(d[:3].mean().item()), "psnr_y": _psnr(d[3].mean().item())}
        if ssim and self.ssim:
            mu_a = _gauss_filter(a)
            sq_a = _gauss_filter(a * a)
            cross = _gauss_filter(a * self.planes)
            mu_ab = mu_a * self.mu
            var_a, var_b = sq_a - mu_a * mu_a, self.sq - self.mu * self.mu
            cov = cross - mu_ab
            m = ((2 * mu_ab + self.C1) * (2 * cov + self.C2)) / (
                (mu_a * mu_a + self.mu * self.mu + self.C1) * (var_a + var_b + self.C2))
            per_plane = m.flatten(1).mean(1)
            out["ssim_rgb"] = per_plane[:3].mean().item()
            out["ssim_y"] = per_plane[3].item()
        elif ssim:
            out["ssim_rgb"] = out["ssim_y"] = float("nan")
        return out


def _psnr(mse: float) -> float:
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)
