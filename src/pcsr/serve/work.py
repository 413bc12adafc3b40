"""What the server's jobs do, on the one inference core: decode an upload as the command reads a
file, run the core (or re-route a cached preview), and encode what the page and scripts fetch.

Decoding goes through `pcsr.io.read_image`, so an upload gets the command's own one-line messages
(not an image, corrupt, over the pixel limit, ...), with the visitor's file name in place of the
private temporary file's. The downloadable result and class map go through `pcsr.io.write_image`
and `pcsr.classmap.tint`: the files `pcsr upscale --class-map` would write, in PNG. Only the live
preview and the class-map overlay are encoded here directly: fast display formats, never files.
"""
from __future__ import annotations

import io
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..classmap import class_colours, tint
from ..errors import ImageError, PcsrError
from ..io import Picture, read_image, write_image
from ..resize import imresize
from .preview import Figures, Prepared

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]+")


def display_name(name: str | None) -> str:
    """The last part of a client's file name, printable, short: for messages and download names
    only; it never reaches the file system."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).strip()[:80]
    return base or "upload"


@dataclass
class Upload:
    """An uploaded picture, decoded once, kept in memory under the hash of its bytes."""

    id: str
    name: str
    picture: Picture
    notes: list[str] = field(default_factory=list)  # warnings of the reader (e.g. only the first frame)

    @property
    def nbytes(self) -> int:
        pic = self.picture
        return pic.rgb.nbytes + (0 if pic.alpha is None else pic.alpha.nbytes)

    @property
    def stem(self) -> str:
        return os.path.splitext(self.name)[0] or "upload"

    def describe(self) -> dict:
        h, w = self.picture.rgb.shape[:2]
        return {"id": self.id, "name": self.name, "width": w, "height": h, "mode": self.picture.mode,
                "bits": self.picture.bits, "notes": self.notes}


def decode(data: bytes, name: str, folder: Path, max_pixels: int) -> tuple[Picture, list[str]]:
    """The upload's bytes as the command would read them from a file. They are written to a file of
    our own in the server's private folder (mode 0700) just for the read, and removed at once."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                pic = read_image(tmp, max_pixels=max_pixels)
            except ImageError as err:
                raise ImageError(str(err).replace(tmp, name)) from None
        return pic, [str(w.message).replace(tmp, name) for w in caught]
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


@dataclass
class Output:
    """A result the page or a script can fetch: the pixels, the class map and the figures."""

    id: str
    kind: str                     # "preview" (re-routed from the cache) or "exact" (the core's run)
    name: str                     # the upload's name, for download names
    pixels: np.ndarray            # (H, W, C) uint8 / uint16 as the core gives it; previews (H, W, 3|4) uint8
    alpha: np.ndarray | None
    mode: str
    bits: int
    classes: np.ndarray | None
    num_classes: int
    figures: Figures
    seconds: float
    scale: float
    icc_profile: bytes | None = None
    exif: bytes | None = None
    _encoded: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        n = self.pixels.nbytes + (0 if self.alpha is None else self.alpha.nbytes)
        n += 0 if self.classes is None else self.classes.nbytes
        return n + sum(len(b) for b in self._encoded.values())

    def describe(self) -> dict:
        base = f"/api/results/{self.id}"
        out = {"result": self.id, "kind": self.kind, **self.figures.as_json(), "seconds": round(self.seconds, 4),
               "view": f"{base}/view", "file": f"{base}/file.png",
               "download": f"{self.name}_x{self.scale:g}.png"}
        if self.classes is not None:
            out.update(overlay=f"{base}/overlay.png", classmap=f"{base}/classmap.png",
                       classmap_download=f"{self.name}_x{self.scale:g}_classes.png")
        return out

    # ------------------------------------------------------------------ encodings, made once
    def encoded(self, what: str, folder: Path) -> tuple[bytes, str]:
        if what not in self._encoded:
            self._encoded[what] = _ENCODERS[what](self, folder)
        return self._encoded[what], _TYPES[what]


def _file_png(out: Output, folder: Path) -> bytes:
    """The result as `pcsr upscale` writes it (bit depth, alpha, gray, ICC, EXIF kept), in PNG."""
    if out.kind == "preview":
        raise PcsrError("a preview has no file; ask for the exact result")
    return _written(folder, lambda p: write_image(p, out.pixels, alpha=out.alpha, mode=out.mode, bits=out.bits,
                                                 icc_profile=out.icc_profile, exif=out.exif))


