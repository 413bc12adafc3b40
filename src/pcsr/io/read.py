"""Reading: any file Pillow opens, or a PIL image, as a Picture; every failure a one-line ImageError.

EXIF orientation is applied on reading (and the tag reset to 1 in the EXIF kept for writing back);
an ICC profile is kept only if it describes the pixels' colour space (io.codecs16 reads what
Pillow would truncate to 8 bits).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from .codecs16 import read_wide, tile_rawmode, wide_rawmodes
from .files import short_reason

DEFAULT_MAX_PIXELS = 2**28

# Leading bytes of formats we write; a file starting with one of them that Pillow
# cannot identify is damaged rather than "not an image".
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")

_ORIENTATION_TAG = 0x0112


@dataclass
class Picture:
    """An image as the model sees it, plus what is needed to write it back faithfully."""

    rgb: np.ndarray  # float32 HxWx3 in [0, 1]; gray is replicated to 3 channels
    alpha: np.ndarray | None  # float32 HxW in [0, 1]
    mode: str  # "L", "LA", "RGB" or "RGBA": what to write back
    bits: int  # 8 or 16
    icc_profile: bytes | None
    format: str  # source format, e.g. "PNG"
    exif: bytes | None = None  # orientation already applied, so the tag is reset to 1


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode one image file, or raise ImageError with a one-line reason."""
    path = Path(path)
    name = str(path)
    _check_input_file(path, name)
    try:
        return _read(path, name, max_pixels)
    except Image.DecompressionBombError as err:
        limit = Image.MAX_IMAGE_PIXELS
        if limit is None or max_pixels <= 2 * limit:
            raise _too_many_pixels(name, err, max_pixels) from None
    # Pillow's own refusal (above 2 * MAX_IMAGE_PIXELS, about 179 million pixels) is
    # stricter than --max-pixels asked for: lift it to our limit for this one read.
    with _pillow_pixel_limit(max_pixels):
        try:
            return _read(path, name, max_pixels)
        except Image.DecompressionBombError as err:
            raise _too_many_pixels(name, err, max_pixels) from None


def _check_input_file(path: Path, name: str) -> None:
    """Explain the common non-decoding problems before Pillow reports them obscurely."""
    try:
        st = path.stat()
    except FileNotFoundError:
        dangling = path.is_symlink()
        raise ImageError(f"{name}: no such file" + (" (a symbolic link to nothing)" if dangling else "")) from None
    except NotADirectoryError:
        raise ImageError(f"{name}: no such file (a parent is not a folder)") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageError(f"{name}: cannot read (a loop of symbolic links)") from None
        raise ImageError(f"{name}: cannot read ({err.strerror or err})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{name}: is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):  # never opened: a named pipe would block the run for ever
        raise ImageError(f"{name}: not a regular file ({_special_kind(st.st_mode)})")
    if st.st_size == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")


def _special_kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a plain file"


def _too_many_pixels(name: str, err: Exception, max_pixels: int) -> ImageError:
    found = re.search(r"\((\d+) pixels\)", str(err))
    if found is None:
        return ImageError(f"{name}: more pixels than the limit of {max_pixels} (--max-pixels)")
    return ImageError(f"{name}: {found.group(1)} pixels is above the limit of {max_pixels} (--max-pixels)")


_PIXEL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_pixel_limit(max_pixels: int):
    """Temporarily align Pillow's bomb limit with ours; always restored on exit."""
    with _PIXEL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _read(path: Path, name: str, max_pixels: int) -> Picture:
    with warnings.catch_warnings():
        # Our max_pixels check is the one that speaks to the user.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _open(path, name) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{name}: {width}x{height} pixels is above the limit of {max_pixels} (--max-pixels)"
                )
            fmt = im.format or "unknown"
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                warnings.warn(f"{name}: {frames} frames; only the first is upscaled", stacklevel=3)
            icc = im.info.get("icc_profile") or None
            raw_exif = im.info.get("exif")
            wide = wide_rawmodes(im)
            if wide is None:
                sixteen = any((tile_rawmode(t) or "").startswith("I;16") for t in im.tile)
                _load(im, name)
                _orient(im, name)
                picture = picture_from_pil(im, name, sixteen)
            else:
                picture = _read_wide(im, path, name, wide)
    picture.format = fmt
    picture.icc_profile = icc if icc_fits(icc, picture.mode) else None
    picture.exif = _reset_orientation(raw_exif)
    return picture


def _open(path: Path, name: str) -> Image.Image:
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        if _has_image_signature(path):
            raise ImageError(f"{name}: truncated or corrupt image (cannot identify the image data)") from None
        raise ImageError(f"{name}: not an image file") from None
    except Image.DecompressionBombError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except PermissionError:
        raise ImageError(f"{name}: cannot read (permission denied)") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to open this image") from None
    except Exception as err:  # Pillow plugins raise many types for damaged headers
        raise ImageError(f"{name}: truncated or corrupt image ({short_reason(err)})") from None


