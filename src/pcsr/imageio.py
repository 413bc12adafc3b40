"""Reading and writing image files: the only module that touches them.

Every failure a user can cause becomes an ImageError whose one-line message names
the file and the reason, so the CLI never shows a Pillow traceback. Writes are
atomic, so an interrupted run never leaves a partial image under the final name.

Supported:

* Reading: PNG, JPEG, WebP, BMP, TIFF, GIF and anything else Pillow opens; modes
  1, L, P (with or without transparency), LA, RGB, RGBA, CMYK, YCbCr, I;16, I, F.
  Gray stays gray on write-back. 16-bit RGB/RGBA PNG and TIFF and 16-bit gray+alpha
  PNG are read at full depth (Pillow alone would keep only the high byte).
* Writing: 8-bit PNG/JPEG/WebP/BMP/TIFF through Pillow; 16-bit PNG and TIFF through
  the small encoders below, because Pillow has no 16-bit RGB mode.

Limitations:

* Multi-frame files (animated GIF/WebP/PNG, multipage TIFF): only the first frame (with a warning).
* 16-bit gray+alpha TIFF is written as 16-bit RGBA, since Pillow cannot read the
  gray+alpha layout back; 16-bit gray+alpha TIFF files from elsewhere are read by
  whatever Pillow does with them.
* EXIF is carried into PNG, JPEG and WebP only, never into TIFF or BMP.
* CMYK is converted to RGB without colour management, and its CMYK ICC profile is
  dropped because it no longer describes the pixels.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import glob
import os
import re
import secrets
import stat
import struct
import sys
import threading
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from .errors import ImageError

DEFAULT_MAX_PIXELS = 2**28
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

_FORMAT_BY_EXTENSION = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
WRITABLE_EXTENSIONS = tuple(_FORMAT_BY_EXTENSION)


def format_for(suffix: str) -> str | None:
    """The format written for a file extension ('.JPEG' -> 'JPEG'), None if not writable."""
    return _FORMAT_BY_EXTENSION.get(suffix.lower())


_SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")
_ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")
_ICC_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")
_EXIF_FORMATS = ("PNG", "JPEG", "WEBP")

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


# --------------------------------------------------------------------------- reading


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
            wide = _wide_rawmodes(im)
            if wide is None:
                sixteen = any((_tile_rawmode(t) or "").startswith("I;16") for t in im.tile)
                _load(im, name)
                _orient(im, name)
                picture = _to_picture(im, name, sixteen)
            else:
                picture = _read_wide(im, path, name, wide)
    picture.format = fmt
    picture.icc_profile = icc if _icc_fits(icc, picture.mode) else None
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
        raise ImageError(f"{name}: truncated or corrupt image ({_short(err)})") from None


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
        raise ImageError(f"{name}: truncated or corrupt image ({_short(err)})") from None


def _orient(im: Image.Image, name: str) -> None:
    """Apply EXIF orientation first, so every later step sees the upright image."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception as err:  # a broken EXIF block must not cost the picture itself
        warnings.warn(f"{name}: EXIF orientation ignored ({_short(err)})", stacklevel=3)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    text = text[0] if text else type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."


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


def _icc_fits(icc: bytes | None, mode: str) -> bool:
    """A profile for another colour space (e.g. CMYK after conversion) would mislead viewers."""
    if not icc or len(icc) < 20:
        return False
    space = icc[16:20]
    return space == (b"GRAY" if mode in ("L", "LA") else b"RGB ")


def _to_picture(im: Image.Image, name: str, sixteen: bool = False) -> Picture:
    """sixteen: the file stores 16-bit samples (older Pillow opens 16-bit gray PNG as "I")."""
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
        raise ImageError(f"{name}: unsupported color mode {mode} ({_short(err)})") from None


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


