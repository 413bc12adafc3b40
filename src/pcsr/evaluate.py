"""`pcsr eval`: the benchmark protocol. HR images are cropped to a multiple of the scale, made LR by
the MATLAB-compatible bicubic, super-resolved, rounded to 8 bits and compared with the HR
(BasicSR conventions: a border of `scale` pixels shaved; Y per MATLAB's rgb2ycbcr, rounded)."""
from __future__ import annotations

import time
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np
import torch

from .api import Model
from .imageio import list_images, read_image
from .metrics import psnr
from .models.pcsr import Routing
from .resize import imresize


@dataclass
class ImageScore:
    name: str
    psnr_rgb: float
    psnr_y: float
    flops: int
    max_flops: int
    heavy_fraction: float | None
    seconds: float


def hr_tensor(path) -> torch.Tensor:
    """(3, H, W) float in [0, 1] from any image file (gray is replicated to RGB)."""
    pic = read_image(path)
    return torch.from_numpy(np.ascontiguousarray(pic.rgb)).permute(2, 0, 1).float()


def make_lr(hr: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop HR to a multiple of the scale (top-left part kept) and downscale it: (hr, lr)."""
    h, w = hr.shape[-2] // scale * scale, hr.shape[-1] // scale * scale
    hr = hr[..., :h, :w]
    return hr, imresize(hr, 1.0 / scale)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def score_image(model: Model, hr: torch.Tensor, scale: int, routing: Routing | None, name: str = "") -> ImageScore:
    hr, lr = make_lr(hr, scale)
    t0 = time.perf_counter()
    res = model.run(lr.unsqueeze(0), routing, scale=scale)
    seconds = time.perf_counter() - t0
    sr, ref = to_uint8(res.sr[0].cpu()), to_uint8(hr)
    heavy = None
    if res.counts is not None:
        heavy = res.counts[0][-1] / sum(res.counts[0])
    return ImageScore(
        name=name,
        psnr_rgb=psnr(sr, ref, shave=scale),
        psnr_y=psnr(sr, ref, shave=scale, y_channel=True),
        flops=int(res.flops[0]), max_flops=int(res.max_flops[0]), heavy_fraction=heavy, seconds=seconds,
    )


def evaluate(model: Model, data: str | Path | list, scale: int | None = None, routing: Routing | None = None,
             progress: bool = False) -> dict:
    """Mean figures over the images of a folder (or a list of paths), and the per-image rows."""
    scale = int(scale or model.scale)
    paths = list_images([str(data)] if isinstance(data, (str, Path)) else [str(p) for p in data])
    rows = []
    it = paths
    if progress:
        from tqdm import tqdm
        it = tqdm(paths, desc="eval", unit="img", leave=False)
    t0 = time.perf_counter()
    for p in it:
        rows.append(score_image(model, hr_tensor(p), scale, routing, name=Path(p).name))
    n = len(rows)
    heavy = [r.heavy_fraction for r in rows if r.heavy_fraction is not None]
    return {
        "psnr_rgb": sum(r.psnr_rgb for r in rows) / n,
        "psnr_y": sum(r.psnr_y for r in rows) / n,
        "gflops": sum(r.flops for r in rows) / n / 1e9,
        "max_gflops": sum(r.max_flops for r in rows) / n / 1e9,
        "heavy_fraction": sum(heavy) / len(heavy) if heavy else None,
        "images": n,
        "seconds": time.perf_counter() - t0,
        "per_image": [asdict(r) for r in rows],
    }
