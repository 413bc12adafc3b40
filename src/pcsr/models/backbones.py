"""Backbones: CNNs that turn an LR image into LR features, or, given a scale, into a complete
"original" SR model with the tail it was published with.

Each backbone reports its FLOPs analytically (the paper's convention, see `pcsr.flops`) and the
radius of LR context it needs, which tiling uses to crop tiles exactly. To add a backbone, write
one class here with a config dataclass and add it to BACKBONES.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .. import flops as fl
from ..errors import WeightsError


class Backbone(nn.Module):
    """Features at LR resolution (scale None), or an SR image (scale given)."""

    out_channels: int
    scale: int | None

    def flops(self, h: int, w: int) -> int:
        raise NotImplementedError

    @property
    def receptive_radius(self) -> int:
        """LR pixels of context on each side that change the output of a pixel."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- FSRCNN
@dataclass(frozen=True)
class FSRCNNConfig:
    d: int = 56
    s: int = 12
    m: int = 4


class FSRCNN(Backbone):
    """FSRCNN as in the reference checkpoints: the m mapping convolutions share one PReLU at the end."""

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

    def flops(self, h, w):
        d, s, m = self.cfg.d, self.cfg.s, self.cfg.m
        n = fl.conv(self.head[0], h, w) + fl.prelu(d, h, w)
        n += fl.conv(self.shrink[0], h, w) + fl.prelu(s, h, w)
        n += sum(fl.conv(c, h, w) for c in self.mapping[:m]) + fl.prelu(s, h, w)
        n += fl.conv(self.expand[0], h, w) + fl.prelu(d, h, w)
        if self.tail is not None:
            n += fl.conv(self.tail, h * self.scale, w * self.scale)
        return n

    @property
    def receptive_radius(self):
        return 2 + self.cfg.m + (2 if self.scale else 0)


# ----------------------------------------------------------------------------- CARN
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
    """One residual unit applied three times (shared weights, as in CARN-M) with cascading fusions."""

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
            self.upsample = nn.Sequential(*_shuffle_stages(nf, scale, groups=g, act=nn.ReLU))
            self.exit = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, x):
        cat = out = self.entry(x)
        for block, fuse in zip(self.blocks, self.fuse):
            cat = torch.cat([cat, block(out)], 1)
            out = fuse(cat)
        if self.scale:
            out = self.exit(self.upsample(out))
        return out

    def flops(self, h, w):
        nf = self.cfg.nf
        unit = sum(fl.conv(c, h, w) for c in self.blocks[0].unit.body if isinstance(c, nn.Conv2d))
        fuses = sum(fl.conv(f[0], h, w) + fl.batchnorm(nf, h, w) for f in self.fuse)
        n = fl.conv(self.entry, h, w) + 3 * (3 * unit + fuses) + fuses
        if self.scale:
            n += _shuffle_flops(self.upsample, h, w) + fl.conv(self.exit, h * self.scale, w * self.scale)
        return n

    @property
    def receptive_radius(self):
        return 1 + 3 * 3 * 2 + (2 if self.scale else 0)


# ----------------------------------------------------------------------------- MSRResNet
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
    """SRResNet without batch norm (BasicSR's MSRResNet): leaky ReLU 0.1, bilinear skip in the tail."""

    def __init__(self, cfg: MSRResNetConfig, scale: int | None = None):
        super().__init__()
        self.cfg, self.scale = cfg, scale
        nf = cfg.nf
        self.conv_first = nn.Conv2d(3, nf, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(nf) for _ in range(cfg.nb)])
        self.out_channels = 3 if scale else nf
        if scale:
            self.upsample = nn.Sequential(*_shuffle_stages(nf, scale, groups=1, act=lambda: nn.LeakyReLU(0.1)))
            self.conv_hr = nn.Conv2d(nf, nf, 3, padding=1)
            self.conv_last = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, x):
        out = self.body(F.leaky_relu(self.conv_first(x), 0.1))
        if not self.scale:
            return out
        out = self.upsample(out)
        out = self.conv_last(F.leaky_relu(self.conv_hr(out), 0.1))
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)

    def flops(self, h, w):
        n = fl.conv(self.conv_first, h, w)
        n += sum(fl.conv(b.conv1, h, w) + fl.conv(b.conv2, h, w) for b in self.body)
        if self.scale:
            H, W = h * self.scale, w * self.scale
            n += _shuffle_flops(self.upsample, h, w) + fl.conv(self.conv_hr, H, W) + fl.conv(self.conv_last, H, W)
        return n

    @property
    def receptive_radius(self):
        return 1 + 2 * self.cfg.nb + (2 if self.scale else 0)


# ----------------------------------------------------------------------------- shared tails
def _shuffle_stages(nf, scale, groups, act):
    """Sub-pixel upsampling: x2 stages for powers of two, a single stage otherwise."""
    if scale & (scale - 1) == 0:
        factors = [2] * int(math.log2(scale))
    else:
        factors = [scale]
    layers = []
    for r in factors:
        layers += [nn.Conv2d(nf, nf * r * r, 3, padding=1, groups=groups), act(), nn.PixelShuffle(r)]
    return layers


def _shuffle_flops(seq, h, w):
    n = 0
    for m in seq:
        if isinstance(m, nn.Conv2d):
            n += fl.conv(m, h, w)
        elif isinstance(m, nn.PixelShuffle):
            h, w = h * m.upscale_factor, w * m.upscale_factor
    return n


# ----------------------------------------------------------------------------- the table
BACKBONES: dict[str, tuple[type, type[Backbone]]] = {
    "fsrcnn": (FSRCNNConfig, FSRCNN),
    "carn": (CARNConfig, CARN),
    "msrresnet": (MSRResNetConfig, MSRResNet),
}


def build_backbone(name: str, args: dict, scale: int | None = None) -> Backbone:
    if name not in BACKBONES:
        raise WeightsError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    cfg_cls, net_cls = BACKBONES[name]
    known = {f.name for f in fields(cfg_cls)}
    unknown = set(args) - known
    if unknown:
        raise WeightsError(f"backbone {name!r}: unknown options {sorted(unknown)}")
    return net_cls(cfg_cls(**args), scale)
