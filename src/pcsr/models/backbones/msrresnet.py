"""MSRResNet (BasicSR's SRResNet without batch norm): leaky ReLU 0.1, a bilinear skip in the tail."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from .base import Backbone, shuffle_stages


@dataclass(frozen=True)
class MSRResNetConfig:
    nf: int = 64
    nb: int = 16


class ResidualBlockNoBN(nn.Module):
    def __init__(self, nf):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv2 = nn.Conv2d(nf, nf, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class MSRResNet(Backbone):
    def __init__(self, cfg: MSRResNetConfig, scale: int | None = None):
        super().__init__()
        self.cfg, self.scale = cfg, scale
        nf = cfg.nf
        self.conv_first = nn.Conv2d(3, nf, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(nf) for _ in range(cfg.nb)])
        self.out_channels = 3 if scale else nf
        if scale:
            self.upsample = nn.Sequential(*shuffle_stages(nf, scale, groups=1, act=lambda: nn.LeakyReLU(0.1)))
            self.conv_hr = nn.Conv2d(nf, nf, 3, padding=1)
            self.conv_last = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, x):
        out = self.body(F.leaky_relu(self.conv_first(x), 0.1))
        if not self.scale:
            return out
        out = self.upsample(out)
        out = self.conv_last(F.leaky_relu(self.conv_hr(out), 0.1))
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
