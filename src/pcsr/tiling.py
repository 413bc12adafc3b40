"""Upscaling an image of any size in bounded memory: tiles of the LR image with context.

Every tile is the LR pixels it owns plus `context` LR pixels on each side (the backbone's
receptive radius, and 2 more for the bilinear residual and the refinement, which looks at the
neighbouring output pixel). The network sees the tile with its context; only the owned output
pixels are kept, so the stitched result is the untiled one up to float rounding.

The whole image stays in host memory (the result already quantized to 8 or 16 bits); only
tiles go to the device. Routing that depends on the whole image (adaptive k-means, budget) is
decided over the whole image: a first pass gathers the classifier's probabilities from every
tile, the decision is made once, and the second pass imposes each tile's part of the class map.
"""
from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from . import routing as rt
from .engines import is_out_of_memory
from .errors import PcsrError
from .flops import heavy_fraction
from .models.heads import Window
from .models.pcsr import Routing
from .resize import imresize

if TYPE_CHECKING:  # the core runs tiles through this module; only its type is named here
    from .core import Core

MIN_TILE = 16                 # LR pixels; below this the context dwarfs the tile
CPU_BUDGET_CAP = 19 << 28     # 4.75 GiB estimated per tile on a CPU (the estimate runs high): 8K in 4 tiles
CPU_SHARE = 0.25              # of MemAvailable, leaving room for other processes
CUDA_SHARE = 0.6              # of the device's free memory
DEFAULT_BUDGET = 1 << 30      # when free memory cannot be read
TYPICAL_SHARE = 0.8           # of bytes_per_lr_pixel that CARN-PCSR's tiles take (BENCHMARKS.md)


# ----------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Tile:
    """An owned LR region [y0, y1) x [x0, x1) and the region the network sees (with context)."""

    y0: int
    y1: int
    x0: int
    x1: int
    py0: int
    py1: int
    px0: int
    px1: int

    @property
    def size(self) -> int:
        return max(self.y1 - self.y0, self.x1 - self.x0)


@dataclass(frozen=True)
class Grid:
    """An h x w LR image's output grid of H x W pixels. LR rows [a, b) own output rows
    [row(a), row(b)) (columns alike): exact integers at any scale, y * s at an integer scale s, so
    tiles of the LR image tile the output grid with no gap and no overlap."""

    h: int
    w: int
    H: int
    W: int
    scale: int | None  # the integer scale when H = h * s and W = w * s; None: point queries in windows

    @classmethod
    def of(cls, h: int, w: int, H: int, W: int) -> "Grid":
        s = H // h
        return cls(h, w, H, W, s if H == h * s and W == w * s else None)

    def row(self, y: int) -> int:
        return y * self.H // self.h

    def col(self, x: int) -> int:
        return x * self.W // self.w

    def window(self, t: Tile) -> Window:
        """The output window the network computes for tile t: everything its crop (with context) owns."""
        return Window(self.h, self.w, self.H, self.W, t.py0, t.px0,
                      self.row(t.py0), self.row(t.py1), self.col(t.px0), self.col(t.px1))

    def owned(self, t: Tile) -> tuple[int, int, int, int, int, int]:
        """(offset y, offset x, height, width) of t's owned output within its window, and its (Y, X)."""
        Y, X = self.row(t.y0), self.col(t.x0)
        return (Y - self.row(t.py0), X - self.col(t.px0), self.row(t.y1) - Y, self.col(t.x1) - X, Y, X)