def _classmap_png(out: Output, folder: Path) -> bytes:
    """The tinted class map `pcsr upscale --class-map` writes."""
    if out.classes is None:
        raise PcsrError("this model has no upsampler classes")
    return _written(folder, lambda p: write_image(p, tint(out.pixels[..., :3] if out.pixels.shape[2] > 1
                                                          else out.pixels, out.classes, out.num_classes)))


def _written(folder: Path, write) -> bytes:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="result-", suffix=".png")
    os.close(fd)
    try:
        write(tmp)
        return Path(tmp).read_bytes()
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _view(out: Output, folder: Path) -> bytes:
    """What the page shows. A preview: uncompressed BMP for RGB (encoding 1 MP as PNG costs more
    than re-routing it; the bytes go to a browser on this machine or a LAN), PNG at the fastest
    level where alpha must show. An exact result: its file."""
    if out.kind != "preview":
        return _file_png(out, folder)
    return _display(out.pixels)


def _overlay(out: Output, folder: Path) -> bytes:
    """The class map in the class colours as a palette PNG (one byte a pixel, fast): the page lays
    it over the result at the opacity the visitor picks."""
    if out.classes is None:
        raise PcsrError("this model has no upsampler classes")
    im = Image.fromarray(out.classes, "P")
    im.putpalette(class_colours(out.num_classes).reshape(-1).tolist())
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


_ENCODERS = {"file": _file_png, "classmap": _classmap_png, "view": _view, "overlay": _overlay}
_TYPES = {"file": "image/png", "classmap": "image/png", "overlay": "image/png", "view": None}


def _display(pixels: np.ndarray) -> bytes:
    """8-bit RGB (H, W, 3) as BMP, RGBA as PNG at the fastest level: see `_view`."""
    buf = io.BytesIO()
    if pixels.shape[2] == 3:
        Image.fromarray(pixels).save(buf, "BMP")
    else:
        Image.fromarray(pixels, "RGBA").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def bicubic_view(pic: Picture, scale: int) -> bytes:
    """The "before" picture: MATLAB bicubic (pcsr.resize) at the model's scale, alpha included."""
    planes = pic.rgb if pic.alpha is None else np.dstack([pic.rgb, pic.alpha])
    up = imresize(torch.from_numpy(np.ascontiguousarray(planes)).permute(2, 0, 1), scale=scale)
    return _display(up.clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy())


def view_type(data: bytes) -> str:
    return "image/bmp" if data[:2] == b"BM" else "image/png"


# ----------------------------------------------------------------------------- the jobs' bodies
def run_exact(model, up: Upload, routing, result_id: str, progress=None) -> Output:
    """The core's run, exactly as `pcsr upscale` makes it (same call, same arguments)."""
    pic = up.picture
    t0 = time.perf_counter()
    try:
        res = model.upscale_array(pic.rgb, routing, alpha=pic.alpha, bits=pic.bits, gray=pic.mode in ("L", "LA"),
                                  progress=progress)
    except PcsrError as err:
        raise PcsrError(f"{up.name}: {err}") from None
    except Exception as err:  # noqa: BLE001 - one line, as the command says it
        from ..cli.upscale import failure_reason
        raise PcsrError(failure_reason(Path(up.name), err)) from None
    seconds = time.perf_counter() - t0
    H, W = res.pixels.shape[:2]
    fig = Figures(W, H, int(res.flops), int(res.max_flops), res.counts, res.heavy_fraction)
    return Output(result_id, "exact", up.stem, res.pixels, res.alpha, pic.mode, pic.bits, res.classes,
                  model.num_classes, fig, seconds, float(model.scale), pic.icc_profile, pic.exif)


def prepare(model, up: Upload) -> Prepared | None:
    """The cached preview, or None where the engine's fast steps refuse this picture: the core
    then falls back to the reference engine itself, so the caller runs the core instead."""
    from ..engines import is_out_of_memory
    try:
        return Prepared(model, up.picture.rgb, up.picture.alpha)
    except (RuntimeError, NotImplementedError) as err:
        if is_out_of_memory(err):
            raise PcsrError(f"{up.name}: not enough memory for a live preview of this picture") from None
        return None


def run_preview(prepared: Prepared, up: Upload, routing, result_id: str, model) -> Output:
    t0 = time.perf_counter()
    routed = prepared.route(routing)
    seconds = time.perf_counter() - t0
    mode = "RGBA" if routed.pixels.shape[2] == 4 else "RGB"
    return Output(result_id, "preview", up.stem, routed.pixels, None, mode, 8, routed.classes, model.num_classes,
                  routed.figures, seconds, float(model.scale))
