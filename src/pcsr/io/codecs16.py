"""16-bit colour, which Pillow cannot hold: the PNG and TIFF encoders, and the decoding of 16-bit
RGB(A) and 16-bit gray+alpha files at full depth.

Pillow decodes 16-bit RGB(A) into 8-bit images by keeping the high byte of each sample; its
decoders still undo PNG filtering, interlacing and TIFF compression for us, so decoding a second
time with the opposite byte order yields the low bytes (read_wide).
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from typing import BinaryIO, Callable, ContextManager

import numpy as np
from PIL import Image

from ..errors import ImageError

# zlib level of PNG output. 1, as OpenCV (and so Real-ESRGAN) writes: PIL's default (6) makes
# writing a large result much slower for slightly smaller files.
PNG_LEVEL = 1

# --------------------------------------------------------------------------- reading

_SWAPPED_RAWMODE = {}
for _base in ("RGB", "RGBA", "RGBX"):
    _SWAPPED_RAWMODE[_base + ";16B"] = _base + ";16L"
    _SWAPPED_RAWMODE[_base + ";16L"] = _base + ";16B"
    _SWAPPED_RAWMODE[_base + ";16N"] = _base + (";16B" if sys.byteorder == "little" else ";16L")
# 16-bit gray+alpha PNG has the same bytes per pixel as 8-bit RGBA: copy them verbatim.
_VERBATIM_RAWMODE = {"LA;16B": "RGBA"}


def tile_rawmode(tile) -> str | None:
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


def wide_rawmodes(im: Image.Image) -> list[str] | None:
    """The per-tile raw modes of a 16-bit colour image Pillow would truncate, else None."""
    if im.mode not in ("RGB", "RGBA") or not im.tile:
        return None
    rawmodes = [tile_rawmode(tile) for tile in im.tile]
    if all(r in _SWAPPED_RAWMODE for r in rawmodes):
        return rawmodes
    if im.format == "PNG" and all(r in _VERBATIM_RAWMODE for r in rawmodes):
        return rawmodes
    return None


def read_wide(im: Image.Image, rawmodes: list[str], name: str, decode: Callable[[Image.Image], None],
              reopen: Callable[[], ContextManager[Image.Image]]) -> tuple[np.ndarray, str]:
    """The full-depth samples (uint16, HxWxC) of an opened image that wide_rawmodes found, and their
    mode: "LA", "RGB" or "RGBA". decode(im) loads an image and applies its orientation; reopen()
    opens the same file again (the low bytes are a second decode)."""
    if rawmodes[0] in _VERBATIM_RAWMODE:
        im.tile = [_with_rawmode(t, _VERBATIM_RAWMODE[r]) for t, r in zip(im.tile, rawmodes)]
        decode(im)
        packed = np.asarray(im).astype(np.uint16)
        gray = (packed[..., 0] << 8) | packed[..., 1]
        alpha = (packed[..., 2] << 8) | packed[..., 3]
        return np.stack([gray, alpha], axis=2), "LA"

    decode(im)
    high = np.asarray(im).astype(np.uint16)
    with reopen() as low_im:
        low_im.tile = [_with_rawmode(t, _SWAPPED_RAWMODE[r]) for t, r in zip(low_im.tile, rawmodes)]
        decode(low_im)
        low = np.asarray(low_im).astype(np.uint16)
    if low.shape != high.shape:
        raise ImageError(f"{name}: truncated or corrupt image (inconsistent 16-bit decode)")
    samples = (high << 8) | low
    return samples, "RGBA" if samples.shape[2] == 4 else "RGB"


# --------------------------------------------------------------------------- writing


_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type


def _png_chunk(f: BinaryIO, kind: bytes, data: bytes) -> None:
    f.write(struct.pack(">I", len(data)) + kind + data)
    f.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF))


def write_png16(f: BinaryIO, pixels: np.ndarray, icc: bytes | None, exif: bytes | None) -> None:
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


def write_tiff16(f: BinaryIO, pixels: np.ndarray, icc: bytes | None) -> None:
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
