"""CARN rebuilt for inference: the same function, far less memory traffic.

Profiled on a CPU, the plain module spends much of its time moving data rather than computing:
every cascading step concatenates all earlier outputs again (torch.cat of strided channels_last
tensors, a large share of CARN-M's time), ReLUs and additions run as separate passes over memory,
and each batch norm is its own pass. Here
- nothing is concatenated: a 1x1 fusion of [x0, x1, ..., xk] is the sum of one product per input.
  Two ways to form that sum:
  * `_ChainedCascade`, wherever oneDNN's fused convolutions run (fp32 on any x86, bf16 on
    AVX512/AMX CPUs): each fusion is a chain of 1x1 convolutions, one per input, each adding into
    the partial sum in place (a oneDNN post-op), the last one with the ReLU fused;
  * `_AccumulatingCascade` elsewhere (CUDA, CPUs without the fused ops): each new output is
    multiplied once by the weight blocks of every later fusion it feeds and added into their
    accumulators by the matrix product itself (beta = 1); a fusion's ReLU is the pass that reads
    its accumulator out. Slower than the chain where both run: BLAS products are slow on these
    narrow shapes, and the ReLU passes over strided slices cost a pass each (BENCHMARKS.md);
- batch norm is folded into the fusion weights (eval mode only);
- 3x3 convolutions run with the ReLU fused, and the residual unit's 1x1 convolution with its
  addition and ReLU (oneDNN post-ops) where the CPU build has them;
- weights are converted to the compute dtype once, not at every call by autocast.
The upsampling tail of an "original" CARN runs its convolutions with their ReLUs fused. Training
uses the plain module; in fp32 the two agree to float rounding (a few 1e-7 relative), not bit for
bit.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels

_conv_relu_op = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
_conv_accumulate_op = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise_", None)


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


@functools.lru_cache(maxsize=None)
def accumulate_works(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's in-place convolution + add (`acc += conv(x)`, the ReLU after it fused) runs
    here in `dtype`: another private op of torch, probed once per dtype."""
    if _conv_accumulate_op is None or not fused_conv_works(dtype):
        return False
    try:
        acc = torch.full((1, 2, 3, 3), -3.0, dtype=dtype).contiguous(memory_format=torch.channels_last)
        x = torch.ones(1, 2, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
        _conv_accumulate_op.binary(acc, x, torch.ones(2, 2, 1, 1, dtype=dtype), None, [0, 0], [1, 1], [1, 1], 1,
                                   "add", 1.0, "relu", [], "")
        return bool((acc == 0).all())
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
        grouped = dtype == torch.float32 and conv.groups > 1 and self.w.device.type == "cpu"
        self.kernel = kernels.GroupedConv3x3(conv, relu) if grouped else None
        self.kernel_off = False  # set to time the same module without the kernel (benchmarks, tests)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None and not self.kernel_off and self.kernel.applies_to(x):
            return self.kernel(x, self.relu)  # self.relu, not the kernel's: the tail sets it later
        if self.fused:
            return _conv_relu_op(x, self.w, self.b, self.pad, [1, 1], [1, 1], self.groups,
                                 "relu" if self.relu else "none", [], "")
        y = F.conv2d(x, self.w, self.b, padding=self.pad, groups=self.groups)
        return F.relu_(y) if self.relu else y


def _folded_fusions(fuses) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight (out, in), bias) in float64 of each 1x1 fusion with its batch norm folded in."""
    out = []
    for f in fuses:
        conv, bn = f[0], f[1]
        w = conv.weight.detach().double().flatten(1)
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        out.append((w * scale[:, None], (b - bn.running_mean.double()) * scale + bn.bias.detach().double()))
    return out


class _AccumulatingCascade:
    """The fusions of one cascade, k = 0..K-1, fusion k taking the concatenation of inputs 0..k+1
    (each nf channels). `open(x0)` starts one pass: accumulators (pixels, K * nf); `push(x)` adds
    the next input's share to every fusion that takes it; `take(k)` is fusion k after its ReLU."""

    def __init__(self, fuses, nf: int, dtype: torch.dtype):
        folded = _folded_fusions(fuses)
        self.nf, self.k = nf, len(fuses)
        self.bias = torch.cat([b for _, b in folded]).to(dtype)
        # input i feeds fusions max(i - 1, 0)..K-1: their weight blocks for it, side by side, (nf, n * nf)
        self.blocks = [torch.cat([folded[k][0][:, i * nf:(i + 1) * nf] for k in range(max(i - 1, 0), self.k)]).t()
                       .contiguous().to(dtype) for i in range(self.k + 1)]

    def open(self, x0: torch.Tensor) -> "_AccumulatingCascade._Pass":
        return self._Pass(self, x0)

    class _Pass:
        def __init__(self, cascade, x0):
            self.c, self.shape, self.i = cascade, x0.shape, 0
            self.acc = torch.addmm(cascade.bias, _rows(x0), cascade.blocks[0])

        def push(self, x: torch.Tensor) -> None:
            self.i += 1
            self.acc[:, (self.i - 1) * self.c.nf:].addmm_(_rows(x), self.c.blocks[self.i])

        def take(self, k: int) -> torch.Tensor:
            n, _, h, w = self.shape
            return _image(torch.relu(self.acc[:, k * self.c.nf:(k + 1) * self.c.nf]), n, h, w)


