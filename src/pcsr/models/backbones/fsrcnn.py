"""FSRCNN (Dong et al. 2016) as in the reference checkpoints: the m mapping convolutions share one
PReLU at their end; the "original" tail is a 9x9 transposed convolution."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import Backbone


@dataclass(frozen=True)
class FSRCNNConfig:
    d: int = 56
    s: int = 12
    m: int = 4


class FSRCNN(Backbone):
    def __init__(self, cfg: FSRCNNConfig, scale: int | None = None):
        super().__init__()
        self.cfg, self.scale = cfg, scale
        d, s, m = cfg.d, cfg.s, cfg.m
        self.head = nn.Sequential(nn.Conv2d(3, d, 5, padding=2), nn.PReLU())
        self.shrink = nn.Sequential(nn.Conv2d(d, s, 1), nn.PReLU())
        self.mapping = nn.Sequential(*[nn.Conv2d(s, s, 3, padding=1) for _ in range(m)], nn.PReLU())
        self.expand = nn.Sequential(nn.Conv2d(s, d, 1), nn.PReLU())
        self.out_channels = 3 if scale else d
        self.tail = None
        if scale:  # padding chosen, as in the reference checkpoints, so that the output is exactly scale x
            pad = (10 - scale) // 2
            self.tail = nn.ConvTranspose2d(d, 3, 9, stride=scale, padding=pad, output_padding=2 * pad - 9 + scale)

    def forward(self, x):
        x = self.expand(self.mapping(self.shrink(self.head(x))))
        return self.tail(x) if self.tail is not None else x
