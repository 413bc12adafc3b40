"""PSNR / SSIM / Y conversion checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pcsr.metrics import psnr, rgb_to_y, ssim

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2


def _rand_image(seed: int, shape=(3, 32, 32)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


def test_psnr_by_hand():
    a = torch.full((3, 8, 8), 100.0)
    b = a.clone()
    d, k = 10.0, 5
    for n, (c, y, x) in enumerate([(0, 1, 1), (1, 2, 5), (2, 7, 0), (0, 4, 4), (1, 6, 3)][:k]):
        b[c, y, x] += d if n % 2 else -d
    mse = k * d * d / (3 * 8 * 8)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-12)
    assert psnr(a.to(torch.uint8), b.to(torch.uint8)) == pytest.approx(psnr(a, b), abs=1e-12)
    assert psnr(a.double() / 255, b.double() / 255, data_range=1.0) == pytest.approx(psnr(a, b), abs=1e-9)


def test_psnr_identical_is_inf():
    a = _rand_image(1)
    assert psnr(a, a.clone()) == float("inf")


def test_shave_removes_border():
    a = torch.full((3, 16, 16), 50.0)
    b = a.clone()
    b[:, :2, :] = 0
    b[:, :, -2:] = 255
    assert math.isfinite(psnr(a, b))
    assert psnr(a, b, shave=1) < float("inf")
    assert psnr(a, b, shave=2) == float("inf")


@pytest.mark.parametrize(
    "rgb, y",
    [
        ((0, 0, 0), 16.0),
        ((255, 255, 255), 235.0),
        ((255, 0, 0), 16 + 65.481),
        ((0, 255, 0), 16 + 128.553),
        ((0, 0, 255), 16 + 24.966),
    ],
)
def test_y_of_primaries(rgb, y):
    img = torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    out = rgb_to_y(img)
    assert out.shape == (1, 2, 2)
    assert out.dtype == torch.float64
    assert torch.allclose(out, torch.full_like(out, y), atol=1e-9)
    assert torch.equal(rgb_to_y(img, rounded=True), torch.full_like(out, float(round(y))))


def test_y_rounded_values():
    img = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.uint8).T.reshape(3, 1, 3)
    assert rgb_to_y(img, rounded=True).flatten().tolist() == [81.0, 145.0, 41.0]


def test_psnr_y_uses_rounded_y():
    # Y(255,0,0) = 81.481 and Y(254,0,0) = 81.22..., both round to 81.
    a = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 4, 4)
    b = torch.tensor([254, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 4, 4)
    assert math.isfinite(psnr(a, b))
    assert psnr(a, b, y_channel=True) == float("inf")


def test_y_channel_on_gray_uses_values_as_is():
    a = _rand_image(2, (1, 16, 16)).double()
    b = _rand_image(3, (1, 16, 16)).double()
    assert psnr(a, b, y_channel=True) == psnr(a, b)
    assert ssim(a, b, y_channel=True) == ssim(a, b)


@pytest.mark.parametrize("y_channel", [False, True])
def test_ssim_self_is_one(y_channel):
    a = _rand_image(4)
    assert ssim(a, a.clone(), y_channel=y_channel) == 1.0
    assert ssim(a, a.clone(), shave=4, y_channel=y_channel) == 1.0


def test_ssim_constant_images_by_hand():
    va, vb = 100.0, 120.0
    a = torch.full((1, 16, 16), va)
    b = torch.full((1, 16, 16), vb)
    expected = (2 * va * vb + C1) / (va**2 + vb**2 + C1)
    assert ssim(a, b) == pytest.approx(expected, rel=1e-12)

    ca, cb = (10.0, 200.0, 90.0), (30.0, 190.0, 150.0)
    a = torch.tensor(ca).view(3, 1, 1).expand(3, 16, 16)
    b = torch.tensor(cb).view(3, 1, 1).expand(3, 16, 16)
    expected = sum((2 * x * y + C1) / (x * x + y * y + C1) for x, y in zip(ca, cb)) / 3
    assert ssim(a, b) == pytest.approx(expected, rel=1e-12)


def test_ssim_matches_brute_force_windows():
    # Independent numpy loop over every 'valid' 11x11 window.
    a = _rand_image(5, (1, 12, 13)).double()
    b = (a + torch.randn(1, 12, 13, generator=torch.Generator().manual_seed(6)) * 20).clamp(0, 255)
    x1 = np.arange(-5, 6)
    g = np.exp(-(x1**2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()
    an, bn = a[0].numpy(), b[0].numpy()
    vals = []
    for i in range(12 - 10):
        for j in range(13 - 10):
            pa, pb = an[i : i + 11, j : j + 11], bn[i : i + 11, j : j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va = (w * pa * pa).sum() - ma * ma
            vb = (w * pb * pb).sum() - mb * mb
            cov = (w * pa * pb).sum() - ma * mb
            vals.append(((2 * ma * mb + C1) * (2 * cov + C2)) / ((ma * ma + mb * mb + C1) * (va + vb + C2)))
    assert ssim(a, b) == pytest.approx(float(np.mean(vals)), abs=1e-12)


def test_ssim_decreases_with_noise():
    g = torch.Generator().manual_seed(7)
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    base = (128 + 60 * torch.sin(xx / 5) * torch.cos(yy / 7)).expand(3, 48, 48)
    noise = torch.randn(3, 48, 48, generator=g)
    scores = [ssim(base, base + s * noise) for s in (0.0, 2.0, 10.0, 30.0)]
    assert scores[0] == 1.0
    assert scores[0] > scores[1] > scores[2] > scores[3]


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))
    with pytest.raises(ValueError):
        ssim(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))  # smaller than the window
