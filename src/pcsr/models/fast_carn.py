"""CARN rebuilt for reduced-precision inference: the same function, far less memory traffic.

Profiled in bf16 on a CPU, the plain module spends more time moving data than computing: every
cascading step concatenates all earlier outputs again (torch.cat of strided channels_last
tensors: a third of the backbone), ReLUs run as separate passes over memory, and each batch
norm is its own pass. Here
- nothing is concatenated: a 1x1 fusion of [x0, x1, ..., xk] is the sum of one product per input,
  so each new output is multiplied once by the weight blocks of every later fusion it feeds and
  added into their accumulators by the matrix product itself (beta = 1), and a fusion's ReLU is
  the pass that reads its accumulator out as the next convolution's input;
- batch norm is folded into the fusion weights (eval mode only);
- 3x3 convolutions run with the ReLU fused, and the residual unit's 1x1 convolution with its
  addition and ReLU (oneDNN post-ops) where the CPU build has them;
- weights are converted to the compute dtype once, not at every call by autocast.
The tail of an "original" CARN runs unchanged. Training and fp32 inference use the plain module,
which stays bit-identical to the reference checkpoints.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

_conv_relu_op = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)


@functools.lru_cache(maxsize=None)
def fused_conv_works(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused convolutions run in `dtype` on this CPU: a private op of torch, and in
    bf16 it needs AVX512 or AVX-NE-CONVERT (an AVX2-only CPU raises). Probed once per dtype."""
    if _conv_relu_op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones(1, 2, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w, b = torch.ones(2, 2, 1, 1, dtype=dtype), torch.zeros(2, dtype=dtype)
        y = _conv_relu_op(x, w, b, [0, 0], [1, 1], [1, 1], 1, "relu", [], "")
        z = _conv_relu_op.binary(x, y, w, b, [0, 0], [1, 1], [1, 1], 1, "add", None, "relu", [], "")
        return bool((y == 2).all()) and bool((z == 4).all())
    except (RuntimeError, NotImplementedError):
        return False


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
        self.fused = self.w.device.type == "cpu" and fused_conv_works(dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return _conv_relu_op(x, self.w, self.b, self.pad, [1, 1], [1, 1], self.groups,
                                 "relu" if self.relu else "none", [], "")
        y = F.conv2d(x, self.w, self.b, padding=self.pad, groups=self.groups)
        return F.relu_(y) if self.relu else y


class _Cascade:
    """The fusions of one cascade, k = 0..K-1, fusion k taking the concatenation of inputs 0..k+1
    (each nf channels), with batch norm folded in. `start(x0)` returns the accumulators (pixels,
    K * nf), `add(acc, i, xi)` adds input i's share to every fusion that takes it, `take(acc, k)` is
    fusion k after its ReLU, as contiguous pixel rows."""

    def __init__(self, fuses, nf: int, dtype: torch.dtype):
        ws, bs = [], []
        for f in fuses:
            conv, bn = f[0], f[1]
            w = conv.weight.detach().double().flatten(1)
            b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
            scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            ws.append(w * scale[:, None])
            bs.append((b - bn.running_mean.double()) * scale + bn.bias.detach().double())
        self.nf, self.k = nf, len(fuses)
        self.bias = torch.cat(bs).to(dtype)
        # input i feeds fusions max(i - 1, 0)..K-1: their weight blocks for it, side by side, (nf, n * nf)
        self.blocks = [torch.cat([ws[k][:, i * nf:(i + 1) * nf] for k in range(max(i - 1, 0), self.k)]).t()
                       .contiguous().to(dtype) for i in range(self.k + 1)]

    def start(self, x_rows: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x_rows, self.blocks[0])

    def add(self, acc: torch.Tensor, i: int, rows: torch.Tensor) -> None:
        acc[:, (i - 1) * self.nf:].addmm_(rows, self.blocks[i])

    def take(self, acc: torch.Tensor, k: int) -> torch.Tensor:
        return torch.relu(acc[:, k * self.nf:(k + 1) * self.nf])


class _Residual:
    """relu(x + 1x1 convolution of h): the end of CARN's residual unit, fused where oneDNN can."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype):
        self.w = conv.weight.detach().to(dtype).contiguous()
        self.b = conv.bias.detach().to(dtype)
        self.fused = self.w.device.type == "cpu" and fused_conv_works(dtype)

    def __call__(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return _conv_relu_op.binary(h, x, self.w, self.b, [0, 0], [1, 1], [1, 1], 1, "add", None, "relu", [], "")
        return F.conv2d(h, self.w, self.b).add_(x).relu_()


class _Block:
    """A cascading block: the shared residual unit three times, each output fused with all before."""

    def __init__(self, block, dtype):
        body = block.unit.body
        self.conv1, self.conv2 = _Conv(body[0], dtype, relu=True), _Conv(body[2], dtype, relu=True)
        self.residual = _Residual(body[4], dtype)
        self.cascade = _Cascade(block.fuse, body[0].out_channels, dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        acc = self.cascade.start(_rows(x))
        out = x
        for i in range(self.cascade.k):
            unit = self.residual(self.conv2(self.conv1(out)), out)
            self.cascade.add(acc, i + 1, _rows(unit))
            out = _image(self.cascade.take(acc, i), n, h, w)
        return out


class FastCARN(nn.Module):
    """The inference form of a CARN backbone in `dtype` (eval-mode batch norm)."""

    def __init__(self, carn, dtype: torch.dtype):
        super().__init__()
        self.cfg, self.scale, self.out_channels, self.dtype = carn.cfg, carn.scale, carn.out_channels, dtype
        self.entry = _Conv(carn.entry, dtype, relu=False)
        self.blocks = [_Block(b, dtype) for b in carn.blocks]
        self.cascade = _Cascade(carn.fuse, carn.cfg.nf, dtype)
        self._flops, self._radius = carn.flops, carn.receptive_radius
        if carn.scale:
            self.upsample, self.exit = carn.upsample, carn.exit

    def flops(self, h: int, w: int) -> int:
        return self._flops(h, w)

    @property
    def receptive_radius(self) -> int:
        return self._radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        n, _, h, w = x.shape
        out = self.entry(x)
        acc = self.cascade.start(_rows(out))
        for i, block in enumerate(self.blocks):
            self.cascade.add(acc, i + 1, _rows(block(out)))
            out = _image(self.cascade.take(acc, i), n, h, w)
        if self.scale:
            out = self.exit(self.upsample(out))
        return out
