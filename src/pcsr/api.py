"""The public API: `pcsr.load()` gives a `Model` whose `upscale()` takes what `pcsr upscale` reads
(a path, a PIL image of any mode, a uint8/uint16 array) and gives back what it writes.

A thin face over the inference core (pcsr.core): the same engine, tiling, routing decisions,
memory handling and accounting as the command, and only pcsr's own exceptions.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import weights
from .core import Core, Result
from .device import autocast, emulated_bf16, fast_bf16, pick_device  # noqa: F401  (public helpers)
from .engines import is_out_of_memory
from .errors import ImageError, PcsrError
from .io import DEFAULT_MAX_PIXELS, Picture, picture_from_pil, read_image, write_image
from .models.pcsr import Routing


@dataclass
class Upscaled:
    """An upscaled image: its samples at the input's bit depth, and where the compute went."""

    pixels: np.ndarray             # (H, W, 3) RGB or (H, W, 1) gray, uint8 or uint16
    alpha: np.ndarray | None       # (H, W) same dtype, or None
    mode: str                      # "L", "LA", "RGB" or "RGBA", as the input
    bits: int                      # 8 or 16, as the input
    class_map: np.ndarray | None   # (H, W) uint8, 0 = cheapest upsampler; None for an original model
    counts: list[int] | None       # output pixels per class, cheapest first
    flops: int
    max_flops: int                 # every pixel on the costliest upsampler
    heavy_fraction: float | None   # share of pixels on the costliest upsampler (from counts)
    icc_profile: bytes | None = None
    exif: bytes | None = None

    @property
    def array(self) -> np.ndarray:
        """HxW, HxWx2, HxWx3 or HxWx4, as the input array was laid out."""
        px = self.pixels[..., 0] if self.pixels.shape[2] == 1 else self.pixels
        if self.alpha is None:
            return px
        return np.dstack([px, self.alpha])

    @property
    def image(self) -> Image.Image:
        """The result as a PIL image. 16-bit gray is mode "I;16"; PIL has no 16-bit RGB mode, so a
        16-bit colour result comes as its 8-bit rendering: use `array` or `save()` for all 16 bits."""
        px, a = self.pixels, self.alpha
        if self.bits == 16 and px.shape[2] == 1 and a is None:
            return Image.fromarray(px[..., 0].astype(np.uint16), mode="I;16")
        if self.bits == 16:
            px = (px.astype(np.uint32) * 255 + 32767) // 65535
            a = None if a is None else (a.astype(np.uint32) * 255 + 32767) // 65535
        px = px.astype(np.uint8)
        if px.shape[2] == 1:
            px = px[..., 0]
        if a is not None:
            return Image.fromarray(np.dstack([px, a.astype(np.uint8)]), mode="LA" if px.ndim == 2 else "RGBA")
        return Image.fromarray(px, mode="L" if px.ndim == 2 else "RGB")

    def save(self, path: str | os.PathLike) -> None:
        """Write the file `pcsr upscale` would write (format from the extension, atomically)."""
        write_image(path, self.pixels, alpha=self.alpha, mode=self.mode, bits=self.bits,
                    icc_profile=self.icc_profile, exif=self.exif)


