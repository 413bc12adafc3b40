"""The PCSR model (backbone + classifier + upsamplers) and the "original" SR model wrapper.

Pure modules: training uses `forward` (the soft mixture of every upsampler, weighted by the
classifier's probabilities). Inference, which routes every output pixel to one upsampler and runs
each upsampler only on its own pixels, is run by an engine (pcsr.engines); the routing rule and the
FLOP accounting it uses are defined here, once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import routing
from ..errors import PcsrError
from .backbones import Backbone, build_backbone
from .heads import MLP, PointQueries, SubpixelQueries, Window, make_coord
from .specs import ModelSpec


@dataclass
class Routing:
    """How pixels are sent to upsamplers. Exactly one rule: the cost rule with k (default),
    the adaptive k-means decision, or a budget (a heavy share of pixels, or of FLOPs)."""

    k: float = 0.0
    adaptive: bool = False
    budget: float | None = None
    budget_of: str = "pixels"  # or "flops"
    refine: bool = True

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, (int, float)) or not math.isfinite(self.k):
            raise PcsrError(f"k must be a finite number, got {self.k!r}")
        if self.budget is not None:
            if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) \
                    or not 0.0 <= self.budget <= 1.0:
                raise PcsrError(f"budget must be a number between 0 and 1, got {self.budget!r}")
            if self.adaptive:
                raise PcsrError("give one routing rule: adaptive or a budget, not both")
        if self.budget_of not in ("pixels", "flops"):
            raise PcsrError(f"budget_of must be 'pixels' or 'flops', got {self.budget_of!r}")


def _mean_buffer(spec: ModelSpec) -> torch.Tensor:
    return torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)


class OriginalSR(nn.Module):
    """A backbone with its own upsampling tail; no routing."""

    def __init__(self, spec: ModelSpec, registry: dict | None = None):
        super().__init__()
        self.spec = spec
        self.backbone: Backbone = build_backbone(spec.backbone, spec.backbone_args, scale=spec.scale,
                                                 registry=registry)
        self.register_buffer("mean", _mean_buffer(spec), persistent=False)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(lr.dtype)
        return self.backbone(lr - mean) + mean


class PCSR(nn.Module):
    def __init__(self, spec: ModelSpec, registry: dict | None = None):
        super().__init__()
        self.spec = spec
        self.backbone: Backbone = build_backbone(spec.backbone, spec.backbone_args, scale=None, registry=registry)
        c = self.backbone.out_channels + 4
        self.classifier = MLP(c, spec.classifier, len(spec.upsamplers))
        self.upsamplers = nn.ModuleList(MLP(c, h, 3) for h in spec.upsamplers)
        self.register_buffer("mean", _mean_buffer(spec), persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.upsamplers)

    # ------------------------------------------------------------------ shared pieces
    def make_queries(self, feat: torch.Tensor, lr_size, scale=None, out_size=None, path: str = "auto",
                     window: Window | None = None):
        """The query object over LR features `feat` for the requested output size: sub-pixel
        queries for an integer scale (unless `path` is "query"), point queries otherwise. A `window`
        (a tile of a larger image's output grid, pcsr.tiling) is always point queries."""
        h, w = int(lr_size[0]), int(lr_size[1])
        if window is not None:
            n = feat.shape[0]
            coord, cell = window.coords(h, w, feat.device)
            q = PointQueries(feat, coord.unsqueeze(0).expand(n, -1, -1), cell.unsqueeze(0).expand(n, -1, -1),
                             size=window.size)
            return q, window.size
        if out_size is None:
            s = float(scale if scale is not None else self.spec.scale)
            out_size = (round(h * s), round(w * s))
        H, W = int(out_size[0]), int(out_size[1])
        s_int = H // h if H % h == 0 and W % w == 0 and H // h == W // w else None
        if s_int is not None and path in ("auto", "subpixel"):
            return SubpixelQueries(feat, s_int), (H, W)
        if path == "subpixel":
            raise ValueError(f"the sub-pixel path needs an integer scale, got {h}x{w} -> {H}x{W}")
        n = feat.shape[0]
        coord = make_coord(H, W, feat.device).unsqueeze(0).expand(n, -1, -1)
        cell = torch.tensor([2.0 / H, 2.0 / W], device=feat.device).expand_as(coord)
        return PointQueries(feat, coord, cell, size=(H, W)), (H, W)

    def costs(self, h: int, w: int, H: int, W: int) -> torch.Tensor:
        """Per-class cost of one output pixel: its share of the backbone plus its upsampler."""
        bb = self.backbone.flops(h, w) / (H * W)
        return torch.tensor([bb + u.flops_per_row() for u in self.upsamplers], dtype=torch.float64)

    def fold_cost_rule(self, k: float, scale: int) -> None:
        """Move the routing's operating point into the weights: shift the classifier's output biases by
        the cost rule's k * log(cost share) at `scale`, so that plain argmax (k = 0) now routes as k did.
        The cost rule is exactly such a shift of the logits, and for an integer scale the costs do not
        depend on the image size (the backbone's FLOPs grow with its pixels), so the folded model routes
        every image as before; at other scales it is off by a rounding of the backbone's share."""
        if not math.isfinite(k):
            raise ValueError(f"k must be a finite number, got {k}")
        costs = self.costs(64, 64, 64 * scale, 64 * scale)
        shift = k * torch.log(costs / costs.sum())
        last = self.classifier.layers[-1]
        with torch.no_grad():
            last.bias.sub_(shift.to(last.bias.dtype))

    def count_flops(self, h: int, w: int, counts: list[int]) -> int:
        n_out = sum(counts)
        f = self.backbone.flops(h, w) + self.classifier.flops_per_row() * n_out
        return f + sum(u.flops_per_row() * c for u, c in zip(self.upsamplers, counts))

    def heavy_share_for_flops(self, h: int, w: int, n_out: int, fraction: float) -> float:
        """Heavy pixel share whose FLOPs (cheapest class for the rest) are `fraction` of all-heavy FLOPs."""
        lo = self.count_flops(h, w, [n_out] + [0] * (self.num_classes - 1))
        hi = self.count_flops(h, w, [0] * (self.num_classes - 1) + [n_out])
        return min(max((fraction * hi - lo) / (hi - lo), 0.0), 1.0)

    # ------------------------------------------------------------------ training
    def forward(self, lr: torch.Tensor, coord: torch.Tensor | None = None, cell: torch.Tensor | None = None,
                scale: int | None = None, heavy_only: bool = False):
        """Soft mixture for training. With coord/cell (N, Q, 2): (pred (N, Q, 3), prob (N, Q, M));
        without, an integer `scale` over the whole output: (pred (N, 3, H, W), prob (N, M, H, W)).
        heavy_only (phase 0) uses the costliest upsampler alone and returns prob None."""
        mean = self.mean.to(lr.dtype)
        x = lr - mean
        feat = self.backbone(x)
        if coord is not None:
            q = PointQueries(feat, coord, cell)
        else:
            q = SubpixelQueries(feat, int(scale or self.spec.scale))
        base = q.bilinear(x)
        if heavy_only:
            pred, prob = q.run(self.upsamplers[-1]) + base, None
        else:
            prob = torch.softmax(q.run(self.classifier).float(), dim=-1)
            outs = torch.stack([q.run(u) for u in self.upsamplers], dim=-1)  # (rows, 3, M)
            pred = (outs * prob.unsqueeze(1).to(outs.dtype)).sum(-1) + base
        pred = pred + mean.view(1, 3)
        if coord is not None:
            n, nq = coord.shape[:2]
            return pred.view(n, nq, 3), None if prob is None else prob.view(n, nq, -1)
        img = q.to_image(pred)
        return img, None if prob is None else q.to_image(prob)

    # ------------------------------------------------------------------ routing
    def class_counts(self, classes: torch.Tensor) -> list[int]:
        """Pixels per class of one image's (rows,) uint8 classes. Two classes: a count of the
        costlier, far cheaper than a histogram."""
        if self.num_classes == 2:
            heavy = int(torch.count_nonzero(classes))
            return [classes.numel() - heavy, heavy]
        return torch.bincount(classes, minlength=self.num_classes).tolist()

    def route_rows(self, logits: torch.Tensor, r: Routing, n: int, h: int, w: int, H: int, W: int,
                   image: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """(rows, M) logits, image-major rows of n h x w -> H x W grids -> (rows,) uint8 classes by the
        routing rule. `image` (h, w, H, W): the whole image the grids are windows of, whose sizes set
        the cost rule's per-pixel costs (a window's own ratio of LR to output pixels is rounded)."""
        m = self.num_classes
        if not (r.adaptive or r.budget is not None):
            costs = self.costs(*(image or (h, w, H, W)))
            shift = (r.k * torch.log(costs / costs.sum())).to(logits.device, torch.float32)
            if m == 2:  # p1/c1^k > p0/c0^k, ties to the cheaper class as argmax does
                return ((logits[:, 1] - logits[:, 0]) > (shift[1] - shift[0])).to(torch.uint8)
            return torch.argmax(logits - shift, dim=-1).to(torch.uint8)
        heavy = m - 1
        prob = torch.softmax(logits, -1).view(n, H * W, m)
        out = []
        for i in range(n):
            if r.adaptive:
                mask = routing.adaptive(prob[i, :, heavy])
            else:
                frac = r.budget if r.budget_of == "pixels" else self.heavy_share_for_flops(h, w, H * W, r.budget)
                mask = routing.budget(prob[i, :, heavy], frac)
            rest = torch.argmax(prob[i, :, :heavy], dim=-1) if heavy > 1 else torch.zeros_like(mask, dtype=torch.long)
            out.append(torch.where(mask, torch.full_like(rest, heavy), rest))
        return torch.cat(out).to(torch.uint8)


def build_model(spec: ModelSpec, registry: dict | None = None) -> nn.Module:
    """The network a spec describes; `registry`: another backbone table than the package's own."""
    return PCSR(spec, registry) if spec.is_pcsr else OriginalSR(spec, registry)
