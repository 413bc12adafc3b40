"""Class-map colours, one definition for every picture of where the compute went (`pcsr upscale
--class-map`, `pcsr eval --save-images`, the figures of docs/, and anything later).

Light green for the cheapest class and red for the costliest, as in the paper's figures; the
classes between take colours that stay apart from both and from each other. A class map is
shown over the image it routed, blended at OPACITY.
"""
from __future__ import annotations

import numpy as np

OPACITY = 0.65
LIGHT, HEAVY = (144, 238, 144), (255, 0, 0)
MIDDLE = ((255, 215, 0), (30, 144, 255), (255, 140, 0), (186, 85, 211), (0, 206, 209), (139, 69, 19))


def class_colours(m: int) -> np.ndarray:
    """(M, 3) uint8: light green, distinct middles, red."""
    middle = [MIDDLE[i % len(MIDDLE)] for i in range(max(0, m - 2))]
    return np.array([LIGHT, *middle, HEAVY][:m] if m > 1 else [LIGHT], dtype=np.uint8)


def tint(pixels: np.ndarray, classes: np.ndarray, m: int, rows: int = 256) -> np.ndarray:
    """The image (H, W, C) uint8 or uint16 (C = 1 or 3) blended with its class colours at OPACITY,
    as 8-bit RGB, a band of rows at a time. `classes` (H, W): integer classes, or a float level
    between them (an average over overlapping patches) that blends the two neighbouring colours."""
    H, W = classes.shape
    colours = class_colours(m).astype(np.float32) * np.float32(OPACITY)
    out = np.empty((H, W, 3), dtype=np.uint8)
    top = np.float32(65535.0 if pixels.dtype == np.uint16 else 255.0)
    whole = np.issubdtype(classes.dtype, np.integer)
    for y in range(0, H, rows):
        band = pixels[y:y + rows].astype(np.float32) * (np.float32(255.0 * (1 - OPACITY)) / top)
        c = classes[y:y + rows]
        if whole:
            band = band + colours[c]  # gray (H, W, 1) broadcasts to RGB
        else:
            level = np.clip(c.astype(np.float32), 0, m - 1)
            lo = np.floor(level).astype(np.int64)
            hi = np.minimum(lo + 1, m - 1)
            frac = (level - lo)[..., None]
            band = band + colours[lo] * (1 - frac) + colours[hi] * frac
        out[y:y + rows] = np.rint(np.clip(band, 0, 255)).astype(np.uint8)
    return out
