"""The engine protocol and the one inference algorithm every engine runs.

An engine takes a pure model (pcsr.models) and decides how it runs on one device in one precision.
The algorithm is the same for all: the backbone makes features, the classifier (always in fp32:
reduced precision moves many near-tie pixels between classes) gives per-pixel logits, the routing
rule turns them into classes, each upsampler runs on its own pixels only, and the bilinear base,
the mean and the seam refinement complete the image. What differs between engines is how each of
those steps is computed: `Engine` here computes them with the model's own modules (the reference,
any device), `engines.cpu.CpuEngine` with the fast forms of a CPU.

An engine normalises its input at the boundary: whatever strides or dtype the caller's LR tensor
has, the network sees a fresh fp32 tensor in a canonical layout (oneDNN's in-place operations are
not safe on tensors whose size-1 dimensions carry odd strides).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.profiler import record_function

from .. import routing as rt
from ..models.heads import Window
from ..models.pcsr import PCSR, Routing
from ..device import DTYPES, autocast, check_precision

REFERENCE_CHUNK = 1 << 16  # rows per module call: bounds the heads' activations on any device


@dataclass
class SRResult:
    sr: torch.Tensor                  # (N, 3, H, W) float32, mean added back, not clamped
    classes: torch.Tensor | None      # (N, H, W) uint8 class per output pixel, None for original models
    prob: torch.Tensor | None         # (N, M, H, W) classifier probabilities (float32), when asked for
    flops: list[int]                  # per image, the paper's convention
    max_flops: list[int]              # per image, every pixel on the costliest upsampler
    counts: list[list[int]] | None    # per image, pixels per class


@dataclass
class Candidates:
    """One LR image through the network up to its routing rule, with every upsampler's output on
    every pixel: what a live preview re-routes for a new `k` without running the network again
    (`Engine.candidates`, then `Engine.compose` per routing)."""

    q: object                         # the query object (pcsr.models.heads), for the class-map layout
    logits: torch.Tensor              # (H*W, M) float32 classifier logits in the queries' row order
    outputs: list[torch.Tensor]       # per class, (1, 3, H, W) float32 channels_last, base and mean added
    size: tuple[int, int, int, int]   # (h, w, H, W)

    @property
    def nbytes(self) -> int:
        return sum(o.numel() * o.element_size() for o in self.outputs) + self.logits.numel() * 4


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class Engine:
    """The reference engine: the model's own modules, plain torch, any device (CUDA included);
    reduced precision by autocast. Subclasses replace the steps (`backbone_form`, `mlp_rows`,
    `select`, `scatter`, `dense_first`, `refine`) with faster forms of the same function."""

    name = "reference"

    def __init__(self, net: torch.nn.Module, device: torch.device, precision: str, compile: bool = False):
        check_precision(device, precision)
        self.device, self.precision, self.dtype = device, precision, DTYPES[precision]
        self.net = net.to(device).eval()
        self.spec = net.spec
        self.compile = compile
        self.backbone = self.backbone_form(self.net.backbone)
        self.fell_back: str | None = None  # why a fast engine gave up and ran the reference (None: it did not)

    # ------------------------------------------------------------------ the steps
    def backbone_form(self, backbone: torch.nn.Module):
        return Compiled(backbone) if self.compile else backbone

    def mlp_rows(self, q, mlp, rows=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The MLP on every output row (rows None) or on `rows` (what `select` gave), in chunks."""
        if isinstance(rows, tuple):  # (LR pixel index, sub-pixel index) pairs
            n = rows[0].numel()
            take = lambda a, b: (rows[0][a:b], rows[1][a:b])  # noqa: E731
        elif rows is None:
            n = q.rows
            if n <= REFERENCE_CHUNK:
                return q.run(mlp, None, dtype=dtype)
            take = lambda a, b: torch.arange(a, b, device=self.device)  # noqa: E731
        else:
            n = rows.numel()
            take = lambda a, b: rows[a:b]  # noqa: E731
        if n == 0:
            return q.run(mlp, take(0, 0), dtype=dtype)
        return torch.cat([q.run(mlp, take(a, min(a + REFERENCE_CHUNK, n)), dtype=dtype)
                          for a in range(0, n, REFERENCE_CHUNK)])

    def select(self, q, cls_rows: torch.Tensor, j: int):
        return q.select(cls_rows, j)

    def scatter(self, q, mlp, rows, split, out: torch.Tensor) -> None:
        out.index_copy_(0, rows, self.mlp_rows(q, mlp, split).float())

    def dense_first(self, q, counts: list[list[int]]) -> bool:
        """Whether the cheapest upsampler runs on every row (its own and the rest, overwritten)."""
        return False

    def refine(self, sr: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return rt.refine(sr, classes)

    # ------------------------------------------------------------------ the boundary
    def normalise(self, lr: torch.Tensor) -> torch.Tensor:
        """A fresh fp32 (N, 3, h, w) copy on the device with canonical strides."""
        if lr.dim() != 4 or lr.shape[1] != 3 or min(lr.shape[-2:]) < 1:
            raise ValueError(f"expected an LR batch (N, 3, h, w), got {tuple(lr.shape)}")
        return torch.empty(lr.shape, dtype=torch.float32, device=self.device).copy_(lr)

    def run(self, lr: torch.Tensor, routing: Routing | None = None, *, scale=None, out_size=None,
            classes: torch.Tensor | None = None, path: str = "auto", return_prob: bool = False,
            window: Window | None = None) -> SRResult:
        """LR (N, 3, h, w) in [0, 1] -> SRResult. `classes` (N, H, W) imposes a class map (whole-image
        decisions made elsewhere); `path` "query" forces the point-query heads (PCSR models); `window`
        asks for a window of a larger image's output grid instead (pcsr.tiling, non-integer scales)."""
        lr = self.normalise(lr)
        with torch.inference_mode(), autocast(self.device, self.precision):
            if isinstance(self.net, PCSR):
                res = self._run_pcsr(lr, routing or Routing(), scale, out_size, classes, path, return_prob, window)
            elif window is not None:
                raise ValueError("only a PCSR model queries windows of the output grid")
            else:
                res = self._run_original(lr, scale, out_size)
        res.sr = res.sr.float()
        return res

    def class_prob(self, lr: torch.Tensor, scale=None, out_size=None, window: Window | None = None) -> torch.Tensor:
        """(N, M, H, W) float32 classifier probabilities, backbone and classifier only: what routing
        decisions over a whole tiled image are made from (the same steps as `run` up to routing)."""
        lr = self.normalise(lr)
        with torch.inference_mode(), autocast(self.device, self.precision):
            q, _, _ = self._features(lr, scale, out_size, "auto", window)
            logits = self._logits(q)
            return q.to_image(torch.softmax(logits, -1))

    def candidates(self, lr: torch.Tensor, scale=None) -> Candidates:
        """One PCSR image (1, 3, h, w) up to routing, every upsampler on every pixel (the same steps
        as `run` up to the logits, then each upsampler's dense pass and the bilinear base)."""
        lr = self.normalise(lr)
        if lr.shape[0] != 1 or not isinstance(self.net, PCSR):
            raise ValueError("candidates are made for one image of a PCSR model")
        with torch.inference_mode(), autocast(self.device, self.precision):
            q, (H, W), x = self._features(lr, scale, None, "auto")
            logits = self._logits(q)
            base = q.bilinear(lr.to(x.dtype)).float()
            outputs = [q.to_image(self.mlp_rows(q, u).float().add_(base)).contiguous(memory_format=torch.channels_last)
                       for u in self.net.upsamplers]
        return Candidates(q, logits, outputs, (x.shape[-2], x.shape[-1], H, W))

    def compose(self, c: Candidates, routing: Routing) -> SRResult:
        """The image `run` would give for `routing`, from candidates: the model's routing rule on the
        cached logits, each pixel's class's output, the seam refinement, the FLOP accounting. (Every
        upsampler ran densely here, so in reduced precision a sample can differ from `run`'s
        gathered rows by a level: a preview, where `run` makes the result.)"""
        net, (h, w, H, W) = self.net, c.size
        with torch.inference_mode():
            cls_rows = net.route_rows(c.logits, routing, 1, h, w, H, W)
            counts = net.class_counts(cls_rows)
            cls_img = c.q.to_image(cls_rows)  # (1, H, W) uint8
            sr = c.outputs[0]
            for j in range(1, len(c.outputs)):
                sr = torch.where((cls_img == j).unsqueeze(1), c.outputs[j], sr)
            if routing.refine:
                sr = self.refine(sr, cls_img)
        max_flops = net.count_flops(h, w, [0] * (net.num_classes - 1) + [H * W])
        return SRResult(sr, cls_img, None, [net.count_flops(h, w, counts)], [max_flops], [counts])

    # ------------------------------------------------------------------ the algorithm
    def _run_original(self, lr, scale, out_size) -> SRResult:
        s = self.spec.scale
        if scale not in (None, s) or (out_size is not None and tuple(out_size) != (lr.shape[-2] * s, lr.shape[-1] * s)):
            raise ValueError(f"this model only upscales x{s}")
        mean = self.net.mean.to(lr.dtype)
        with record_function("backbone"):
            x = (lr - mean).contiguous(memory_format=torch.channels_last)
            sr = (self.backbone(x) + mean).contiguous()
        f = self.net.backbone.flops(lr.shape[-2], lr.shape[-1])
        return SRResult(sr, None, None, [f] * lr.shape[0], [f] * lr.shape[0], None)

    def _features(self, lr, scale, out_size, path, window=None):
        x = (lr - self.net.mean.to(lr.dtype)).contiguous(memory_format=torch.channels_last)
        with record_function("backbone"):
            feat = self.backbone(x)
        q, size = self.net.make_queries(feat, x.shape[-2:], scale, out_size, path, window)
        return q, size, x

    def _logits(self, q) -> torch.Tensor:
        with record_function("classifier"), torch.autocast(self.device.type, enabled=False):
            return self.mlp_rows(q, self.net.classifier, None, dtype=torch.float32)  # (rows, M), image-major

    def _run_pcsr(self, lr, r: Routing, scale, out_size, classes, path, return_prob, window=None) -> SRResult:
        net = self.net
        q, (H, W), x = self._features(lr, scale, out_size, path, window)
        n, _, h, w = x.shape
        logits = self._logits(q)
        with record_function("routing"):
            if classes is not None:
                cls_rows = q.to_rows(classes.to(self.device).unsqueeze(1))[:, 0].to(torch.uint8)
            else:
                image = None if window is None else (window.h, window.w, window.H, window.W)
                cls_rows = net.route_rows(logits, r, n, h, w, H, W, image)
            counts = [net.class_counts(c) for c in cls_rows.view(n, -1)]
            dense = self.dense_first(q, counts)
            first = 1 if dense else 0
            picked = [self.select(q, cls_rows, j) for j in range(first, net.num_classes)]
        if dense:
            with record_function("upsampler0"):
                res = self.mlp_rows(q, net.upsamplers[0]).float()
        else:
            res = torch.empty(q.rows, 3, dtype=torch.float32, device=self.device)
        for j, (u, (rows, split)) in enumerate(zip(net.upsamplers[first:], picked), start=first):
            with record_function(f"upsampler{j}"):
                if sum(c[j] for c in counts):
                    self.scatter(q, u, rows, split, res)
        with record_function("assemble"):
            # bilinear(x) + mean = bilinear(lr): the mean rides on the bilinear base for free
            sr = q.to_image(res.add_(q.bilinear(lr.to(x.dtype)).float()))
            cls_img = q.to_image(cls_rows)
            if r.refine:
                sr = self.refine(sr, cls_img)
        prob = q.to_image(torch.softmax(logits, -1)) if return_prob else None
        flops = [net.count_flops(h, w, c) for c in counts]
        max_flops = [net.count_flops(h, w, [0] * (net.num_classes - 1) + [H * W])] * n
        return SRResult(sr, cls_img, prob, flops, max_flops, counts)


ReferenceEngine = Engine


class Compiled(torch.nn.Module):
    """A backbone under torch.compile (shapes dynamic: tiles and images vary in size), which runs
    the module itself if compiling fails (no C++ compiler, a backend that refuses an operation): the
    compiled form is an optimisation, never a new way to fail. `failed` says why it gave up."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        # not a registered submodule: its parameters are the module's, and would be listed twice
        object.__setattr__(self, "_compiled", torch.compile(module, dynamic=True))
        self.failed: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed is None:
            try:
                return self._compiled(x)
            except Exception as err:  # dynamo and inductor raise their own types
                if is_out_of_memory(err):
                    raise
                self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return self.module(x)
