"""The CPU engine: the reference algorithm with a CPU's fast forms of its steps.

- the backbone in its inference form where the backbone has one here (CARN: `fast_carn.FastCARN`,
  oneDNN's fused convolutions, no concatenation, batch norm folded);
- the per-pixel MLPs of the sub-pixel path in a compiled kernel (`kernels.FusedMLP`: fp32 with
  AVX2, bf16 with AVX512-BF16) where it is built and takes the MLP, else in chunks of torch
  operations whose activations stay in cache, with weights cast once and ReLUs fused;
- the seam refinement in one pass in C where it applies.

Every fast form is optional: a missing kernel or private op, or one that refuses its arguments,
leaves that step to torch's operations; anything else that fails makes the engine run the
reference engine instead (`fell_back` says why), never a crash. Why each constant has its value:
BENCHMARKS.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..models.heads import MLP, SubpixelQueries
from . import fast_carn, kernels
from .base import Engine, SRResult, is_out_of_memory

log = logging.getLogger("pcsr")


@dataclass(frozen=True)
class CpuTuning:
    chunk_elements: int = 1_200_000  # hidden activations per MLP chunk: a few MB, so they stay in cache
    gather_proj_rows: int = 4        # rows per LR pixel from which fp32 gathers first-layer projections
    group_width: int = 80            # reduced precision: narrow layers run g rows at once, g * width <= this
    dense_share: float = 0.6         # cheapest upsampler on every row when it owns this share of them
    use_kernels: bool = True


# Backbones with a faster inference form on this engine: name -> builder(backbone, dtype) -> module.
INFERENCE_FORMS = {"carn": fast_carn.inference_form}


# ----------------------------------------------------------------------------- linear layers
def _addmm_linear(h, w, b, act):
    out = torch.addmm(b, h, w.t())
    return out.relu_() if act == "relu" else out


def _mkldnn_linear(h, w, b, act):
    return torch.ops.mkldnn._linear_pointwise(h, w, b, act, [], "")


_LINEAR_OPS: dict[torch.dtype, object] = {}


def linear_op(dtype: torch.dtype):
    """`f(h, w, b, act)`: a linear layer, `act` "relu" or "none", as one oneDNN call where this torch
    build has it for `dtype` (the ReLU fused, and faster than addmm for these narrow layers), else
    addmm. A private op of torch, probed once per dtype on the shapes it will see (2-D rows)."""
    if dtype not in _LINEAR_OPS:
        _LINEAR_OPS[dtype] = _probe_linear(dtype)
    return _LINEAR_OPS[dtype]


def _probe_linear(dtype: torch.dtype):
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return _addmm_linear
    try:
        probe = torch.ones(5, 3, dtype=dtype)[1:]  # a view with an offset, as chunks are
        w, b = -torch.eye(3, dtype=dtype), torch.ones(3, dtype=dtype)
        zero = torch.zeros(4, 3, dtype=dtype)
        if not (torch.equal(_mkldnn_linear(probe, w, b, "relu"), zero)
                and torch.equal(_mkldnn_linear(probe, w, b, "none"), zero)):
            return _addmm_linear
    except (RuntimeError, NotImplementedError):
        return _addmm_linear
    return _mkldnn_linear


class _Layer:
    """A linear layer's weights in the compute dtype, and a block-diagonal copy that runs g rows as
    one row of g times the width: a narrow bf16 product wastes most of the matrix unit, and the
    extra products are by exact zeros."""

    def __init__(self, lin: nn.Linear, dtype: torch.dtype, relu: bool, group_width: int):
        self.w, self.b = lin.weight.to(dtype), lin.bias.to(dtype)
        self.act = "relu" if relu else "none"
        g = 1 if dtype == torch.float32 else max(1, group_width // max(self.w.shape))  # fp32: no gain
        self.g = 1 << (g.bit_length() - 1)  # a power of two, so that it divides most chunks
        if self.g > 1:
            self.wg = torch.block_diag(*[self.w] * self.g)
            self.bg = self.b.repeat(self.g)

    def __call__(self, linear, h: torch.Tensor) -> torch.Tensor:
        rows = h.shape[0]
        if self.g == 1 or rows % self.g:
            return linear(h, self.w, self.b, self.act)
        return linear(h.view(rows // self.g, -1), self.wg, self.bg, self.act).view(rows, -1)


@dataclass(frozen=True)
class ByClass:
    """The pixels whose class is j, left for a compiled kernel to find in the class map."""

    classes: torch.Tensor  # (rows,) uint8
    j: int

    def rows(self) -> torch.Tensor:
        return torch.nonzero(self.classes == self.j).squeeze(1)


def _version(t: torch.Tensor) -> int:
    """The in-place change counter of a weight; tensors made in inference mode have none (and
    cannot be changed in place outside it): their storage address stands in."""
    try:
        return t._version
    except RuntimeError:
        return t.data_ptr()


# ----------------------------------------------------------------------------- the engine
class CpuEngine(Engine):
    name = "cpu"

    def __init__(self, net: nn.Module, device: torch.device, precision: str, tuning: CpuTuning = CpuTuning()):
        self.tuning = tuning
        self._fused: dict[tuple, kernels.FusedMLP | None] = {}  # per MLP, dtype and weights version
        super().__init__(net, device, precision)

    def backbone_form(self, backbone):
        form = INFERENCE_FORMS.get(self.spec.backbone)
        return backbone if form is None else form(backbone, self.dtype)

    def run(self, lr, routing=None, **kw) -> SRResult:
        if self.fell_back is None:
            try:
                return super().run(lr, routing, **kw)
            except (RuntimeError, NotImplementedError) as err:
                if is_out_of_memory(err):
                    raise
                self._fall_back(err)
        return self._reference.run(lr, routing, **kw)

    def class_prob(self, lr, scale=None, out_size=None, window=None):
        if self.fell_back is None:
            try:
                return super().class_prob(lr, scale, out_size, window)
            except (RuntimeError, NotImplementedError) as err:
                if is_out_of_memory(err):
                    raise
                self._fall_back(err)
        return self._reference.class_prob(lr, scale, out_size, window)

    def _fall_back(self, err: BaseException) -> None:
        self.fell_back = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        log.debug("pcsr: the CPU engine's fast path failed (%s); running the reference engine", self.fell_back)
        self._reference = Engine(self.net, self.device, self.precision)

    # ------------------------------------------------------------------ the heads
    def _compute_dtype(self, dtype):
        return self.dtype if dtype is None else dtype

    def kernel_ready(self, dtype: torch.dtype) -> bool:
        if not self.tuning.use_kernels:
            return False
        if dtype == torch.float32:
            return kernels.available()
        return dtype == torch.bfloat16 and kernels.bf16_available()

    def fused(self, q, mlp: MLP, dtype: torch.dtype | None = None) -> kernels.FusedMLP | None:
        """The MLP laid out for a compiled kernel in `dtype` (default: the compute dtype), or None
        where none applies (point queries, not fp32 / bf16, kernel not built or not for this CPU,
        layers too wide)."""
        dtype = self._compute_dtype(dtype)
        if not isinstance(q, SubpixelQueries) or not self.kernel_ready(dtype):
            return None
        # the weights' version counters: a layout made before an in-place change of them is stale
        key = (id(mlp), dtype, q.c, tuple(_version(p) for p in mlp.parameters()))
        if key not in self._fused:
            f = kernels.FusedMLP(mlp, q.c, dtype)
            self._fused[key] = f if f.supported else None
        return self._fused[key]

    def mlp_rows(self, q, mlp, rows=None, dtype=None) -> torch.Tensor:
        if not isinstance(q, SubpixelQueries):
            # point queries hold every row's inputs already: one product per layer, unchunked (the
            # rounding of the reference's own code, which its class maps at near-ties depend on)
            return q.run(mlp, rows, dtype=dtype)
        if isinstance(rows, ByClass):
            rows = rows.rows()
        dtype = self._compute_dtype(dtype)
        with torch.autocast("cpu", enabled=False):
            return self._run_fast(q, mlp, rows, dtype)

    def select(self, q, cls_rows, j):
        if isinstance(q, SubpixelQueries) and self.kernel_ready(self.dtype):
            return None, ByClass(cls_rows, j)  # the kernel scans the class map itself: no index tensor
        return q.select(cls_rows, j)

    def scatter(self, q, mlp, rows, split, out) -> None:
        f = self.fused(q, mlp) if out.is_contiguous() else None
        if f is not None:
            picked = (split.classes, split.j) if isinstance(split, ByClass) else rows
            f(f.project(q.feat_rows), f.subpixel_bias(q.offsets), picked, out=out)
            return
        if isinstance(split, ByClass):  # picked for a kernel that does not take this MLP
            rows = split.rows()
            split = rows
        out.index_copy_(0, rows, self.mlp_rows(q, mlp, split).float())

    def dense_first(self, q, counts) -> bool:
        # the cheapest upsampler on every row when most rows are its own: cheaper than gathering them
        # and scattering back (its FLOPs are still counted on its own pixels only); not with the
        # compiled kernel, which gathers and scatters inside its pass over the rows
        return (isinstance(q, SubpixelQueries) and self.fused(q, self.net.upsamplers[0]) is None
                and sum(c[0] for c in counts) >= self.tuning.dense_share * q.rows)

    def refine(self, sr, classes):
        if self.tuning.use_kernels and (done := kernels.refine(sr, classes)) is not None:
            return done
        return super().refine(sr, classes)

    # ------------------------------------------------------------------ torch's operations, fast
    def _run_fast(self, q: SubpixelQueries, mlp: MLP, rows, dtype: torch.dtype) -> torch.Tensor:
        f = self.fused(q, mlp, dtype)
        if f is not None:
            if isinstance(rows, tuple):
                rows = rows[0] * (q.s * q.s) + rows[1]
            return f(f.project(q.feat_rows), f.subpixel_bias(q.offsets), q.rows if rows is None else rows)
        lins = [m for m in mlp.layers[1:] if isinstance(m, nn.Linear)]
        layers = [_Layer(m, dtype, i < len(lins) - 1, self.tuning.group_width) for i, m in enumerate(lins)]
        width = mlp.layers[0].out_features
        # narrow MLPs take longer chunks: fewer calls, same cache footprint
        chunk = self.tuning.chunk_elements // max([width] + [layer.w.shape[0] for layer in layers])
        if rows is None:
            return self._run_dense(q, mlp, layers, chunk, dtype)
        return self._run_rows(q, mlp, layers, rows, chunk, dtype)

    def _run_dense(self, q, mlp, layers, chunk: int, dtype) -> torch.Tensor:
        """Every output pixel. proj + bias for all s*s sub-pixels of an LR pixel is one product with a
        stacked identity: a broadcast add with rows this short is several times slower, and this
        way the ReLU comes fused. Exact: the products are by 1 and 0."""
        proj, bias = q.first_layer(mlp, dtype)
        linear = linear_op(dtype)
        ss, width = q.s * q.s, proj.shape[1]
        stack_w = torch.eye(width, dtype=dtype, device=proj.device).repeat(ss, 1)  # (ss*width, width)
        stack_b = bias.reshape(-1)
        out = torch.empty(q.rows, layers[-1].w.shape[0] if layers else width, dtype=dtype, device=proj.device)
        step = max(1, chunk // ss)  # whole LR pixels per chunk
        for start in range(0, proj.shape[0], step):
            h = linear(proj[start:start + step], stack_w, stack_b, "relu" if layers else "none").view(-1, width)
            for layer in layers:
                h = layer(linear, h)
            out[start * ss:start * ss + h.shape[0]] = h
        return out

    def _run_rows(self, q, mlp, layers, rows, chunk: int, dtype) -> torch.Tensor:
        """Some output pixels, taken a sub-pixel at a time: the first layer is then one product of the
        gathered features with that sub-pixel's bias and the ReLU fused, instead of a gathered
        projection plus a gathered bias plus a ReLU, three passes over the widest activations."""
        lr_idx, sub_idx = q._split_rows(rows)
        order = None
        if sub_idx.numel() > 1 and not bool((sub_idx[1:] >= sub_idx[:-1]).all()):
            sub_idx, order = torch.sort(sub_idx, stable=True)
            lr_idx = lr_idx[order]
        lin: nn.Linear = mlp.layers[0]
        feat = q.feat_rows.to(dtype)
        w1 = lin.weight[:, :q.c].to(dtype).contiguous()
        bias = q.subpixel_bias(lin).to(dtype)
        linear = linear_op(dtype)
        act = "relu" if layers else "none"
        # fp32 and many rows per LR pixel: project every LR pixel once and gather the projections
        # (products cost more than the wider gather there); reduced precision keeps the per-row
        # product, which is cheap
        gather_proj = dtype == torch.float32 and lr_idx.numel() >= self.tuning.gather_proj_rows * feat.shape[0]
        proj = feat @ w1.t() if gather_proj else None
        out = torch.empty(lr_idx.numel(), layers[-1].w.shape[0] if layers else w1.shape[0], dtype=dtype,
                          device=feat.device)
        ss = q.s * q.s
        bounds = [0] + torch.searchsorted(sub_idx, torch.arange(1, ss + 1, device=sub_idx.device,
                                                                 dtype=sub_idx.dtype)).tolist()
        for j in range(ss):  # rows bounds[j]:bounds[j + 1] are sub-pixel j's
            for a in range(bounds[j], bounds[j + 1], chunk):
                b = min(a + chunk, bounds[j + 1])
                if proj is None:
                    h = linear(feat.index_select(0, lr_idx[a:b]), w1, bias[j], act)
                else:
                    h = proj.index_select(0, lr_idx[a:b]).add_(bias[j])
                    h = h.relu_() if layers else h
                for layer in layers:
                    h = layer(linear, h)
                out[a:b] = h
        if order is not None:
            out = torch.empty_like(out).index_copy_(0, order, out)
        return out
