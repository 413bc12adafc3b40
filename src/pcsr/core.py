"""The one inference path. `pcsr upscale`, `pcsr.load().upscale()`, `pcsr eval` and `pcsr bench`
all run a model through a `Core`: it picks the engine for the device and precision, validates
what callers ask for, prepares the process's memory, tiles large images (pcsr.tiling), makes
whole-image routing decisions once, and accounts FLOPs and classes in one `Result`.

Layers: core uses engines, routing and tiling; the API, the command, eval and bench use core.
"""
from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import torch

from . import runtime, tiling
from .device import check_precision, choose_precision, emulated_bf16, pick_device
from .engines import SRResult, pick_engine
from .errors import PcsrError
from .models.pcsr import Routing

MAX_SCALE = 64.0               # as `pcsr upscale -s`: beyond it a result is a memory accident, not a picture
PREFAULT_CAP = 3 << 29         # 1.5 GB: below glibc's trim threshold as keep_freed_memory sets it (2 GB)
Result = tiling.Tiled          # pixels at the input's bit depth, alpha, class map, counts, FLOPs, heavy fraction


class Core:
    """A network prepared for one device and precision by its engine."""

    def __init__(self, net: torch.nn.Module, info: dict | None = None, device: str = "auto",
                 precision: str = "auto", name: str | None = None, engine: str = "auto", compile: bool = False):
        self.device = pick_device(device)
        self.info = info or {}
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise PcsrError(f"unknown precision {precision!r} (auto, fp32, bf16, fp16)")
        self.precision = choose_precision(self.device, self.info) if precision == "auto" else precision
        check_precision(self.device, self.precision)
        if self.precision == "bf16" and (why := emulated_bf16(self.device)):
            warnings.warn(f"{why} (use --precision auto)", stacklevel=3)
        self.engine = pick_engine(net, self.device, self.precision, engine, compile)
        self.net = self.engine.net
        self.name = name
        self._prepared = False
        if self.device.type == "cpu":
            # glibc would hand every large freed tensor back to the kernel, and fault it in again for
            # the next one: keep it (pcsr.runtime, BENCHMARKS.md)
            runtime.keep_freed_memory()

    @property
    def spec(self):
        return self.net.spec

    @property
    def scale(self) -> int:
        return self.net.spec.scale

    @property
    def is_pcsr(self) -> bool:
        return self.net.spec.is_pcsr

    @property
    def num_classes(self) -> int:
        return self.net.num_classes if self.is_pcsr else 0

    # ------------------------------------------------------------------ LR tensors
    def run(self, lr: torch.Tensor, routing: Routing | None = None, scale=None, out_size=None,
            classes: torch.Tensor | None = None, path: str = "auto", return_prob: bool = False,
            window=None) -> SRResult:
        """LR (N, 3, h, w) float in [0, 1], any layout -> SRResult, by the engine. `path` "query"
        forces the point-query heads (PCSR models); `window` (pcsr.models.heads.Window) asks for a
        tile of a larger image's output grid."""
        if self.is_pcsr:
            return self.engine.run(lr, routing, scale=scale, out_size=out_size, classes=classes, path=path,
                                   return_prob=return_prob, window=window)
        return self.engine.run(lr, None, scale=scale, out_size=out_size)

    def class_prob(self, lr: torch.Tensor, scale=None, window=None) -> torch.Tensor:
        return self.engine.class_prob(lr, scale=scale, window=window)

    def native(self, scale: float) -> bool:
        """Whether `scale` runs the network at that scale (the model's own, or one in its spec's
        trained scale_range) rather than resizing the result at the model's own scale."""
        return self.spec.native(float(scale))

    # ------------------------------------------------------------------ images
    def upscale_array(self, rgb: np.ndarray, routing: Routing | None = None, *, alpha: np.ndarray | None = None,
                bits: int = 8, gray: bool = False, scale: float | None = None, tile: int | None = None,
                context: int | None = None, progress=None) -> Result:
        """One image: rgb (H, W, 3) float32 in [0, 1] (a view is fine: tiles are copied out one at a
        time), alpha (H, W) in [0, 1] or None. The result has `bits`-bit samples (gray: one channel).
        `scale` other than the model's runs the network at that scale where the model was trained
        for it (`native`), else resizes the model's result with Lanczos."""
        h, w = rgb.shape[:2]
        scale = self.check_args(h, w, scale, tile, context)
        native = self.native(scale)
        self._prepare_memory(h, w, tile, context, scale if native else None)
        lr = torch.from_numpy(rgb).permute(2, 0, 1)
        a = None if alpha is None else torch.from_numpy(alpha)
        res = tiling.upscale(self, lr, routing, tile=tile, context=context, bits=bits, gray=gray, alpha=a,
                             progress=progress, out_size=out_size(h, w, scale) if native else None)
        if not native:
            from .io import resample
            size = out_size(h, w, scale)
            res.pixels = resample(res.pixels, size)
            res.alpha = None if res.alpha is None else resample(res.alpha, size)
            res.classes = None if res.classes is None else resample(res.classes, size, nearest=True)
        return res

    def check_args(self, h: int, w: int, scale: float | None, tile: int | None, context: int | None) -> float:
        """The checks `pcsr upscale` makes of its options, for every caller; returns the scale."""
        scale = float(self.scale if scale is None else scale)
        if not (0 < scale <= MAX_SCALE) or not math.isfinite(scale):
            raise PcsrError(f"scale must be above 0 and at most {MAX_SCALE:g}, got {scale:g}")
        if tile is not None and tile != 0 and tile < tiling.MIN_TILE:
            raise PcsrError(f"tile must be 0 (never tile) or at least {tiling.MIN_TILE} LR pixels, got {tile}")
        need = tiling.required_context(self)
        if context is not None and context < need:
            raise PcsrError(f"a context of {context} LR pixels is too small for this model; it needs {need}")
        H, W = out_size(h, w, max(scale, self.scale))
        need_bytes = H * W * 4 * (2 if self.is_pcsr else 1)  # samples, alpha or class map, and the resize
        free = tiling.available_memory(torch.device("cpu"))
        if free is not None and need_bytes > free:
            raise PcsrError(f"a {W}x{H} result needs about {need_bytes / 2**30:.1f} GB of memory, "
                            f"{free / 2**30:.1f} GB are free")
        return scale

    def _prepare_memory(self, h: int, w: int, tile, context, scale=None) -> None:
        """What makes the command fast on a CPU, for every caller: freed memory kept in the heap, and
        before the first image its working memory mapped in bulk (pcsr.runtime)."""
        if self._prepared or self.device.type != "cpu" or not sys.platform.startswith("linux"):
            return
        self._prepared = True
        runtime.prefault_heap(min(PREFAULT_CAP, tiling.expected_peak(self, h, w, tile, context, scale)))


def out_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """Output (height, width) of an h x w input at `scale`, at least one pixel each."""
    return max(1, round(h * scale)), max(1, round(w * scale))