def _has_image_signature(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return True
    return head.startswith(_SIGNATURES)


def _load(im: Image.Image, name: str) -> None:
    try:
        im.load()
    except Image.DecompressionBombError:
        raise
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode {im.width}x{im.height} pixels") from None
    except Exception as err:  # damaged data surfaces as OSError, SyntaxError, ValueError...
        raise ImageError(f"{name}: truncated or corrupt image ({short_reason(err)})") from None


def _orient(im: Image.Image, name: str) -> None:
    """Apply EXIF orientation first, so every later step sees the upright image."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception as err:  # a broken EXIF block must not cost the picture itself
        warnings.warn(f"{name}: EXIF orientation ignored ({short_reason(err)})", stacklevel=3)


def _reset_orientation(raw: bytes | None) -> bytes | None:
    """Only JPEG/PNG/WebP-style EXIF blocks; TIFF's getexif() is the TIFF header itself."""
    if not raw:
        return None
    try:
        exif = Image.Exif()
        exif.load(raw)
        exif[_ORIENTATION_TAG] = 1
        return exif.tobytes()
    except Exception:  # carrying EXIF is a nicety; never fail a read over it
        return None


def icc_fits(icc: bytes | None, mode: str) -> bool:
    """A profile for another colour space (e.g. CMYK after conversion) would mislead viewers."""
    if not icc or len(icc) < 20:
        return False
    space = icc[16:20]
    return space == (b"GRAY" if mode in ("L", "LA") else b"RGB ")


def picture_from_pil(im: Image.Image, name: str, sixteen: bool = False) -> Picture:
    """A PIL image as a Picture; name is how errors speak of it.
    sixteen: the file stores 16-bit samples (older Pillow opens 16-bit gray PNG as "I")."""
    mode = im.mode
    transparent = "transparency" in im.info
    try:
        if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return _gray_picture(np.asarray(im).astype(np.float32) / 65535.0, 16)
        if mode == "I":
            values = np.asarray(im).astype(np.float32)
            bits = 16 if sixteen or (values.size and values.max() > 255) else 8
            return _gray_picture(values / (65535.0 if bits == 16 else 255.0), bits)
        if mode == "F":
            return _gray_picture(_scale_float(np.asarray(im, dtype=np.float32)), 16)
        if mode in ("1", "L") and not transparent:
            return _gray_picture(_unit(np.asarray(im.convert("L"))), 8)
        if mode in ("1", "L", "LA", "La"):
            la = np.asarray(im.convert("LA"))
            return _gray_picture(_unit(la[..., 0]), 8, _unit(la[..., 1]))
        if mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and transparent):
            rgba = np.asarray(im.convert("RGBA"))
            return Picture(_unit(rgba[..., :3]), _unit(rgba[..., 3]), "RGBA", 8, None, "")
        # RGB, RGBX, P, CMYK, YCbCr, HSV and whatever else Pillow can turn into RGB.
        return Picture(_unit(np.asarray(im.convert("RGB"))), None, "RGB", 8, None, "")
    except ValueError as err:
        raise ImageError(f"{name}: unsupported color mode {mode} ({short_reason(err)})") from None


def _unit(values: np.ndarray, top: float = 255.0) -> np.ndarray:
    return values.astype(np.float32) / np.float32(top)


def _scale_float(values: np.ndarray) -> np.ndarray:
    """Float images have no agreed range: [0,1] is kept, else 8- or 16-bit scale is assumed."""
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max()) if values.size else 0.0
    if top > 255.0:
        values = values / 65535.0
    elif top > 1.0:
        values = values / 255.0
    return values


def _gray_picture(gray: np.ndarray, bits: int, alpha: np.ndarray | None = None) -> Picture:
    gray = np.clip(gray, 0.0, 1.0).astype(np.float32, copy=False)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    return Picture(rgb, alpha, "L" if alpha is None else "LA", bits, None, "")


def _read_wide(im: Image.Image, path: Path, name: str, rawmodes: list[str]) -> Picture:
    def decode(image: Image.Image) -> None:
        _load(image, name)
        _orient(image, name)

    samples, mode = read_wide(im, rawmodes, name, decode, lambda: _open(path, name))
    values = _unit(samples, 65535.0)
    if mode == "LA":
        return _gray_picture(values[..., 0], 16, values[..., 1])
    if mode == "RGBA":
        return Picture(values[..., :3], values[..., 3], "RGBA", 16, None, "")
    return Picture(values, None, "RGB", 16, None, "")
