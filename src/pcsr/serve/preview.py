"""The live preview: re-routing a cached image without running the network again.

Moving the `k` slider changes only which upsampler each output pixel takes. Everything before the
routing rule (backbone features, classifier logits) and every upsampler's output on every pixel
does not depend on `k`, so `prepare` runs those once per image and model, through the engine's own
steps (`normalise`, `_features`, `_logits`, `mlp_rows`, the query object's `bilinear`), and
`Prepared.route` then does only what the engine does after them: the model's own routing rule
(`PCSR.route_rows`, which holds the cost rule, adaptive and budget), a choice among the cached
candidates by class, and the engine's own seam refinement (`engine.refine`). The FLOPs are the
model's `count_flops` on the new counts, and the heavy fraction `pcsr.flops.heavy_fraction`, so the
figures are the ones the core reports for the same class map.

Why a preview and not the result: computing every upsampler on every pixel in one batch rounds
like the engine's dense pass, while the engine runs each costly upsampler on its own rows; in bf16
that can move a sample by a level. The downloadable result therefore always comes from the real
core run (`Model.upscale_array`, as `pcsr upscale`), and this module only feeds the page's slider.
It is the one place in the package that reaches into an engine's steps; an engine hook that returns
the per-upsampler candidates would make it a plain caller.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..device import autocast
from ..flops import heavy_fraction
from ..models.pcsr import Routing
from ..resize import imresize


@dataclass
class Figures:
    """Where the compute went, as `pcsr upscale --json` reports it."""

    width: int
    height: int
    flops: int
    max_flops: int
    counts: list[int] | None
    heavy_fraction: float | None

    def as_json(self) -> dict:
        return {"width": self.width, "height": self.height, "flops": int(self.flops),
                "max_flops": int(self.max_flops), "counts": self.counts, "heavy_fraction": self.heavy_fraction}


@dataclass
class Routed:
    pixels: np.ndarray          # (H, W, 3) uint8 preview (or (H, W, 4) with the input's alpha)
    classes: np.ndarray         # (H, W) uint8
    figures: Figures


class Prepared:
    """One image through one PCSR model up to routing, with every candidate output kept.

    Memory: per class an (H, W, 3) float32 candidate, plus the logits and the query features; the
    caller bounds how many of these it keeps (`nbytes`)."""

    def __init__(self, core, rgb: np.ndarray, alpha: np.ndarray | None):
        engine, net = core.engine, core.net
        self.engine, self.net = engine, net
        lr = engine.normalise(torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0))
        with torch.inference_mode(), autocast(engine.device, engine.precision):
            q, (H, W), x = engine._features(lr, core.scale, None, "auto")
            self.h, self.w = x.shape[-2:]
            self.H, self.W = H, W
            self.logits = engine._logits(q)
            base = q.bilinear(lr.to(x.dtype)).float()
            # candidate j: upsampler j's residual plus the bilinear base (the mean rides on it, as in
            # the engine), laid out as an image once, so a re-route never moves float rows again
            self.candidates = [q.to_image(engine.mlp_rows(q, u).float().add_(base)).contiguous(
                memory_format=torch.channels_last) for u in net.upsamplers]
        self.q = q
        self.alpha = None
        if alpha is not None:  # MATLAB bicubic, as the core upscales alpha
            up = imresize(torch.from_numpy(alpha).unsqueeze(0).float(), scale=core.scale)[0]
            self.alpha = up.clamp_(0, 1).mul_(255).round_().to(torch.uint8).numpy()
        self.max_flops = net.count_flops(self.h, self.w, [0] * (net.num_classes - 1) + [H * W])

    @property
    def nbytes(self) -> int:
        n = sum(c.numel() * c.element_size() for c in self.candidates) + self.logits.numel() * 4
        feat = getattr(self.q, "feat_rows", None)
        if feat is not None:
            n += feat.numel() * feat.element_size()
        return n + (0 if self.alpha is None else self.alpha.nbytes)

    def route(self, routing: Routing) -> Routed:
        """The engine's steps after the logits, on the cached candidates."""
        net, q = self.net, self.q
        with torch.inference_mode():
            cls_rows = net.route_rows(self.logits, routing, 1, self.h, self.w, self.H, self.W)
            counts = net.class_counts(cls_rows)
            cls_img = q.to_image(cls_rows)  # (1, H, W) uint8
            if len(self.candidates) == 2:
                sr = torch.where(cls_img.unsqueeze(1).bool(), self.candidates[1], self.candidates[0])
            else:
                sr = self.candidates[0].clone()
                for j in range(1, len(self.candidates)):
                    sr = torch.where((cls_img == j).unsqueeze(1), self.candidates[j], sr)
            if routing.refine:
                sr = self.engine.refine(sr, cls_img)
            # quantised as the core's tiles are (clamp, scale, round), then HWC: channels_last is HWC
            px = sr.clamp(0, 1).mul_(255).round_().to(torch.uint8)[0].permute(1, 2, 0).contiguous().numpy()
            classes = np.ascontiguousarray(cls_img[0].numpy())
        if self.alpha is not None:
            px = np.dstack([px, self.alpha])
        figures = Figures(self.W, self.H, net.count_flops(self.h, self.w, counts), self.max_flops, counts,
                          heavy_fraction(counts))
        return Routed(px, classes, figures)