class _ChainedCascade:
    """The same fusions as `_AccumulatingCascade`, fusion k as a chain of k + 2 fused 1x1
    convolutions (oneDNN post-ops: add the partial sum; the last one also its ReLU)."""

    def __init__(self, fuses, nf: int, dtype: torch.dtype):
        folded = _folded_fusions(fuses)
        self.nf, self.k = nf, len(fuses)
        self.weights = [[w[:, i * nf:(i + 1) * nf].reshape(nf, nf, 1, 1).to(dtype).contiguous()
                         for i in range(w.shape[1] // nf)] for w, _ in folded]
        self.biases = [b.to(dtype) for _, b in folded]
        self.in_place = accumulate_works(dtype)

    def open(self, x0: torch.Tensor) -> "_ChainedCascade._Pass":
        return self._Pass(self, x0)

    class _Pass:
        def __init__(self, cascade, x0):
            self.c, self.inputs = cascade, [x0]

        def push(self, x: torch.Tensor) -> None:
            self.inputs.append(x)

        def take(self, k: int) -> torch.Tensor:
            ws, last = self.c.weights[k], len(self.c.weights[k]) - 1
            acc = _conv_relu_op(self.inputs[0], ws[0], self.c.biases[k], [0, 0], [1, 1], [1, 1], 1, "none", [], "")
            for i in range(1, last + 1):
                relu = "relu" if i == last else None
                if self.c.in_place:  # acc += conv(x_i): no new tensor, so faster than the one below
                    _conv_accumulate_op.binary(acc, self.inputs[i], ws[i], None, [0, 0], [1, 1], [1, 1], 1, "add",
                                               1.0, relu, [], "")
                else:
                    acc = _conv_relu_op.binary(self.inputs[i], acc, ws[i], None, [0, 0], [1, 1], [1, 1], 1, "add",
                                               None, relu, [], "")
            return acc


def chained_fp32_works(device: torch.device) -> bool:
    """Whether the fp32 form has its fused convolutions here (else fp32 keeps the plain module)."""
    return device.type == "cpu" and fused_conv_works(torch.float32)


def make_cascade(fuses, nf: int, dtype: torch.dtype):
    """The chained form wherever oneDNN's fused convolutions run in `dtype`, else the accumulating
    one. Both round the same sums in the same order (bit-identical in bf16); the chain fuses the ReLU
    that the accumulating form runs as a pass over a strided slice."""
    chained = fuses[0][0].weight.device.type == "cpu" and fused_conv_works(dtype)
    return (_ChainedCascade if chained else _AccumulatingCascade)(fuses, nf, dtype)


class _Residual:
    """relu(x + 1x1 convolution of h): the end of CARN's residual unit, fused where oneDNN can."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype):
        self.w = conv.weight.detach().to(dtype).contiguous()
        self.b = conv.bias.detach().to(dtype)
        self.fused = self.w.device.type == "cpu" and fused_conv_works(dtype)
        self.in_place = self.fused and accumulate_works(dtype)

    def __call__(self, h: torch.Tensor, x: torch.Tensor, overwrite_x: bool = False) -> torch.Tensor:
        """`overwrite_x`: x is not needed afterwards, so the sum may go into it in place (no new
        tensor) where oneDNN's in-place accumulation runs."""
        if overwrite_x and self.in_place:
            return _conv_accumulate_op.binary(x, h, self.w, self.b, [0, 0], [1, 1], [1, 1], 1, "add", 1.0, "relu",
                                              [], "")
        if self.fused:
            return _conv_relu_op.binary(h, x, self.w, self.b, [0, 0], [1, 1], [1, 1], 1, "add", None, "relu", [], "")
        return F.conv2d(h, self.w, self.b).add_(x).relu_()


class _Block:
    """A cascading block: the shared residual unit three times, each output fused with all before."""

    def __init__(self, block, dtype):
        body = block.unit.body
        self.conv1, self.conv2 = _Conv(body[0], dtype, relu=True), _Conv(body[2], dtype, relu=True)
        self.residual = _Residual(body[4], dtype)
        self.cascade = make_cascade(block.fuse, body[0].out_channels, dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fusions, out = self.cascade.open(x), x
        for i in range(self.cascade.k):  # `out` is the block's input (kept) at i = 0, then a fusion's
            fusions.push(self.residual(self.conv2(self.conv1(out)), out, overwrite_x=i > 0))
            out = fusions.take(i)
        return out


class FastCARN(nn.Module):
    """The inference form of a CARN backbone in `dtype` (eval-mode batch norm)."""

    def __init__(self, carn, dtype: torch.dtype):
        super().__init__()
        self.cfg, self.scale, self.out_channels, self.dtype = carn.cfg, carn.scale, carn.out_channels, dtype
        self.entry = _Conv(carn.entry, dtype, relu=False)
        self.blocks = [_Block(b, dtype) for b in carn.blocks]
        self.cascade = make_cascade(carn.fuse, carn.cfg.nf, dtype)
        self._flops, self._radius = carn.flops, carn.receptive_radius
        self._plain = [carn]  # in a list: not a submodule (its weights are the originals, not copies)
        if carn.scale:  # the upsampling tail: its convolutions with the ReLU that follows fused
            self.upsample, self.exit = carn.upsample, carn.exit  # kept as submodules: their shapes are read
            self.tail = []
            for m in carn.upsample:
                if isinstance(m, nn.ReLU) and self.tail and isinstance(self.tail[-1], _Conv):
                    self.tail[-1].relu = True
                else:
                    self.tail.append(_Conv(m, dtype, relu=False) if isinstance(m, nn.Conv2d) else m)
            self.tail.append(_Conv(carn.exit, dtype, relu=False))

    def flops(self, h: int, w: int) -> int:
        return self._flops(h, w)

    @property
    def receptive_radius(self) -> int:
        return self._radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] == 1:
            # one pixel: NCHW and channels_last are the same strides, and oneDNN's in-place bf16
            # accumulation then takes a path that has no bf16 add+ReLU; the plain module is exact
            with torch.autocast(x.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                return self._plain[0](x).to(self.dtype)
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        out = self.entry(x)
        fusions = self.cascade.open(out)
        for i, block in enumerate(self.blocks):
            fusions.push(block(out))
            out = fusions.take(i)
        if self.scale:
            for step in self.tail:
                out = step(out)
        return out


def inference_form(carn, dtype: torch.dtype) -> nn.Module:
    """FastCARN for a CARN backbone in `dtype`, or the backbone itself where fp32 lacks the fused
    convolutions (the accumulating form is slower than the plain module there)."""
    if dtype == torch.float32 and not chained_fp32_works(carn.entry.weight.device):
        return carn
    return FastCARN(carn, dtype)
