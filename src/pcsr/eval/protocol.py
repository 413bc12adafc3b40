"""What an evaluation feeds the network: LR images made as the benchmarks make them, the settings of a
sweep, and the patch protocol's geometry (unfold, fold, the patch-level baseline's classes).

HR images are cropped to a multiple of the scale and made LR by the MATLAB-compatible bicubic, as
the SR benchmarks do. Two protocols:

* ``image``: the whole LR image in one pass, the usual protocol of SR benchmarks;
* ``patch``: ClassSR's and the PCSR paper's: LR patches of 32 px every 28 px (the last one of a row
  or column aligned to the edge), each super-resolved on its own, the outputs folded back with the
  overlaps averaged, FLOPs counted per patch.

And two ways to route a PCSR model:

* ``pixel``: the model's own per-pixel decision (cost rule with k, adaptive k-means, or a budget);
* ``patch``: the patch-level baseline on the same weights: every HR pixel of a 32x32 LR patch goes
  to the heavy upsampler when the patch's mean heavy-class probability exceeds a threshold.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from .. import routing as routing_rules
from ..errors import PcsrError
from ..io import read_image
from ..models.pcsr import Routing
from ..resize import imresize

PROTOCOLS = ("image", "patch")


# ----------------------------------------------------------------------------- HR / LR
def hr_tensor(path) -> torch.Tensor:
    """(3, H, W) float in [0, 1] from any image file (gray is replicated to RGB)."""
    pic = read_image(path)
    return torch.from_numpy(np.ascontiguousarray(pic.rgb)).permute(2, 0, 1).float()


def make_lr(hr: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop HR to a multiple of the scale (top-left part kept) and downscale it: (hr, lr)."""
    h, w = hr.shape[-2] // scale * scale, hr.shape[-1] // scale * scale
    hr = hr[..., :h, :w]
    return hr, imresize(hr, 1.0 / scale)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    """One point of a sweep. rule: "k", "adaptive", "budget", "threshold" (patch routing only) or
    "original" (a model without routing); routing: "pixel", "patch" or "none"."""

    rule: str = "k"
    value: float | None = 0.0
    routing: str = "pixel"
    refine: bool = True
    budget_of: str = "pixels"

    @property
    def label(self) -> str:
        if self.rule == "original":
            return "original"
        v = "" if self.value is None else f"{self.value:g}"
        text = {"k": f"k={v}", "adaptive": "adaptive", "budget": f"budget={v}", "threshold": f"t={v}"}[self.rule]
        if self.budget_of == "flops":
            text += " of flops"
        if self.routing == "patch":
            text = "patch " + text
        return text if self.refine else text + " no-refine"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", self.label)

    def to_routing(self) -> Routing:
        return Routing(k=self.value if self.rule == "k" else 0.0, adaptive=self.rule == "adaptive",
                       budget=self.value if self.rule == "budget" else None, budget_of=self.budget_of,
                       refine=self.refine)

    @classmethod
    def from_routing(cls, r: Routing | None) -> "Setting":
        r = r or Routing()
        if r.adaptive:
            return cls("adaptive", None, refine=r.refine)
        if r.budget is not None:
            return cls("budget", float(r.budget), refine=r.refine, budget_of=r.budget_of)
        return cls("k", float(r.k), refine=r.refine)


ORIGINAL = Setting("original", None, routing="none")


def make_settings(ks: Iterable[float] = (), adaptive: bool = False, budgets: Iterable[float] = (),
                  thresholds: Iterable[float] = (), routings: Iterable[str] = ("pixel",),
                  refine: bool = True) -> list[Setting]:
    """Every requested setting, pixel routing first; a routing asked for with nothing else gets its
    default point (k = 0, threshold 0.5)."""
    ks, budgets, thresholds, routings = list(ks), list(budgets), list(thresholds), list(routings)
    out = []
    if "pixel" in routings:
        if not (ks or adaptive or budgets):
            ks = [0.0]
        out += [Setting("k", float(k), refine=refine) for k in ks]
        out += [Setting("adaptive", None, refine=refine)] if adaptive else []
        out += [Setting("budget", float(b), refine=refine) for b in budgets]
    if "patch" in routings:
        if not (thresholds or adaptive):
            thresholds = [0.5]
        out += [Setting("threshold", float(t), routing="patch", refine=refine) for t in thresholds]
        out += [Setting("adaptive", None, routing="patch", refine=refine)] if adaptive else []
    seen, unique = set(), []
    for s in out:
        if s not in seen:
            seen.add(s)
            unique.append(s)
    return unique


