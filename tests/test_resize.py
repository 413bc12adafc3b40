"""MATLAB bicubic imresize: oracle parity, shapes, and hand-computed weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pcsr.resize import imresize, resize_matrix

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PARITY = SHARED / "official" / "parity_crop.npz"


def cubic(x: float) -> float:
    """Independent scalar copy of the a=-0.5 cubic kernel."""
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def test_matches_reference_lr():
    if not PARITY.exists():
        pytest.skip(f"oracle data not available: {PARITY} is missing")
    d = np.load(PARITY)
    hr = torch.from_numpy(d["hr"]).permute(2, 0, 1).float() / 255
    lr = torch.from_numpy(d["lr"])
    out = imresize(hr, 0.25)
    assert out.shape == lr.shape
    assert out.dtype == torch.float32
    assert (out - lr).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "scale, expected",
    [
        (1 / 4, (6, 8)),
        (1 / 3, (8, 10)),
        (1 / 2, (12, 15)),
        (2, (48, 60)),
        (3, (72, 90)),
        (4, (96, 120)),
    ],
)
def test_output_shape_for_scale(scale, expected):
    img = torch.rand(3, 24, 30)
    assert imresize(img, scale).shape == (3, *expected)


def test_output_shape_for_size():
    img = torch.rand(2, 3, 24, 30)
    assert imresize(img, size=(17, 41)).shape == (2, 3, 17, 41)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3])
def test_constant_stays_constant(scale):
    img = torch.full((3, 13, 19), 0.37, dtype=torch.float64)
    out = imresize(img, scale)
    assert torch.allclose(out, torch.full_like(out, 0.37), atol=1e-12)
    out = imresize(img, size=(7, 40))
    assert torch.allclose(out, torch.full_like(out, 0.37), atol=1e-12)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3])
def test_matrix_rows_sum_to_one(scale):
    mat = resize_matrix(10, int(np.ceil(10 * scale)), scale)
    assert torch.allclose(mat.sum(dim=1), torch.ones(mat.shape[0], dtype=mat.dtype), atol=1e-12)


def test_upscale_x2_interior_weights_by_hand():
    # Output pixel 5 (1-based): u = 5/2 + 0.25 = 2.75, taps at input 1..4 (1-based)
    # sit at offsets 1.75, 0.75, -0.25, -1.25.
    weights = [cubic(o) for o in (1.75, 0.75, -0.25, -1.25)]
    assert weights == pytest.approx([-0.0234375, 0.2265625, 0.8671875, -0.0703125], abs=1e-15)
    row = torch.tensor([[[3.0, -1.0, 7.0, 2.0, 5.0, 4.0, 0.5, 9.0]]], dtype=torch.float64)
    out = imresize(row, size=(1, 16))
    expected = sum(w * row[0, 0, i].item() for i, w in enumerate(weights))
    assert out[0, 0, 4].item() == pytest.approx(expected, abs=1e-12)


def test_upscale_x2_border_mirrors_like_matlab():
    # Output pixel 1: u = 0.75, taps at input -1, 0, 1, 2 (1-based) with offsets
    # 1.75, 0.75, -0.25, -1.25; MATLAB mirrors -1 -> 2 and 0 -> 1.
    row = torch.tensor([[[3.0, -1.0, 7.0, 2.0]]], dtype=torch.float64)
    out = imresize(row, size=(1, 8))
    x1, x2 = 3.0, -1.0
    expected = cubic(1.75) * x2 + cubic(0.75) * x1 + cubic(-0.25) * x1 + cubic(-1.25) * x2
    assert out[0, 0, 0].item() == pytest.approx(expected, abs=1e-12)


def test_downscale_x2_antialias_weights_by_hand():
    # Output pixel 3 (1-based): u = 6 + 0.5 * (1 - 2) = 5.5; the kernel is
    # 0.5 * cubic(0.5 * x), nonzero for inputs 2..9 at offsets +-0.5, +-1.5, +-2.5, +-3.5.
    g = torch.Generator().manual_seed(0)
    row = torch.rand(1, 1, 16, generator=g, dtype=torch.float64)
    out = imresize(row, size=(1, 8))
    expected = 0.0
    for i in range(2, 10):
        expected += 0.5 * cubic(0.5 * (5.5 - i)) * row[0, 0, i - 1].item()
    assert out[0, 0, 2].item() == pytest.approx(expected, abs=1e-12)


def test_antialias_only_matters_when_downscaling():
    img = torch.rand(1, 12, 12, dtype=torch.float64)
    assert not torch.allclose(imresize(img, 0.5), imresize(img, 0.5, antialias=False))
    assert torch.equal(imresize(img, 2), imresize(img, 2, antialias=False))


def test_batched_matches_unbatched():
    imgs = torch.rand(2, 3, 20, 24)
    batched = imresize(imgs, 1 / 3)
    for i in range(2):
        assert torch.allclose(batched[i], imresize(imgs[i], 1 / 3), atol=1e-6)


def test_dtype_preserved():
    img = torch.rand(3, 16, 16, dtype=torch.float64)
    assert imresize(img, 0.5).dtype == torch.float64
    assert imresize(img.to(torch.bfloat16), 2).dtype == torch.bfloat16


def test_bad_arguments():
    img = torch.rand(3, 8, 8)
    with pytest.raises(ValueError):
        imresize(img)
    with pytest.raises(ValueError):
        imresize(img, 0.5, size=(4, 4))
    with pytest.raises(ValueError):
        imresize(img, -1.0)
    with pytest.raises(TypeError):
        imresize(torch.zeros(3, 8, 8, dtype=torch.uint8), 0.5)
