"""Training patches: HR images decoded once into memory, random crops, LR made on the fly.

Decoding is the only slow part of loading an image; with every image held as uint8 in memory a
batch costs a few crops and one batched bicubic resize, so pre-extracting sub-images to disk (as
the reference recipe does) would buy nothing here and is not implemented.

All randomness comes from one `torch.Generator`, so the sequence of batches is fixed by the seed
and resumes exactly from a saved generator state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import PcsrError
from ..io import list_images, read_image
from ..models.heads import make_coord
from ..resize import imresize
from .config import DataConfig


@dataclass
class Batch:
    lr: torch.Tensor                    # (N, 3, h, w) float in [0, 1] (bicubic overshoot kept)
    hr: torch.Tensor                    # (N, 3, H, W), or (N, Q, 3) at the sampled queries
    scale: float
    coord: torch.Tensor | None = None   # (N, Q, 2) query centres in [-1, 1] when training on queries
    cell: torch.Tensor | None = None    # (N, Q, 2) output pixel sizes

    def to(self, device) -> "Batch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(mv(self.lr), mv(self.hr), self.scale, mv(self.coord), mv(self.cell))


def load_images(folders: list[str]) -> tuple[list[torch.Tensor], list[str]]:
    """Every image of the folders as a (3, H, W) uint8 tensor, in a fixed (sorted) order."""
    paths = list_images(folders)
    images = []
    for p in paths:
        rgb = read_image(p).rgb
        images.append(torch.from_numpy(np.ascontiguousarray(np.round(rgb * 255.0).astype(np.uint8).transpose(2, 0, 1))))
    return images, [str(p) for p in paths]


class PatchSampler:
    """Batches of random patches. Each image is picked with probability proportional to its area
    (so every HR pixel is equally likely to be trained on); images smaller than a crop are left out."""

    def __init__(self, images: list[torch.Tensor], cfg: DataConfig, scale: int, generator: torch.Generator,
                 device: torch.device | str = "cpu"):
        self.cfg, self.scale, self.gen, self.device = cfg, scale, generator, torch.device(device)
        top = max(cfg.scale_range) if cfg.scale_range else scale
        self.max_crop = math.ceil(cfg.lr_patch * top)
        self.images = [im for im in images if min(im.shape[-2:]) >= self.max_crop]
        self.skipped = len(images) - len(self.images)
        if not self.images:
            raise PcsrError(f"no training image is at least {self.max_crop} pixels on its short side "
                            f"(lr_patch {cfg.lr_patch} x scale {top})")
        self.weights = torch.tensor([float(im.shape[-1] * im.shape[-2]) for im in self.images], dtype=torch.float64)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.gen))

    def next(self) -> Batch:
        cfg, g = self.cfg, self.gen
        if cfg.scale_range:
            lo, hi = (float(v) for v in cfg.scale_range)
            s = lo + (hi - lo) * float(torch.rand(1, generator=g, dtype=torch.float64))
            crop = round(cfg.lr_patch * s)
        else:
            s, crop = float(self.scale), cfg.lr_patch * self.scale
        picks = torch.multinomial(self.weights, cfg.batch_size, replacement=True, generator=g)
        crops = []
        for i in picks.tolist():
            im = self.images[i]
            for _ in range(max(1, cfg.detail_tries) if cfg.min_detail > 0 else 1):
                y = self._randint(im.shape[-2] - crop + 1)
                x = self._randint(im.shape[-1] - crop + 1)
                patch = im[:, y:y + crop, x:x + crop]
                if cfg.min_detail <= 0 or detail(patch) >= cfg.min_detail:
                    break
            crops.append(patch)
        hr = torch.stack(crops)
        if cfg.augment:
            flips = (torch.rand(cfg.batch_size, 3, generator=g) < 0.5).tolist()
            hr = torch.stack([_augment(p, *f) for p, f in zip(hr, flips)])
        hr = hr.to(self.device).float().div_(255.0)
        lr = imresize(hr, size=(cfg.lr_patch, cfg.lr_patch))
        if not cfg.queries:
            return Batch(lr, hr, s)
        n, q = cfg.batch_size, min(cfg.queries, crop * crop)
        idx = torch.stack([torch.randperm(crop * crop, generator=g)[:q] for _ in range(n)]).to(self.device)
        coord = make_coord(crop, crop, self.device)[idx]                      # (N, Q, 2)
        cell = torch.tensor([2.0 / crop, 2.0 / crop], device=self.device).expand(n, q, 2).contiguous()
        gt = hr.reshape(n, 3, -1).gather(2, idx.unsqueeze(1).expand(n, 3, q)).permute(0, 2, 1)
        return Batch(lr, gt.contiguous(), s, coord, cell)


def detail(patch: torch.Tensor) -> float:
    """Mean absolute difference between horizontally and vertically neighbouring pixels of a
    (3, H, W) uint8 crop's gray level, on the 0-255 scale: about 1-2 for sky or defocus blur,
    10-30 for foliage, text or fabric."""
    g = patch.float().mean(0)
    return 0.5 * float((g[:, 1:] - g[:, :-1]).abs().mean() + (g[1:] - g[:-1]).abs().mean())


def _augment(patch: torch.Tensor, hflip: bool, vflip: bool, transpose: bool) -> torch.Tensor:
    if hflip:
        patch = patch.flip(-1)
    if vflip:
        patch = patch.flip(-2)
    if transpose:
        patch = patch.transpose(-1, -2)
    return patch