# Pillow decodes 16-bit RGB(A) into 8-bit images by keeping the high byte of each
# sample. Its decoders still undo PNG filtering, interlacing and TIFF compression for
# us; decoding a second time with the opposite byte order yields the low bytes.
_SWAPPED_RAWMODE = {}
for _base in ("RGB", "RGBA", "RGBX"):
    _SWAPPED_RAWMODE[_base + ";16B"] = _base + ";16L"
    _SWAPPED_RAWMODE[_base + ";16L"] = _base + ";16B"
    _SWAPPED_RAWMODE[_base + ";16N"] = _base + (";16B" if sys.byteorder == "little" else ";16L")
# 16-bit gray+alpha PNG has the same bytes per pixel as 8-bit RGBA: copy them verbatim.
_VERBATIM_RAWMODE = {"LA;16B": "RGBA"}


def _tile_rawmode(tile) -> str | None:
    args = tile[3]
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _with_rawmode(tile, rawmode: str):
    args = tile[3]
    new_args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
    if hasattr(tile, "_replace"):
        return tile._replace(args=new_args)
    return (*tile[:3], new_args)


def _wide_rawmodes(im: Image.Image) -> list[str] | None:
    """The per-tile raw modes of a 16-bit colour image Pillow would truncate, else None."""
    if im.mode not in ("RGB", "RGBA") or not im.tile:
        return None
    rawmodes = [_tile_rawmode(tile) for tile in im.tile]
    if all(r in _SWAPPED_RAWMODE for r in rawmodes):
        return rawmodes
    if im.format == "PNG" and all(r in _VERBATIM_RAWMODE for r in rawmodes):
        return rawmodes
    return None


def _read_wide(im: Image.Image, path: Path, name: str, rawmodes: list[str]) -> Picture:
    if rawmodes[0] in _VERBATIM_RAWMODE:
        im.tile = [_with_rawmode(t, _VERBATIM_RAWMODE[r]) for t, r in zip(im.tile, rawmodes)]
        _load(im, name)
        _orient(im, name)
        packed = np.asarray(im).astype(np.uint16)
        gray = (packed[..., 0] << 8) | packed[..., 1]
        alpha = (packed[..., 2] << 8) | packed[..., 3]
        return _gray_picture(_unit(gray, 65535.0), 16, _unit(alpha, 65535.0))

    _load(im, name)
    _orient(im, name)
    high = np.asarray(im).astype(np.uint16)
    with _open(path, name) as low_im:
        low_im.tile = [_with_rawmode(t, _SWAPPED_RAWMODE[r]) for t, r in zip(low_im.tile, rawmodes)]
        _load(low_im, name)
        _orient(low_im, name)
        low = np.asarray(low_im).astype(np.uint16)
    if low.shape != high.shape:
        raise ImageError(f"{name}: truncated or corrupt image (inconsistent 16-bit decode)")
    values = _unit((high << 8) | low, 65535.0)
    if values.shape[2] == 4:
        return Picture(values[..., :3], values[..., 3], "RGBA", 16, None, "")
    return Picture(values, None, "RGB", 16, None, "")


# --------------------------------------------------------------------------- writing


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
    fmt = _FORMAT_BY_EXTENSION.get(path.suffix.lower())
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
    if not _icc_fits(icc_profile, out_mode) or fmt not in _ICC_FORMATS:
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
        writer = functools.partial(_write_png16, pixels=pixels, icc=icc_profile, exif=exif)
    elif bits == 16:
        if out_mode == "LA":  # Pillow cannot read 16-bit gray+alpha TIFF back
            pixels = pixels[..., [0, 0, 0, 1]]
        writer = functools.partial(_write_tiff16, pixels=pixels, icc=icc_profile)
    else:
        image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
        writer = functools.partial(image.save, format=fmt, **_save_options(fmt, quality, icc_profile, exif))
    _atomic_write(path, writer, overwrite)


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


# zlib level of PNG output. 1, as OpenCV (and so Real-ESRGAN) writes: on a 30 MP result 2.9 s and
# 28 MB, against 9.2 s and 24 MB at 6, PIL's default, which made writing a third of the wait.
PNG_LEVEL = 1


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


