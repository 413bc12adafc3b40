"""CARN with CARN-M's efficient residual blocks (Ahn et al. 2018), as the PCSR paper uses it: each
cascading block applies one residual unit three times (shared weights) with cascading 1x1
fusions (with batch norm) over everything before. The "original" tail is pixel-shuffle stages."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import WeightsError
from .base import Backbone, shuffle_stages


@dataclass(frozen=True)
class CARNConfig:
    nf: int = 64
    groups: int = 4


class ResidualUnit(nn.Module):
    """CARN-M's efficient residual block: two grouped 3x3 convolutions and a 1x1 one."""

    def __init__(self, nf, groups):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(nf, nf, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
            nn.Conv2d(nf, nf, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
            nn.Conv2d(nf, nf, 1),
        )

    def forward(self, x):
        return F.relu(self.body(x) + x)


def _fuse(cin, nf):
    """1x1 convolution over the cascade's concatenated outputs, with batch norm."""
    return nn.Sequential(nn.Conv2d(cin, nf, 1, bias=False), nn.BatchNorm2d(nf), nn.ReLU(inplace=True))


class CascadingBlock(nn.Module):
    def __init__(self, nf, groups):
        super().__init__()
        self.unit = ResidualUnit(nf, groups)
        self.fuse = nn.ModuleList(_fuse(nf * (i + 2), nf) for i in range(3))

    def forward(self, x):
        cat, out = x, x
        for fuse in self.fuse:
            cat = torch.cat([cat, self.unit(out)], 1)
            out = fuse(cat)
        return out


class CARN(Backbone):
    def __init__(self, cfg: CARNConfig, scale: int | None = None):
        super().__init__()
        self.cfg, self.scale = cfg, scale
        nf, g = cfg.nf, cfg.groups
        if nf % g:
            raise WeightsError(f"carn: nf={nf} is not divisible by groups={g}")
        self.entry = nn.Conv2d(3, nf, 3, padding=1)
        self.blocks = nn.ModuleList(CascadingBlock(nf, g) for _ in range(3))
        self.fuse = nn.ModuleList(_fuse(nf * (i + 2), nf) for i in range(3))
        self.out_channels = 3 if scale else nf
        if scale:
            self.upsample = nn.Sequential(*shuffle_stages(nf, scale, groups=g, act=nn.ReLU))
            self.exit = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, x):
        cat = out = self.entry(x)
        for block, fuse in zip(self.blocks, self.fuse):
            cat = torch.cat([cat, block(out)], 1)
            out = fuse(cat)
        if self.scale:
            out = self.exit(self.upsample(out))
        return out
