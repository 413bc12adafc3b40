"""The PCSR model (backbone + classifier + upsamplers) and the "original" SR model wrapper.

Training uses `forward` (the soft mixture of every upsampler, weighted by the classifier's
probabilities); inference uses `infer`, which routes every output pixel to one upsampler and
runs each upsampler only on its own pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import routing
from .backbones import Backbone, build_backbone
from .heads import MLP, PointQueries, SubpixelQueries, make_coord
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


@dataclass
class SRResult:
    sr: torch.Tensor                  # (N, 3, H, W), mean added back, not clamped
    classes: torch.Tensor | None      # (N, H, W) int64 class per output pixel, None for original models
    prob: torch.Tensor | None         # (N, M, H, W) classifier probabilities (float32)
    flops: list[int]                  # per image, the paper's convention
    max_flops: list[int]              # per image, every pixel on the costliest upsampler
    counts: list[list[int]] | None    # per image, pixels per class


def _mean_buffer(spec: ModelSpec) -> torch.Tensor:
    return torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)


class OriginalSR(nn.Module):
    """A backbone with its own upsampling tail; no routing."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.backbone: Backbone = build_backbone(spec.backbone, spec.backbone_args, scale=spec.scale)
        self.register_buffer("mean", _mean_buffer(spec), persistent=False)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(lr.dtype)
        return self.backbone(lr - mean) + mean

    @torch.inference_mode()
    def infer(self, lr: torch.Tensor, scale=None, out_size=None, routing_: Routing | None = None) -> SRResult:
        if (scale not in (None, self.spec.scale)) or out_size is not None and tuple(out_size) != (
            lr.shape[-2] * self.spec.scale, lr.shape[-1] * self.spec.scale
        ):
            raise ValueError(f"this model only upscales x{self.spec.scale}")
        sr = self.forward(lr)
        f = self.backbone.flops(lr.shape[-2], lr.shape[-1])
        return SRResult(sr, None, None, [f] * lr.shape[0], [f] * lr.shape[0], None)


class PCSR(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.backbone: Backbone = build_backbone(spec.backbone, spec.backbone_args, scale=None)
        c = self.backbone.out_channels + 4
        self.classifier = MLP(c, spec.classifier, len(spec.upsamplers))
        self.upsamplers = nn.ModuleList(MLP(c, h, 3) for h in spec.upsamplers)
        self.register_buffer("mean", _mean_buffer(spec), persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.upsamplers)

    # ------------------------------------------------------------------ shared pieces
    def queries(self, lr_norm: torch.Tensor, scale=None, out_size=None, path: str = "auto"):
        """Features and the query object for the requested output size."""
        feat = self.backbone(lr_norm)
        h, w = lr_norm.shape[-2:]
        if out_size is None:
            s = float(scale if scale is not None else self.spec.scale)
            out_size = (round(h * s), round(w * s))
        H, W = int(out_size[0]), int(out_size[1])
        s_int = H // h if H % h == 0 and W % w == 0 and H // h == W // w else None
        if s_int is not None and path in ("auto", "subpixel"):
            return SubpixelQueries(feat, s_int), (H, W)
        if path == "subpixel":
            raise ValueError(f"the sub-pixel path needs an integer scale, got {h}x{w} -> {H}x{W}")
        n = lr_norm.shape[0]
        coord = make_coord(H, W, lr_norm.device).unsqueeze(0).expand(n, -1, -1)
        cell = torch.tensor([2.0 / H, 2.0 / W], device=lr_norm.device).expand_as(coord)
        return PointQueries(feat, coord, cell), (H, W)

    def costs(self, h: int, w: int, H: int, W: int) -> torch.Tensor:
        """Per-class cost of one output pixel: its share of the backbone plus its upsampler."""
        bb = self.backbone.flops(h, w) / (H * W)
        return torch.tensor([bb + u.flops_per_row() for u in self.upsamplers], dtype=torch.float64)

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

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def infer(self, lr: torch.Tensor, scale=None, out_size=None, routing_: Routing | None = None,
              path: str = "auto", classes: torch.Tensor | None = None) -> SRResult:
        """Route every output pixel to one upsampler. `classes` (N, H, W) overrides the routing
        rule (tiling passes decisions made over a whole image)."""
        r = routing_ or Routing()
        mean = self.mean.to(lr.dtype)
        x = lr - mean
        n, _, h, w = x.shape
        q, (H, W) = self.queries(x, scale, out_size, path)
        subpix = isinstance(q, SubpixelQueries)
        prob_rows = torch.softmax(q.run(self.classifier).float(), dim=-1)  # (rows, M)
        prob = q.to_image(prob_rows) if subpix else prob_rows.view(n, H, W, -1).permute(0, 3, 1, 2)
        if classes is None:
            classes = self.decide(prob, r, h, w)  # (N, H, W)
        cls_rows = q.to_rows(classes.unsqueeze(1))[:, 0] if subpix else classes.reshape(-1)
        res = torch.empty(q.rows, 3, dtype=x.dtype, device=x.device)
        counts = []
        for j, u in enumerate(self.upsamplers):
            rows = torch.nonzero(cls_rows == j).squeeze(1)
            if rows.numel():
                res[rows] = q.run(u, rows).to(res.dtype)
        per_image = cls_rows.view(n, -1)
        counts = [[int((per_image[i] == j).sum()) for j in range(self.num_classes)] for i in range(n)]
        res += q.bilinear(x).to(res.dtype)
        sr = q.to_image(res) if subpix else res.view(n, H, W, 3).permute(0, 3, 1, 2)
        if r.refine:
            sr = routing.refine(sr, classes)
        sr = sr + mean
        flops = [self.count_flops(h, w, c) for c in counts]
        max_flops = [self.count_flops(h, w, [0] * (self.num_classes - 1) + [H * W])] * n
        return SRResult(sr, classes, prob, flops, max_flops, counts)

    def decide(self, prob: torch.Tensor, r: Routing, h: int, w: int) -> torch.Tensor:
        """(N, M, H, W) probabilities -> (N, H, W) classes, by the routing rule, per image."""
        H, W = prob.shape[-2:]
        costs = self.costs(h, w, H, W)
        p = prob.permute(0, 2, 3, 1)
        if not (r.adaptive or r.budget is not None):
            return routing.cost_rule(p, costs, r.k)
        heavy = self.num_classes - 1
        out = []
        for i in range(prob.shape[0]):
            if r.adaptive:
                mask = routing.adaptive(p[i, ..., heavy])
            else:
                frac = r.budget
                if r.budget_of == "flops":
                    frac = self.heavy_share_for_flops(h, w, H * W, r.budget)
                mask = routing.budget(p[i, ..., heavy], frac)
            # pixels not sent to the costliest class take the best of the cheaper ones (M > 2)
            rest = torch.argmax(p[i, ..., :heavy], dim=-1) if heavy > 1 else torch.zeros_like(mask, dtype=torch.long)
            out.append(torch.where(mask, torch.full_like(rest, heavy), rest))
        return torch.stack(out)


def build_model(spec: ModelSpec) -> nn.Module:
    return PCSR(spec) if spec.is_pcsr else OriginalSR(spec)
