"""CARN rebuilt for reduced-precision inference: the same function, half the memory traffic.

Profiled in bf16 on a CPU, the plain module spends more time moving data than computing: every
cascading step concatenates all earlier outputs again (torch.cat of strided channels_last
tensors: a third of the backbone), ReLUs run as separate passes over memory, and each batch
norm is its own pass. Here
- each cascade writes its outputs once into the column blocks of one (pixels, 1 + 4*nf) buffer,
  and the 1x1 fusion convolution is a matrix product on a column prefix of that buffer (no copy;
  a column of ones carries the bias);
- batch norm is folded into the fusion weights (eval mode only);
- 3x3 convolutions run with the ReLU fused, and the residual unit's 1x1 convolution with its
  addition and ReLU (oneDNN post-ops) where the CPU build has them;
- weights are converted to the compute dtype once, not at every call by autocast.
The tail of an "original" CARN runs unchanged. Training and fp32 inference use the plain module,
which stays bit-identical to the reference checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_conv_relu_op = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) channels_last -> its (N*h*w, C) pixel rows, a view."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _image(rows: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """(N*h*w, C) contiguous rows -> (N, C, h, w) channels_last, a view."""
    return rows.view(n, h, w, -1).permute(0, 3, 1, 2)


class _Conv:
    """A 3x3 convolution's weights in the compute dtype, optionally followed by a ReLU."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, relu: bool):
        self.w = conv.weight.detach().to(dtype).contiguous()
        self.b = conv.bias.detach().to(dtype) if conv.bias is not None else None
        self.groups, self.pad, self.relu = conv.groups, list(conv.padding), relu

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if _conv_relu_op is not None and x.device.type == "cpu":
            return _conv_relu_op(x, self.w, self.b, self.pad, [1, 1], [1, 1], self.groups,
                                 "relu" if self.relu else "none", [], "")
        y = F.conv2d(x, self.w, self.b, padding=self.pad, groups=self.groups)
        return F.relu_(y) if self.relu else y


class _Dense:
    """A 1x1 convolution (batch norm folded in when given) as one matrix product on pixel rows whose
    first column is all ones: the bias is a weight row, so no pass over memory adds it."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, bn: nn.BatchNorm2d | None = None):
        w = conv.weight.detach().double().flatten(1)
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        if bn is not None:
            s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            w, b = w * s[:, None], (b - bn.running_mean.double()) * s + bn.bias.detach().double()
        self.wt = torch.cat([b[None], w.t()]).contiguous().to(dtype)  # (1 + in, out)

    def __call__(self, rows_with_ones: torch.Tensor) -> torch.Tensor:
        return torch.mm(rows_with_ones, self.wt)


class _Residual:
    """relu(x + 1x1 convolution of h): the end of CARN's residual unit, fused where oneDNN can."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype):
        self.w = conv.weight.detach().to(dtype).contiguous()
        self.b = conv.bias.detach().to(dtype)

    def __call__(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if _conv_relu_op is not None and h.device.type == "cpu":
            return _conv_relu_op.binary(h, x, self.w, self.b, [0, 0], [1, 1], [1, 1], 1, "add", None, "relu", [], "")
        return F.conv2d(h, self.w, self.b).add_(x).relu_()


class _Block:
    """A cascading block: the shared residual unit three times, each output fused with all before."""

    def __init__(self, block, dtype):
        body = block.unit.body
        self.conv1, self.conv2 = _Conv(body[0], dtype, relu=True), _Conv(body[2], dtype, relu=True)
        self.residual = _Residual(body[4], dtype)
        self.fuse = [_Dense(f[0], dtype, bn=f[1]) for f in block.fuse]

    def __call__(self, x: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
        """buf: (pixels, 1 + 4 * nf) rows whose first column holds ones."""
        n, c, h, w = x.shape
        buf[:, 1:1 + c] = _rows(x)
        out = x
        for i, fuse in enumerate(self.fuse):
            unit = self.residual(self.conv2(self.conv1(out)), out)
            buf[:, 1 + (i + 1) * c:1 + (i + 2) * c] = _rows(unit)
            out = _image(fuse(buf[:, :1 + (i + 2) * c]).relu_(), n, h, w)
        return out


class FastCARN(nn.Module):
    """The inference form of a CARN backbone in `dtype` (eval-mode batch norm)."""

    def __init__(self, carn, dtype: torch.dtype):
        super().__init__()
        self.cfg, self.scale, self.out_channels, self.dtype = carn.cfg, carn.scale, carn.out_channels, dtype
        self.entry = _Conv(carn.entry, dtype, relu=False)
        self.blocks = [_Block(b, dtype) for b in carn.blocks]
        self.fuse = [_Dense(f[0], dtype, bn=f[1]) for f in carn.fuse]
        self._flops, self._radius = carn.flops, carn.receptive_radius
        if carn.scale:
            self.upsample, self.exit = carn.upsample, carn.exit

    def flops(self, h: int, w: int) -> int:
        return self._flops(h, w)

    @property
    def receptive_radius(self) -> int:
        return self._radius

    def _buffer(self, rows: int, nf: int, device) -> torch.Tensor:
        """(rows, 1 + 4 nf) pixel rows, first column ones. A bf16 matrix product over a column prefix
        may read a few columns past it (times zero weights), so everything it can reach holds zeros
        until written, not stale bytes that may be NaN; a spare last row catches reads past the end."""
        buf = torch.zeros(rows + 1, 1 + 4 * nf, dtype=self.dtype, device=device)
        buf[:, 0] = 1
        return buf[:rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        n, _, h, w = x.shape
        nf = self.cfg.nf
        out = self.entry(x)
        cascade, inner = self._buffer(n * h * w, nf, x.device), self._buffer(n * h * w, nf, x.device)
        cascade[:, 1:1 + nf] = _rows(out)
        for i, (block, fuse) in enumerate(zip(self.blocks, self.fuse)):
            cascade[:, 1 + (i + 1) * nf:1 + (i + 2) * nf] = _rows(block(out, inner))
            out = _image(fuse(cascade[:, :1 + (i + 2) * nf]).relu_(), n, h, w)
        if self.scale:
            out = self.exit(self.upsample(out))
        return out
