"""Analytic FLOP counting in the paper's convention, so our figures compare with its tables.

Convolution and transposed convolution: 2*kh*kw*(Cin/groups)*Cout per output position (for a
transposed convolution the positions are those of its output); linear: 2*in*out per row; batch
norm 2 and PReLU 1 per element; ReLU, pixel shuffle, sampling and residual additions are free.
"""
from __future__ import annotations

from torch import nn


def conv(m: nn.Conv2d | nn.ConvTranspose2d, h_out: int, w_out: int) -> int:
    kh, kw = m.kernel_size
    return 2 * kh * kw * (m.in_channels // m.groups) * m.out_channels * h_out * w_out


def linear(fan_in: int, fan_out: int, rows: int = 1) -> int:
    return 2 * fan_in * fan_out * rows


def batchnorm(channels: int, h: int, w: int) -> int:
    return 2 * channels * h * w


def prelu(channels: int, h: int, w: int) -> int:
    return channels * h * w


def heavy_fraction(counts: list[int] | None) -> float | None:
    """The share of output pixels on the costliest upsampler, from per-class pixel counts (cheapest
    first); None for a model without classes. The one definition every report uses."""
    if not counts:
        return None
    return counts[-1] / max(1, sum(counts))