# ----------------------------------------------------------------------------- patch geometry
def patch_starts(length: int, patch: int, step: int) -> list[int]:
    """Starts along one axis; the last patch is aligned to the edge so that every pixel is covered."""
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, step))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def unfold_patches(lr: torch.Tensor, patch: int, step: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(3, h, w) -> (N, 3, p, q) patches and their top-left corners (p = min(patch, h), q likewise)."""
    if patch < 1 or not 1 <= step <= patch:
        raise PcsrError(f"patches need 1 <= step <= patch, got patch {patch}, step {step}")
    h, w = lr.shape[-2:]
    ph, pw = min(patch, h), min(patch, w)
    boxes = [(y, x) for y in patch_starts(h, ph, step) for x in patch_starts(w, pw, step)]
    return torch.stack([lr[..., y:y + ph, x:x + pw] for y, x in boxes]), boxes


def fold_patches(patches: torch.Tensor, boxes: Sequence[tuple[int, int]], size: tuple[int, int],
                 scale: int = 1) -> torch.Tensor:
    """(N, C, P, Q) outputs of patches whose LR corners are `boxes` -> (C, H, W), overlaps averaged."""
    n, c, ph, pw = patches.shape
    out = torch.zeros(c, *size, dtype=torch.float64)
    weight = torch.zeros(1, *size, dtype=torch.float64)
    for (y, x), p in zip(boxes, patches):
        y, x = y * scale, x * scale
        out[:, y:y + ph, x:x + pw] += p.double()
        weight[:, y:y + ph, x:x + pw] += 1
    if bool((weight == 0).any()):
        raise ValueError("the patches do not cover the whole image")
    return (out / weight).to(patches.dtype if patches.is_floating_point() else torch.float32)


def tile_means(p: torch.Tensor, tile: int) -> torch.Tensor:
    """(N, H, W) -> (N, ceil(H/tile), ceil(W/tile)) means over tile x tile blocks (edge blocks smaller)."""
    n, h, w = p.shape
    th, tw = -(-h // tile), -(-w // tile)
    pad = (0, tw * tile - w, 0, th * tile - h)
    sums = torch.nn.functional.pad(p.double(), pad).view(n, th, tile, tw, tile).sum((2, 4))
    counts = torch.nn.functional.pad(torch.ones_like(p, dtype=torch.float64), pad).view(n, th, tile, tw, tile).sum((2, 4))
    return sums / counts


def _expand_tiles(t: torch.Tensor, tile: int, h: int, w: int) -> torch.Tensor:
    return t.repeat_interleave(tile, 1).repeat_interleave(tile, 2)[:, :h, :w]


def patch_level_classes(prob_heavy: torch.Tensor, tile: int, threshold: float | None,
                        heavy_class: int = 1) -> torch.Tensor:
    """The patch-level baseline: every pixel of a tile gets the heavy class when the tile's mean heavy
    probability exceeds `threshold`; None decides by k-means over the tile means (the paper's ADM,
    applied to patches). (N, H, W) probabilities -> (N, H, W) uint8 classes."""
    means = tile_means(prob_heavy, tile)
    if threshold is None:
        heavy = routing_rules.adaptive(means.reshape(-1).float()).view_as(means)
    else:
        heavy = means > threshold
    n, h, w = prob_heavy.shape
    return _expand_tiles(heavy, tile, h, w).to(torch.uint8) * heavy_class


# ----------------------------------------------------------------------------- units
@dataclass
class Units:
    """What the network sees for one image: the whole LR image, or its patches."""

    lr: torch.Tensor                         # (N, 3, p, q)
    boxes: list[tuple[int, int]] | None      # LR corners of the patches; None: the whole image
    hr_size: tuple[int, int]
    scale: int

    @classmethod
    def of(cls, lr: torch.Tensor, scale: int, protocol: str, patch: int, step: int) -> "Units":
        hr_size = (lr.shape[-2] * scale, lr.shape[-1] * scale)
        if protocol == "patch":
            patches, boxes = unfold_patches(lr, patch, step)
            return cls(patches, boxes, hr_size, scale)
        return cls(lr.unsqueeze(0), None, hr_size, scale)

    @property
    def out_shape(self) -> tuple[int, int]:
        return self.lr.shape[-2] * self.scale, self.lr.shape[-1] * self.scale

    def fold(self, x: torch.Tensor) -> torch.Tensor:
        """Per-unit outputs (N, C, P, Q) -> (C, H, W) of the whole image."""
        if self.boxes is None:
            return x[0]
        return fold_patches(x, self.boxes, self.hr_size, self.scale)
