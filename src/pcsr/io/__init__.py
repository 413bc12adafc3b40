"""Image files in and out: the only package that touches them (was pcsr/imageio.py).

Every failure a user can cause becomes an ImageError whose one-line message names
the file and the reason, so the CLI never shows a Pillow traceback. Writes are
atomic, so an interrupted run never leaves a partial image under the final name.

Modules: read (files and PIL images -> Picture), write (arrays -> files, resampling), codecs16
(16-bit PNG/TIFF encoders, full-depth 16-bit decoding), files (format tables, atomic writes with
exclusive publishing and stale-temporary removal, image discovery, output-folder checks).
Dependencies run one way: files and codecs16 import nothing of io; read imports both; write all three.

Supported:

* Reading: PNG, JPEG, WebP, BMP, TIFF, GIF and anything else Pillow opens; modes
  1, L, P (with or without transparency), LA, RGB, RGBA, CMYK, YCbCr, I;16, I, F.
  Gray stays gray on write-back. 16-bit RGB/RGBA PNG and TIFF and 16-bit gray+alpha
  PNG are read at full depth (Pillow alone would keep only the high byte).
* Writing: 8-bit PNG/JPEG/WebP/BMP/TIFF through Pillow; 16-bit PNG and TIFF through
  the small encoders of codecs16, because Pillow has no 16-bit RGB mode.

Limitations:

* Multi-frame files (animated GIF/WebP/PNG, multipage TIFF): only the first frame (with a warning).
* 16-bit gray+alpha TIFF is written as 16-bit RGBA, since Pillow cannot read the
  gray+alpha layout back; 16-bit gray+alpha TIFF files from elsewhere are read by
  whatever Pillow does with them.
* EXIF is carried into PNG, JPEG and WebP only, never into TIFF or BMP.
* CMYK is converted to RGB without colour management, and its CMYK ICC profile is
  dropped because it no longer describes the pixels.
"""

from ..errors import ImageError
from .files import (
    IMAGE_EXTENSIONS,
    STALE_SECONDS,
    WRITABLE_EXTENSIONS,
    atomic_write,
    check_output_dir,
    exclusive_writes,
    format_for,
    list_images,
    remove_stale_temporaries,
    temp_path,
)
from .read import DEFAULT_MAX_PIXELS, Picture, picture_from_pil, read_image
from .write import resample, write_image

__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "STALE_SECONDS", "WRITABLE_EXTENSIONS", "ImageError", "Picture",
    "atomic_write", "check_output_dir", "exclusive_writes", "format_for", "list_images", "picture_from_pil",
    "read_image", "remove_stale_temporaries", "resample", "temp_path", "write_image",
]