# Temporary files are named `.<final name>.pcsr-<pid>-<8 hex>.tmp` next to their target: hidden, and
# carrying the writer's PID, so that a later run can tell a temporary left by a killed run (kill -9,
# power loss) from one that another live run is still writing. Only names of exactly this shape are
# ever removed, and only when stale (see remove_stale_temporaries): a user's own files never are.
_TEMP_RE = re.compile(r"^\..+\.pcsr-(\d+)-[0-9a-f]{8}\.tmp$")
_PROBE_RE = re.compile(r"^\.pcsr-write-test-(\d+)-[0-9a-f]{8}$")
STALE_SECONDS = 60.0  # a live writer touches its temporary far more often than this
_swept: set[str] = set()
_exclusive: contextvars.ContextVar[bool] = contextvars.ContextVar("pcsr_exclusive_writes", default=False)


@contextlib.contextmanager
def exclusive_writes(on: bool = True):
    """Within this block, write_image never replaces an existing file (unless told to per call):
    what `pcsr upscale` without --overwrite needs, since another run may publish the same name
    between our check and our write."""
    token = _exclusive.set(on)
    try:
        yield
    finally:
        _exclusive.reset(token)


def temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.pcsr-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or we cannot tell: keep its file
    return True


def remove_stale_temporaries(folder: Path, now: float | None = None) -> list[Path]:
    """Remove our own temporaries (and write probes) in `folder` that a killed run left: the name is
    ours, it is a regular file of this user, untouched for STALE_SECONDS, and its PID runs no process
    here. Best effort: any doubt or error keeps the file."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        found = _TEMP_RE.match(e.name) or _PROBE_RE.match(e.name)
        if not found:
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < STALE_SECONDS:
                continue
            if hasattr(os, "getuid") and st.st_uid != os.getuid():
                continue
            if _pid_alive(int(found.group(1))):
                continue
            os.unlink(e.path)
            removed.append(Path(e.path))
        except (OSError, ValueError):
            continue
    return removed


def _sweep_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    if key not in _swept:
        _swept.add(key)
        remove_stale_temporaries(folder)


# errno values of file systems that have no hard links (FAT, some network and FUSE ones)
_NO_LINKS = {getattr(errno, n) for n in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EMLINK", "EXDEV")
             if hasattr(errno, n)}


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give the finished temporary its final name. Replacing: os.replace. Otherwise exclusively:
    a hard link fails if the name exists, so two runs never replace each other's file; where hard
    links are not supported, the name is claimed with an O_EXCL create and then replaced by ours."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError as err:
        if err.errno not in _NO_LINKS:
            raise
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise _exists(path) from None
        os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)  # our own empty placeholder
            raise
        return
    with contextlib.suppress(OSError):
        os.unlink(tmp)


class _Exists(Exception):
    pass


def _exists(path: Path) -> "_Exists":
    return _Exists(f"{path}: already exists (written meanwhile by another run?); use --overwrite to replace it")


def atomic_write(path: str | os.PathLike, writer: Callable[[BinaryIO], None], *, overwrite: bool = True,
                 error: type[Exception] = ImageError) -> None:
    """Write next to the target and publish it under its name only once complete, so the final name
    is never partial; on any failure or interruption (KeyboardInterrupt, and the signals `pcsr`
    turns into it) the temporary is removed. Errors are `error` with a one-line message."""
    path = Path(path)
    folder = path.parent
    _sweep_once(folder)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise error(str(_write_error(path, err))) from None
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path, overwrite)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, _Exists):
            raise error(str(err)) from None
        if isinstance(err, OSError):
            raise error(str(_write_error(path, err))) from None
        if isinstance(err, ValueError):  # Pillow's refusal, e.g. a size the format cannot hold
            raise error(f"{path}: cannot write image ({_short(err)})") from None
        raise
    _fsync_folder(folder)


def _atomic_write(path: Path, writer: Callable[[BinaryIO], None], overwrite: bool | None = None) -> None:
    atomic_write(path, writer, overwrite=not _exclusive.get() if overwrite is None else overwrite)


def _write_error(path: Path, err: OSError) -> ImageError:
    folder = f"{path.parent}{os.sep}"
    if isinstance(err, FileNotFoundError):
        return ImageError(f"{folder}: output folder does not exist")
    if isinstance(err, NotADirectoryError):
        return ImageError(f"{path.parent}: is not a folder")
    if isinstance(err, PermissionError):
        return ImageError(f"{folder}: output folder is not writable")
    if isinstance(err, IsADirectoryError):
        return ImageError(f"{path}: is a folder")
    return ImageError(f"{path}: cannot write ({err.strerror or _short(err)})")


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; best effort, and impossible on some systems."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type


def _png_chunk(f: BinaryIO, kind: bytes, data: bytes) -> None:
    f.write(struct.pack(">I", len(data)) + kind + data)
    f.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF))


def _write_png16(f: BinaryIO, pixels: np.ndarray, icc: bytes | None, exif: bytes | None) -> None:
    """Pillow cannot write 16-bit colour PNG; every row uses the Sub filter."""
    height, width, channels = pixels.shape
    f.write(b"\x89PNG\r\n\x1a\n")
    _png_chunk(f, b"IHDR", struct.pack(">IIBBBBB", width, height, 16, _PNG_COLOR_TYPE[channels], 0, 0, 0))
    if icc:
        _png_chunk(f, b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif:
        _png_chunk(f, b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    bpp = 2 * channels
    compressor = zlib.compressobj(PNG_LEVEL)
    pending = b""
    rows_per_block = max(1, (1 << 20) // max(1, width * bpp))
    for start in range(0, height, rows_per_block):
        block = pixels[start : start + rows_per_block].astype(">u2").view(np.uint8)
        block = block.reshape(block.shape[0], width * bpp)
        filtered = np.empty((block.shape[0], 1 + width * bpp), dtype=np.uint8)
        filtered[:, 0] = 1
        filtered[:, 1 : 1 + bpp] = block[:, :bpp]
        filtered[:, 1 + bpp :] = block[:, bpp:] - block[:, :-bpp]  # wraps modulo 256
        pending += compressor.compress(filtered.tobytes())
        if len(pending) >= 1 << 20:
            _png_chunk(f, b"IDAT", pending)
            pending = b""
    pending += compressor.flush()
    _png_chunk(f, b"IDAT", pending)
    _png_chunk(f, b"IEND", b"")


def _write_tiff16(f: BinaryIO, pixels: np.ndarray, icc: bytes | None) -> None:
    """Pillow cannot write 16-bit colour TIFF: little-endian, deflate strips."""
    height, width, channels = pixels.shape
    row_bytes = width * channels * 2
    rows_per_strip = max(1, min(height, (1 << 20) // max(1, row_bytes)))
    f.write(b"II*\x00\x00\x00\x00\x00")  # IFD offset patched at the end
    offsets, counts = [], []
    for start in range(0, height, rows_per_strip):
        strip = zlib.compress(pixels[start : start + rows_per_strip].astype("<u2").tobytes(), 6)
        offsets.append(f.tell())
        counts.append(len(strip))
        f.write(strip)
        if f.tell() % 2:
            f.write(b"\x00")

    color = channels >= 3
    tags: list[tuple[int, int, list[int] | bytes]] = [
        (256, 4, [width]),
        (257, 4, [height]),
        (258, 3, [16] * channels),
        (259, 3, [8]),  # Adobe deflate
        (262, 3, [2 if color else 1]),
        (273, 4, offsets),
        (277, 3, [channels]),
        (278, 4, [rows_per_strip]),
        (279, 4, counts),
        (284, 3, [1]),
    ]
    if channels in (2, 4):
        tags.append((338, 3, [2]))  # unassociated alpha
    if icc:
        tags.append((34675, 7, icc))

    # Values longer than 4 bytes live outside the IFD, written just before it.
    entries = []
    for tag, kind, values in tags:
        data = values if kind == 7 else struct.pack(f"<{len(values)}{'H' if kind == 3 else 'I'}", *values)
        count = len(values)
        if len(data) <= 4:
            entries.append(struct.pack("<HHI", tag, kind, count) + data.ljust(4, b"\x00"))
        else:
            where = f.tell()
            f.write(data)
            if f.tell() % 2:
                f.write(b"\x00")
            entries.append(struct.pack("<HHII", tag, kind, count, where))
    ifd_offset = f.tell()
    f.write(struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0))
    if f.tell() > 0xFFFFFFFF:
        raise ValueError("over 4 GiB, too large for a TIFF file; use .png")
    f.seek(4)
    f.write(struct.pack("<I", ifd_offset))
    f.seek(0, os.SEEK_END)


# --------------------------------------------------------------------------- files and folders


def list_images(inputs: Iterable[str | os.PathLike] | str | os.PathLike, *, unreadable: bool = False) -> list[Path]:
    """Expand files, folders and glob patterns into image paths, in a predictable order.

    Folders give their image files (by extension, non-recursive, sorted, hidden files
    such as macOS "._x.jpg" skipped); globs give the matching image files, sorted;
    named files are taken as they are. Each file appears once, at its first place.
    unreadable: also give entries with an image name that are no regular file (a named pipe, a
    symbolic link loop or a dangling link), so that the caller reports them (read_image refuses
    them without opening them) instead of their vanishing silently.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[Path] = []
    seen: set[str] = set()
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            files = _folder_images(path, unreadable)
            if not files:
                raise ImageError(f"{text}: no images in this folder")
        elif path.exists() or path.is_symlink():
            files = [path]
        elif _GLOB_CHARS.search(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise ImageError(f"{text}: no file matches")
            files = [Path(m) for m in matches if _is_image_name(m) and _kind(Path(m), unreadable) == "file"]
            if not files:
                raise ImageError(f"{text}: no image file matches")
        else:
            raise ImageError(f"{text}: no such file or folder")
        for file in files:
            key = os.path.normcase(os.path.realpath(file))
            if key not in seen:
                seen.add(key)
                found.append(file)
    return found


_GLOB_CHARS = re.compile(r"[*?[]")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _kind(path: Path | os.DirEntry, unreadable: bool) -> str:
    """"file" (a regular file, or with `unreadable` anything else that is no folder), "folder" or
    "skip". Never opens the entry, and a symbolic link loop (whose stat raises ELOOP) is no crash."""
    try:
        st = path.stat() if isinstance(path, Path) else path.stat(follow_symlinks=True)
    except OSError:
        return "file" if unreadable else "skip"  # loop, dangling link, no permission to stat
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    return "file" if unreadable or stat.S_ISREG(st.st_mode) else "skip"


def _folder_images(folder: Path, unreadable: bool = False) -> list[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise ImageError(f"{folder}: cannot list this folder ({err.strerror or _short(err)})") from None
    return [
        folder / e.name
        for e in entries
        if not e.name.startswith(".") and _is_image_name(e.name) and _kind(e, unreadable) == "file"
    ]


def check_output_dir(path: str | os.PathLike) -> None:
    """Fail before any work is done, not after the first slow upscale."""
    folder = Path(path)
    shown = f"{folder}{os.sep}"
    if folder.exists() and not folder.is_dir():
        raise ImageError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ImageError(f"{shown}: cannot create the output folder (part of the path is a file)") from None
    except PermissionError:
        raise ImageError(f"{shown}: cannot create the output folder (permission denied)") from None
    except OSError as err:
        raise ImageError(f"{shown}: cannot create the output folder ({err.strerror or _short(err)})") from None
    probe = folder / f".pcsr-write-test-{os.getpid()}-{secrets.token_hex(4)}"  # see _PROBE_RE
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        raise ImageError(f"{shown}: output folder is not writable") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