def _cuts(n: int, tile: int) -> list[int]:
    """Nearly equal parts of at most `tile`, so no thin sliver is left at the end."""
    parts = max(1, math.ceil(n / tile))
    return [i * n // parts for i in range(parts + 1)]


def plan_tiles(h: int, w: int, tile: int, context: int, region: tuple[int, int, int, int] | None = None
               ) -> list[Tile]:
    """Tiles of at most `tile` LR pixels a side covering `region` (y0, y1, x0, x1; default the image)."""
    ry0, ry1, rx0, rx1 = region or (0, h, 0, w)
    ys, xs = _cuts(ry1 - ry0, tile), _cuts(rx1 - rx0, tile)
    tiles = []
    for a, b in zip(ys, ys[1:]):
        for c, d in zip(xs, xs[1:]):
            y0, y1, x0, x1 = ry0 + a, ry0 + b, rx0 + c, rx0 + d
            tiles.append(Tile(y0, y1, x0, x1, max(0, y0 - context), min(h, y1 + context),
                              max(0, x0 - context), min(w, x1 + context)))
    return tiles


def required_context(model: Core) -> int:
    return int(model.net.backbone.receptive_radius) + 2


# ----------------------------------------------------------------------------- memory
def bytes_per_lr_pixel(model: Core, scale: float | None = None) -> int:
    """A deliberately high estimate of the working memory per LR pixel of a tile (above what
    each model was measured to take, BENCHMARKS.md). The PCSR heads run in
    chunks, so their cost per output pixel is a few maps (logits, classes, residual, refinement),
    not their hidden widths; at a non-integer `scale` the point queries also hold every output
    pixel's MLP input (features and coordinates). The out-of-memory retry covers any shortfall.
    """
    net, s = model.net, model.scale
    if model.is_pcsr:
        per_out = 8 * net.num_classes + 144
        if scale is not None and scale != s:
            s = math.ceil(scale)
            per_out += 12 * (net.backbone.out_channels + 4)
        return 48 * net.backbone.out_channels + s * s * per_out
    convs = [m for m in net.backbone.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    widest = max((m.out_channels for m in convs), default=64)
    return 2 * widest * (12 + s * s)


def expected_peak(model: Core, h: int, w: int, tile: int | None = None, context: int | None = None,
                  scale: float | None = None) -> int:
    """A typical (not worst-case) peak of working memory for the largest tile of an h x w LR
    image: what the `pcsr` command asks the heap to have ready before its first image."""
    ctx = required_context(model) if context is None else int(context)
    if tile is None:
        tile = auto_tile(model, ctx, scale)
    tiles = plan_tiles(h, w, max(h, w) if tile == 0 else tile, ctx)
    pixels = max((t.py1 - t.py0) * (t.px1 - t.px0) for t in tiles)
    return int(TYPICAL_SHARE * bytes_per_lr_pixel(model, scale) * pixels)


def available_memory(device: torch.device) -> int | None:
    """Free bytes where the tiles will run; None when it cannot be read (psutil is not a dependency)."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except (RuntimeError, AssertionError):
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def auto_tile(model: Core, context: int, scale: float | None = None) -> int:
    """The owned tile side (LR pixels) whose tile with context fits the memory budget."""
    free = available_memory(model.device)
    if free is None:
        budget = DEFAULT_BUDGET
    elif model.device.type == "cuda":
        budget = free * CUDA_SHARE
    else:
        budget = min(free * CPU_SHARE, CPU_BUDGET_CAP)
    side = int(math.sqrt(budget / bytes_per_lr_pixel(model, scale))) - 2 * context
    return max(MIN_TILE, side)


# ----------------------------------------------------------------------------- results
@dataclass
class Tiled:
    """A stitched result: integer samples in host memory and the FLOPs of the untiled run."""

    pixels: np.ndarray            # (H, W, 3), or (H, W, 1) luma for gray; uint8 or uint16
    alpha: np.ndarray | None      # (H, W) same dtype, alpha upscaled with MATLAB bicubic
    classes: np.ndarray | None    # (H, W) uint8, 0 = cheapest upsampler; None for original models
    flops: int
    max_flops: int
    counts: list[int] | None      # output pixels per class
    tile: int                     # owned tile side used at the end (after any halving); 0 = untiled
    tiles: int                    # tiles run (per pass)

    @property
    def heavy_fraction(self) -> float | None:
        return heavy_fraction(self.counts)


class _Sink:
    """Where the owned part of every tile lands, quantized on the device before the copy back."""

    def __init__(self, model: Core, grid: Grid, bits: int, gray: bool, alpha: torch.Tensor | None):
        self.model, self.grid, self.gray = model, grid, gray
        self.top = 65535.0 if bits == 16 else 255.0
        self.dtype = np.uint16 if bits == 16 else np.uint8
        H, W = grid.H, grid.W
        try:
            self.pixels = np.empty((H, W, 1 if gray else 3), dtype=self.dtype)
            self.alpha_in = alpha
            self.alpha = None if alpha is None else np.empty((H, W), dtype=self.dtype)
            self.classes = np.empty((H, W), dtype=np.uint8) if model.is_pcsr else None
        except MemoryError:
            raise PcsrError(f"not enough memory for a {W}x{H} result") from None
        self.flops = self.max_flops = 0
        self.counts = [0] * model.net.num_classes if model.is_pcsr else None

    def _quantize(self, x: torch.Tensor) -> np.ndarray:
        q = x.clamp(0, 1).mul_(self.top).round_()
        q = q.to(torch.uint8) if self.top == 255.0 else q.to(torch.int32)
        return q.cpu().numpy().astype(self.dtype, copy=False)

    @torch.inference_mode()
    def put(self, t: Tile, sr: torch.Tensor, classes: torch.Tensor | None) -> None:
        """sr (3, Ht, Wt) and classes (Ht, Wt) of the tile's output window (its crop with context)."""
        oy, ox, hh, ww, Y, X = self.grid.owned(t)
        own = sr[:, oy:oy + hh, ox:ox + ww].float()
        if self.gray:  # ITU-R 601 luma, as pcsr.io writes gray
            own = (0.299 * own[0] + 0.587 * own[1] + 0.114 * own[2]).unsqueeze(0)
        self.pixels[Y:Y + hh, X:X + ww] = self._quantize(own).transpose(1, 2, 0)
        if self.alpha is not None and self.grid.scale is not None:
            crop = self.alpha_in[t.py0:t.py1, t.px0:t.px1].unsqueeze(0).float()
            up = imresize(crop, scale=self.grid.scale)[0, oy:oy + hh, ox:ox + ww]
            self.alpha[Y:Y + hh, X:X + ww] = self._quantize(up)
        net, h_own, w_own = self.model.net, t.y1 - t.y0, t.x1 - t.x0
        if classes is None:
            f = net.backbone.flops(h_own, w_own)
            self.flops += f
            self.max_flops += f
            return
        own_cls = classes[oy:oy + hh, ox:ox + ww].to(torch.uint8)
        self.classes[Y:Y + hh, X:X + ww] = own_cls.cpu().numpy()
        counts = torch.bincount(own_cls.flatten().long(), minlength=net.num_classes).tolist()
        self.counts = [a + b for a, b in zip(self.counts, counts)]
        self.flops += net.count_flops(h_own, w_own, counts)
        self.max_flops += net.count_flops(h_own, w_own, [0] * (net.num_classes - 1) + [hh * ww])

    @torch.inference_mode()
    def finish(self) -> None:
        """Alpha at a non-integer scale: MATLAB bicubic of the whole plane at once (its taps do not
        follow the output grid's tile cuts)."""
        if self.alpha is not None and self.grid.scale is None:
            up = imresize(self.alpha_in.unsqueeze(0).float(), size=(self.grid.H, self.grid.W))[0]
            self.alpha[:] = self._quantize(up)


# ----------------------------------------------------------------------------- running
class _Runner:
    """Runs a function over tiles; on running out of memory, halves the tile side and splits."""

    def __init__(self, model: Core, h: int, w: int, tile: int, context: int, progress=None):
        self.model, self.h, self.w = model, h, w
        self.tile, self.context = tile, context
        self.progress = progress

    def each(self, tiles: list[Tile], fn: Callable[[Tile], None]) -> int:
        queue = list(reversed(tiles))
        done = 0
        while queue:
            t = queue.pop()
            if t.size > self.tile:
                queue.extend(reversed(self._split(t)))
                continue
            try:
                fn(t)
                failed = False
            except Exception as err:  # MemoryError is an Exception too
                if not is_out_of_memory(err):
                    raise
                failed = True
            if failed:  # outside the except block, so the failed tile's tensors can be freed
                self._free()
                if min(self.tile, t.size) <= MIN_TILE:
                    raise PcsrError(f"out of memory even with tiles of {min(self.tile, t.size)} LR pixels")
                self.tile = max(MIN_TILE, min(self.tile, t.size) // 2)
                queue.extend(reversed(self._split(t)))
                continue
            done += 1
            if self.progress is not None:
                self.progress.update(1)
        return done

    def _split(self, t: Tile) -> list[Tile]:
        parts = plan_tiles(self.h, self.w, self.tile, self.context, (t.y0, t.y1, t.x0, t.x1))
        if self.progress is not None:
            self.progress.total += len(parts) - 1
            self.progress.refresh()
        return parts

    def _free(self) -> None:
        gc.collect()
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()


def upscale(model: Core, lr: torch.Tensor, routing: Routing | None = None, *, tile: int | None = None,
            context: int | None = None, bits: int = 8, gray: bool = False, alpha: torch.Tensor | None = None,
            progress: Callable[[int], object] | None = None, out_size: tuple[int, int] | None = None) -> Tiled:
    """Upscale one LR image (3, h, w) float in [0, 1], in host memory, by the model's scale, or to
    `out_size` (H, W): a PCSR model's point queries, tiled on the output grid (any ratio).

    tile: owned tile side in LR pixels (None: from free memory; 0: the whole image at once).
    context: LR pixels around each tile (default and minimum: receptive radius + 2).
    alpha: (h, w) in [0, 1], upscaled with MATLAB bicubic alongside.
    progress: called with the number of tiles of a pass, returns a tqdm-like bar (or None).
    """
    r = routing or Routing()
    need = required_context(model)
    context = need if context is None else int(context)
    if context < need:
        raise PcsrError(f"a context of {context} LR pixels is too small for this model; it needs {need}")
    _, h, w = lr.shape
    s = model.scale
    grid = Grid.of(h, w, *(out_size or (h * s, w * s)))
    if grid.scale != s and not model.is_pcsr:
        raise PcsrError(f"this model only upscales x{s}")
    if tile is None:
        tile = auto_tile(model, context, grid.H / h)
    tile = max(h, w) if tile == 0 else max(1, int(tile))
    sink = _Sink(model, grid, bits, gray, alpha)
    tiles = plan_tiles(h, w, tile, context)
    whole = model.is_pcsr and (r.adaptive or r.budget is not None)
    bar = progress(len(tiles) * (2 if whole and len(tiles) > 1 else 1)) if progress and len(tiles) > 1 else None
    runner = _Runner(model, h, w, tile, context, bar)
    try:
        classes = None
        if whole and len(tiles) == 1:
            try:  # one tile: the model decides over the whole image itself
                n = runner.each(tiles, lambda t: _sr_tile(model, lr, r, t, None, sink, grid, whole_only=True))
                return _result(sink, runner, n, split=False)
            except _NeedsTwoPasses:  # it did not fit: split, and decide in a first pass
                tiles = plan_tiles(h, w, runner.tile, context)
                if bar is not None:
                    bar.reset(total=2 * len(tiles))
        if whole:
            classes = _decide_whole(model, lr, r, runner, tiles, grid)
        n = runner.each(tiles, lambda t: _sr_tile(model, lr, r, t, classes, sink, grid))
        return _result(sink, runner, n, split=len(tiles) > 1 or runner.tile < tile)
    finally:
        if bar is not None:
            bar.close()


class _NeedsTwoPasses(Exception):
    """A whole-image decision met a tile smaller than the image."""


def _result(sink: _Sink, runner: _Runner, n: int, split: bool) -> Tiled:
    sink.finish()
    return Tiled(sink.pixels, sink.alpha, sink.classes, sink.flops, sink.max_flops, sink.counts,
                 runner.tile if split else 0, n)


def _crop(lr: torch.Tensor, t: Tile) -> torch.Tensor:
    return lr[:, t.py0:t.py1, t.px0:t.px1].unsqueeze(0).contiguous()


def _sr_tile(model: Core, lr: torch.Tensor, r: Routing, t: Tile, classes: np.ndarray | None, sink: _Sink,
             grid: Grid, whole_only: bool = False) -> None:
    if whole_only and (t.y0, t.x0, t.y1, t.x1) != (0, 0, *lr.shape[1:]):
        raise _NeedsTwoPasses
    win = grid.window(t)
    cls = None
    if classes is not None:
        crop = classes[win.y0:win.y1, win.x0:win.x1]
        cls = torch.from_numpy(np.ascontiguousarray(crop)).to(model.device).unsqueeze(0)
    if grid.scale is not None:
        res = model.run(_crop(lr, t), r, scale=grid.scale, classes=cls)
    else:
        res = model.run(_crop(lr, t), r, window=win, classes=cls)
    sink.put(t, res.sr[0], None if res.classes is None else res.classes[0])


def _decide_whole(model: Core, lr: torch.Tensor, r: Routing, runner: _Runner, tiles: list[Tile],
                  grid: Grid) -> np.ndarray:
    """Pass 1: the heavy class's probability everywhere; then one decision over the whole image."""
    net = model.net
    h, w, H, W = grid.h, grid.w, grid.H, grid.W
    heavy = net.num_classes - 1
    p_heavy = np.empty((H, W), dtype=np.float32)
    rest = np.zeros((H, W), dtype=np.uint8) if heavy > 1 else None

    def gather(t: Tile) -> None:
        if grid.scale is not None:
            prob = model.class_prob(_crop(lr, t), scale=grid.scale)[0]
        else:
            prob = model.class_prob(_crop(lr, t), window=grid.window(t))[0]
        oy, ox, hh, ww, Y, X = grid.owned(t)
        own = prob[:, oy:oy + hh, ox:ox + ww]
        p_heavy[Y:Y + hh, X:X + ww] = own[heavy].cpu().numpy()
        if rest is not None:  # pixels not sent to the costliest class take the best cheaper one
            rest[Y:Y + hh, X:X + ww] = own[:heavy].argmax(0).to(torch.uint8).cpu().numpy()

    runner.each(tiles, gather)
    p = torch.from_numpy(p_heavy)
    if r.adaptive:
        mask = rt.adaptive(p)
    else:
        frac = r.budget
        if getattr(r, "budget_of", "pixels") == "flops":
            frac = net.heavy_share_for_flops(h, w, H * W, r.budget)
        mask = rt.budget(p, frac)
    del p, p_heavy
    mask = mask.numpy()
    if rest is None:
        return mask.astype(np.uint8) * np.uint8(heavy)
    return np.where(mask, np.uint8(heavy), rest)
