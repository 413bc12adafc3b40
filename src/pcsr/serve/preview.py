"""The live preview: re-routing a cached image without running the network again.

Moving the `k` slider changes only which upsampler each output pixel takes. Everything before the
routing rule (backbone features, classifier logits) and every upsampler's output on every pixel
does not depend on `k`, so `Prepared` asks the engine for them once per image and model
(`Engine.candidates`), and `Prepared.route` asks the engine to compose the image for a routing
(`Engine.compose`: the model's own routing rule, the class's output per pixel, the engine's seam
refinement, the model's FLOP accounting). The heavy fraction is `pcsr.flops.heavy_fraction`, so
the figures are the ones the core reports for the same class map.

Why a preview and not the result: computing every upsampler on every pixel rounds like the
engine's dense pass, while the engine runs each costly upsampler on its own rows; in bf16 that can
move a sample by a level. The downloadable result therefore always comes from the real core run
(`Model.upscale_array`, as `pcsr upscale`), and this module only feeds the page's slider.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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

    Memory: per class an (H, W, 3) float32 candidate, plus the logits; the caller bounds how many
    of these it keeps (`nbytes`)."""

    def __init__(self, core, rgb: np.ndarray, alpha: np.ndarray | None):
        self.engine, self.net = core.engine, core.net
        self.c = self.engine.candidates(torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0), core.scale)
        self.alpha = None
        if alpha is not None:  # MATLAB bicubic, as the core upscales alpha
            up = imresize(torch.from_numpy(alpha).unsqueeze(0).float(), scale=core.scale)[0]
            self.alpha = up.clamp_(0, 1).mul_(255).round_().to(torch.uint8).numpy()

    @property
    def nbytes(self) -> int:
        return self.c.nbytes + (0 if self.alpha is None else self.alpha.nbytes)

    def route(self, routing: Routing) -> Routed:
        """The engine's composition for `routing`, quantized as the core's tiles are."""
        res = self.engine.compose(self.c, routing)
        with torch.inference_mode():
            # clamp, scale, round, then HWC: a channels_last image is HWC already
            px = res.sr.clamp(0, 1).mul_(255).round_().to(torch.uint8)[0].permute(1, 2, 0).contiguous().numpy()
            classes = np.ascontiguousarray(res.classes[0].numpy())
        if self.alpha is not None:
            px = np.dstack([px, self.alpha])
        _, _, H, W = self.c.size
        figures = Figures(W, H, res.flops[0], res.max_flops[0], res.counts[0], heavy_fraction(res.counts[0]))
        return Routed(px, classes, figures)
