"""What every backbone is: a CNN that turns an LR image into LR features (scale None), or, given a
scale, into a complete "original" SR model with its own tail.

FLOPs and the receptive radius come from one generic implementation that watches a forward pass
of the backbone on a small input (`measure`): every convolution, transposed convolution, batch
norm and PReLU it calls is counted in the paper's convention (pcsr.flops), and the radius of LR
context is the sum of the convolutions' radii, each in LR pixels at the resolution it runs at
(branches summed, so it never falls short: tiling relies on it). A backbone overrides only where
its structure needs it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ... import flops as fl

PROBE = 8  # LR side of the probe input; every count is a multiple of its area


@dataclass(frozen=True)
class Measured:
    flops_per_lr_pixel: int
    receptive_radius: int


def measure(module: nn.Module, channels: int = 3) -> Measured:
    """Count FLOPs and the receptive radius of `module` on a PROBE x PROBE input (on the meta device
    where possible: no arithmetic is done, only shapes flow)."""
    total, radius = 0, 0.0

    def hook(m, inputs, output):
        nonlocal total, radius
        x = inputs[0]
        h_out, w_out = output.shape[-2:]
        per_lr = PROBE / x.shape[-2]  # LR pixels per pixel of this layer's input
        if isinstance(m, nn.ConvTranspose2d):
            total += fl.conv(m, h_out, w_out)
            radius += (m.kernel_size[0] - 1) * m.dilation[0] / m.stride[0] * per_lr
        elif isinstance(m, nn.Conv2d):
            total += fl.conv(m, h_out, w_out)
            radius += (m.kernel_size[0] // 2) * m.dilation[0] * per_lr
        elif isinstance(m, nn.BatchNorm2d):
            total += fl.batchnorm(output.shape[1], h_out, w_out)
        elif isinstance(m, nn.PReLU):
            total += fl.prelu(output.shape[1], h_out, w_out)

    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.PReLU)
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, kinds)]
    was_training = module.training
    try:
        module.eval()
        first = next(module.parameters(), None)
        like = {} if first is None else {"device": first.device, "dtype": first.dtype}
        with torch.no_grad():
            module(torch.zeros(1, channels, PROBE, PROBE, **like))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    area = PROBE * PROBE
    if total % area:
        raise ValueError(f"{type(module).__name__}: its FLOPs are not proportional to the LR area")
    return Measured(total // area, math.ceil(radius - 1e-9))


class Backbone(nn.Module):
    """Features at LR resolution (scale None), or an SR image (scale given)."""

    out_channels: int
    scale: int | None
    _measured: Measured | None = None

    def _measure(self) -> Measured:
        if self._measured is None:
            object.__setattr__(self, "_measured", measure(self))
        return self._measured

    def flops(self, h: int, w: int) -> int:
        """FLOPs of one h x w LR image, the paper's convention."""
        return self._measure().flops_per_lr_pixel * h * w

    @property
    def receptive_radius(self) -> int:
        """LR pixels of context on each side that can change the output of a pixel."""
        return self._measure().receptive_radius


def shuffle_stages(nf: int, scale: int, groups: int, act) -> list[nn.Module]:
    """Sub-pixel upsampling: x2 stages for powers of two, a single stage otherwise."""
    factors = [2] * int(math.log2(scale)) if scale & (scale - 1) == 0 else [scale]
    layers: list[nn.Module] = []
    for r in factors:
        layers += [nn.Conv2d(nf, nf * r * r, 3, padding=1, groups=groups), act(), nn.PixelShuffle(r)]
    return layers