class Model(Core):
    """A loaded network with its device, precision and engine."""

    def upscale(self, image, k: float = 0.0, adaptive: bool = False, budget: float | None = None,
                refine: bool = True, scale: float | None = None, tile: int | None = None) -> Upscaled:
        """image: a path (EXIF orientation applied, as the command reads it), a PIL image of any mode
        (16-bit and alpha kept), or a uint8/uint16 array HxW, HxWx3 or HxWx4.

        Routing: `k` (cost rule; 0 = argmax, larger is cheaper), `adaptive` (k-means over the whole
        image) or `budget` (the heavy share of pixels, 0..1); `refine` smooths the seams. `scale`
        other than the model's resizes its result with Lanczos. An image wider or taller than
        `tile` LR pixels (None: a side that fits the free memory; 0: never tile) runs in tiles with
        exact context, in bounded memory."""
        routing = Routing(k=k, adaptive=adaptive, budget=budget, refine=refine)
        size = _size_of(image)
        if size is not None:  # before any conversion: a float copy of a huge input is itself the accident
            self.check_args(*size, scale, tile, None)
        pic = as_picture(image)
        try:
            with warnings.catch_warnings():  # our own views of read-only arrays are never written to
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                res: Result = self.upscale_array(pic.rgb, routing, alpha=pic.alpha, bits=pic.bits,
                                              gray=pic.mode in ("L", "LA"), scale=scale, tile=tile)
        except PcsrError:
            raise
        except Exception as err:  # only pcsr's errors leave the API; the cause stays chained
            if is_out_of_memory(err):
                raise PcsrError("not enough memory for this image (try a smaller tile=)") from err
            raise PcsrError(f"upscaling failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") \
                from err
        return Upscaled(res.pixels, res.alpha, pic.mode, pic.bits, res.classes, res.counts, int(res.flops),
                        int(res.max_flops), res.heavy_fraction, pic.icc_profile, pic.exif)


def _size_of(image) -> tuple[int, int] | None:
    """(height, width) of an in-memory image, refused above the command's pixel limit."""
    if isinstance(image, Image.Image):
        h, w = image.height, image.width
    elif isinstance(image, np.ndarray) and image.ndim >= 2:
        h, w = image.shape[:2]
    else:
        return None
    if h * w > DEFAULT_MAX_PIXELS:
        raise ImageError(f"{w}x{h} pixels is above the limit of {DEFAULT_MAX_PIXELS} (as pcsr upscale's "
                         "--max-pixels)")
    return (h, w) if h and w else None


def as_picture(image) -> Picture:
    """What the API accepts, as the command's reader would give it."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        try:
            image.load()
        except Exception as err:
            raise ImageError(f"the PIL image cannot be decoded ({type(err).__name__}: {err})") from None
        return picture_from_pil(image, "the PIL image")
    if not isinstance(image, np.ndarray):
        raise PcsrError(f"expected a path, a PIL image or a numpy array, got {type(image).__name__}")
    arr = image
    if arr.dtype not in (np.uint8, np.uint16):
        raise PcsrError(f"expected a uint8 or uint16 array, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (2, 3, 4))) or min(arr.shape[:2]) < 1:
        raise PcsrError(f"expected an HxW, HxWx3 or HxWx4 array, got shape {arr.shape}")
    bits = 16 if arr.dtype == np.uint16 else 8
    unit = arr.astype(np.float32) / np.float32(65535.0 if bits == 16 else 255.0)
    if unit.ndim == 2 or unit.shape[2] == 2:
        gray = unit if unit.ndim == 2 else unit[..., 0]
        rgb = np.repeat(gray[..., None], 3, axis=2)
        alpha = None if unit.ndim == 2 else np.ascontiguousarray(unit[..., 1])
        return Picture(rgb, alpha, "L" if alpha is None else "LA", bits, None, "")
    alpha = np.ascontiguousarray(unit[..., 3]) if unit.shape[2] == 4 else None
    return Picture(np.ascontiguousarray(unit[..., :3]), alpha, "RGBA" if alpha is not None else "RGB",
                   bits, None, "")


def load(name_or_path=None, device: str = "auto", precision: str = "auto", engine: str = "auto",
         compile: bool = False) -> Model:
    """A bundled model name (default: the bundled default), a .safetensors file, or a reference .pth.
    `precision` auto: a reduced precision only where measured harmless for the model and native on
    this hardware; `engine` auto: the fast engine of the device where there is one; `compile`: the
    reference engine with torch.compile (for GPUs; it falls back to plain torch if compiling fails)."""
    net, info = weights.load(name_or_path)
    return Model(net, info, device=device, precision=precision, engine=engine,
                 name=str(name_or_path or weights.DEFAULT_MODEL), compile=compile)
