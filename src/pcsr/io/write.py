"""Writing: an array of samples as an image file, atomically, in the format its extension names;
and the resampling of samples (for --outscale and class maps).

What a format cannot hold is dropped rather than refused (see write_image); 16-bit PNG and TIFF
go through io.codecs16, everything else through Pillow.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image, features

from ..errors import ImageError
from .codecs16 import PNG_LEVEL, write_png16, write_tiff16
from .files import IMAGE_EXTENSIONS, atomic_write, format_for, resolve_overwrite
from .read import icc_fits

_SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")
_ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")
_ICC_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")
_EXIF_FORMATS = ("PNG", "JPEG", "WEBP")


def resample(samples: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """(H, W[, C]) uint8 or uint16 samples resized to size = (height, width): Lanczos (with
    Pillow's antialiasing when shrinking), or nearest for labels such as class maps.

    8-bit samples go through Pillow's own 8-bit path; 16-bit ones a channel at a time in float32,
    since Pillow has no 16-bit RGB mode."""
    height, width = size
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    planes = samples[..., None] if samples.ndim == 2 else samples
    if samples.dtype == np.uint8 and planes.shape[2] in (1, 3):
        img = Image.fromarray(planes[..., 0] if planes.shape[2] == 1 else planes)
        out = np.asarray(img.resize((width, height), method))
        return out if samples.ndim == 2 or out.ndim == 3 else out[..., None]
    top = float(np.iinfo(samples.dtype).max)
    out = np.empty((height, width, planes.shape[2]), dtype=samples.dtype)
    for c in range(planes.shape[2]):
        plane = Image.fromarray(planes[..., c].astype(np.float32), mode="F").resize((width, height), method)
        out[..., c] = np.rint(np.clip(np.asarray(plane), 0.0, top)).astype(samples.dtype)
    return out[..., 0] if samples.ndim == 2 else out


def write_image(
    path: str | os.PathLike,
    rgb: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    mode: str = "RGB",
    bits: int = 8,
    icc_profile: bytes | None = None,
    quality: int = 95,
    exif: bytes | None = None,
    overwrite: bool | None = None,
) -> None:
    """Write atomically, choosing the format from the extension.

    overwrite: replace an existing file (True), or fail with ImageError if one exists, even one
    another process publishes while this one writes (False); None: False inside exclusive_writes(),
    else True.

    Gray modes store ITU-R 601 luma, which returns the gray itself for a gray source.
    What a format cannot hold is dropped rather than refused: alpha for JPEG/BMP,
    16 bits for JPEG/WebP/BMP, gray for WebP (written as RGB).
    uint8/uint16 arrays are taken as samples on their full scale (0..255, 0..65535), so a
    large result can be kept and written as integers, never as a float copy four times larger.
    """
    path = Path(path)
    fmt = format_for(path.suffix)
    if fmt is None:
        allowed = ", ".join(IMAGE_EXTENSIONS)
        raise ImageError(f"{path}: cannot write '{path.suffix or 'no extension'}' files (use one of {allowed})")
    if mode not in ("L", "LA", "RGB", "RGBA"):
        raise ValueError(f"mode must be L, LA, RGB or RGBA, not {mode!r}")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, not {bits!r}")

    rgb = _as_rgb(rgb)
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.ndim == 3 and alpha.shape[2] == 1:
            alpha = alpha[..., 0]
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"alpha shape {alpha.shape} does not match image shape {rgb.shape[:2]}")

    gray = mode in ("L", "LA")
    if fmt == "WEBP":
        gray = False
    if fmt not in _ALPHA_FORMATS:
        alpha = None
    if fmt not in _SIXTEEN_BIT_FORMATS:
        bits = 8
    out_mode = ("L" if gray else "RGB") + ("A" if alpha is not None else "")
    if not icc_fits(icc_profile, out_mode) or fmt not in _ICC_FORMATS:
        icc_profile = None
    if fmt not in _EXIF_FORMATS:
        exif = None

    top = 65535.0 if bits == 16 else 255.0
    channels = [_luma(rgb)[..., None]] if gray else [rgb]
    if alpha is not None:
        channels.append(alpha[..., None])
    quantized = [_quantize(c, top) for c in channels]  # before concatenating: inputs may mix dtypes
    pixels = np.concatenate(quantized, axis=2) if len(quantized) > 1 else quantized[0]

    if bits == 16 and fmt == "PNG":
        writer = functools.partial(write_png16, pixels=pixels, icc=icc_profile, exif=exif)
    elif bits == 16:
        if out_mode == "LA":  # Pillow cannot read 16-bit gray+alpha TIFF back
            pixels = pixels[..., [0, 0, 0, 1]]
        writer = functools.partial(write_tiff16, pixels=pixels, icc=icc_profile)
    else:
        image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
        writer = functools.partial(image.save, format=fmt, **_save_options(fmt, quality, icc_profile, exif))
    atomic_write(path, writer, overwrite=resolve_overwrite(overwrite))


def _as_rgb(rgb) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    if rgb.ndim != 3 or rgb.shape[2] not in (1, 3):
        raise ValueError(f"expected an HxWx3 image array, got shape {rgb.shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"cannot write an empty image (shape {rgb.shape})")
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return rgb


def _luma(rgb: np.ndarray) -> np.ndarray:
    full = _integer_top(rgb)
    rgb = rgb.astype(np.float32, copy=False)
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return luma if full is None else luma / np.float32(full)


def _integer_top(values: np.ndarray) -> int | None:
    return int(np.iinfo(values.dtype).max) if values.dtype in (np.uint8, np.uint16) else None


def _quantize(values: np.ndarray, top: float) -> np.ndarray:
    target = np.uint16 if top > 255 else np.uint8
    if values.dtype == target:
        return values  # already samples at the depth being written
    full = _integer_top(values)
    if full is not None:
        values = values.astype(np.float32) / np.float32(full)
    values = np.nan_to_num(values.astype(np.float32, copy=False), nan=0.0)
    scaled = np.rint(np.clip(values, 0.0, 1.0) * np.float32(top))
    return scaled.astype(np.uint16 if top > 255 else np.uint8)


def _save_options(fmt: str, quality: int, icc: bytes | None, exif: bytes | None) -> dict:
    options: dict = {}
    if icc:
        options["icc_profile"] = icc
    if exif:
        options["exif"] = exif
    if fmt == "JPEG":
        options["quality"] = quality
        # Chroma subsampling would blur exactly the detail super-resolution adds.
        options["subsampling"] = "4:4:4" if quality >= 90 else "4:2:0"
    elif fmt == "WEBP":
        options["quality"] = quality
        options["lossless"] = False
    elif fmt == "PNG":
        options["compress_level"] = PNG_LEVEL
    elif fmt == "TIFF" and features.check("libtiff"):
        options["compression"] = "tiff_deflate"
    return options

