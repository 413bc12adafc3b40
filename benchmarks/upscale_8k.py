"""Upscale a 1920x1080 LR image x4 to 7680x4320 and print wall time and peak resident memory.

    PYTHONPATH=src python benchmarks/upscale_8k.py [--model NAME|PATH] [--device cpu|cuda] [--tile N] [--per-mp]

The LR is a mosaic of the bench images (../shared/data/bench), each downscaled x2 with the
MATLAB-compatible bicubic, or noise over gradients when they are not there. It goes through the
same steps as `pcsr upscale` (read, tiled upscale, atomic write); the target is a peak RSS under
2.5 GB, which holds only if the result lives in host memory as 8-bit samples. --per-mp also times
two 2K outputs (480x270 LR crops of the same mosaic, median of 5, interleaved) and compares the
time per output megapixel (issue #5: the 8K figure within 20 % of the 2K one), with the FLOPs per
megapixel of each (content sets those: the crops' heavy shares differ from the mosaic's).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pcsr import api, imageio, tiling, weights  # noqa: E402
from pcsr.models.pcsr import Routing  # noqa: E402
from pcsr.resize import imresize  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "official" / "carn-pcsr-phase1.pth"
BENCH = ROOT.parent / "shared" / "data" / "bench"
LR_W, LR_H = 1920, 1080


def default_model() -> str:
    if weights.DEFAULT_MODEL in weights.bundled_models():
        return weights.DEFAULT_MODEL
    return str(REFERENCE)


def mosaic(width: int = LR_W, height: int = LR_H, cell: int = 160) -> np.ndarray:
    """(H, W, 3) float32: bench photos at half size, centre-cropped to square cells, one at a time."""
    files = imageio.list_images(sorted(str(p) for p in BENCH.glob("*") if p.is_dir())) if BENCH.is_dir() else []
    if not files:
        return synthetic(width, height)
    out = np.zeros((height, width, 3), dtype=np.float32)
    cells = [(y, x) for y in range(0, height, cell) for x in range(0, width, cell)]
    for (y, x), path in zip(cells, files * (len(cells) // len(files) + 1)):
        hr = torch.from_numpy(imageio.read_image(path).rgb).permute(2, 0, 1)
        small = imresize(hr, 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
        h, w = small.shape[:2]
        if min(h, w) < cell:
            small = np.pad(small, ((0, max(0, cell - h)), (0, max(0, cell - w)), (0, 0)), mode="reflect")
            h, w = small.shape[:2]
        top, left = (h - cell) // 2, (w - cell) // 2
        put = small[top:top + cell, left:left + cell][: height - y, : width - x]
        out[y:y + put.shape[0], x:x + put.shape[1]] = put
    return out


def synthetic(width: int, height: int) -> np.ndarray:
    """Smooth gradients (cheap for the classifier) and noisy patches (heavy)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 37.0) * np.cos(yy / 23.0)], axis=2)
    noisy = ((xx // 128 + yy // 128) % 3 == 0)[..., None]
    img = np.where(noisy, img * 0.6 + 0.4 * rng.random(img.shape, dtype=np.float32), img)
    return img.astype(np.float32)


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="bundled name or path (default: bundled default, else the "
                                                   "converted reference carn-pcsr-phase1.pth)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--tile", type=int, default=None, help="LR tile side (default: from free memory)")
    ap.add_argument("-k", type=float, default=0.0)
    ap.add_argument("--adaptive", action="store_true")
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--keep", default=None, help="keep the 8K result at this path (default: a temporary file)")
    ap.add_argument("--per-mp", action="store_true", help="also time 2K crops and compare seconds per output MP")
    args = ap.parse_args()
    from pcsr.runtime import keep_freed_memory
    keep_freed_memory()  # as the pcsr command does

    name = args.model or default_model()
    t = time.perf_counter()
    model = api.load(name, device=args.device, precision=args.precision)
    print(f"model      {name} ({model.spec.backbone}, x{model.scale}) on {model.device}, {model.precision}, "
          f"loaded in {time.perf_counter() - t:.1f} s")
    print(f"threads    {torch.get_num_threads()}")
    routing = Routing(k=args.k, adaptive=args.adaptive, budget=args.budget)

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "lr.png"
        imageio.write_image(src, mosaic())
        dst = Path(args.keep) if args.keep else Path(tmp) / "sr.png"
        rss_before = rss_gb()

        t0 = time.perf_counter()
        pic = imageio.read_image(src)
        lr = torch.from_numpy(pic.rgb).permute(2, 0, 1)
        t1 = time.perf_counter()
        res = tiling.upscale(model, lr, routing, tile=args.tile, bits=pic.bits)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        imageio.write_image(dst, res.pixels, mode=pic.mode, bits=pic.bits)
        t3 = time.perf_counter()

    H, W = res.pixels.shape[:2]
    heavy = "" if res.heavy_fraction is None else f", heavy {100 * res.heavy_fraction:.1f} %"
    print(f"image      {lr.shape[2]}x{lr.shape[1]} -> {W}x{H}; tile {res.tile or 'none'} LR px "
          f"(+{tiling.required_context(model)} context), {res.tiles} tiles per pass")
    print(f"flops      {res.flops / 1e12:.3f} T of {res.max_flops / 1e12:.3f} T "
          f"({100 * res.flops / res.max_flops:.1f} %){heavy}")
    print(f"time       read {t1 - t0:.1f} s, upscale {t2 - t1:.1f} s, write PNG {t3 - t2:.1f} s, "
          f"total {t3 - t0:.1f} s")
    print(f"peak RSS   {rss_gb():.2f} GB (before the image: {rss_before:.2f} GB; target < 2.5 GB)")
    if model.device.type == "cuda":
        print(f"peak GPU   {torch.cuda.max_memory_allocated(model.device) / 1024**3:.2f} GB allocated")
    if args.per_mp:
        per_mp_8k = (t2 - t1) / (H * W / 1e6)
        print(f"per MP     8K {per_mp_8k:.3f} s/MP, {res.flops / (H * W) / 1e3:.1f} GFLOPs/MP")
        crops = {"2K top-left": (0, 0), "2K bottom-right": (LR_H - 270, LR_W - 480)}
        crops = {name: lr[:, y:y + 270, x:x + 480] for name, (y, x) in crops.items()}
        times: dict[str, list[float]] = {name: [] for name in crops}
        outs = {name: tiling.upscale(model, c, routing, tile=args.tile, bits=pic.bits) for name, c in crops.items()}
        for _ in range(5):  # interleaved, so that the machine's drift moves both crops alike
            for name, crop in crops.items():
                t = time.perf_counter()
                outs[name] = tiling.upscale(model, crop, routing, tile=args.tile, bits=pic.bits)
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
        for name, out in outs.items():
            mp = out.pixels.shape[0] * out.pixels.shape[1] / 1e6
            per_mp = sorted(times[name])[2] / mp
            print(f"per MP     {name} {per_mp:.3f} s/MP, {out.flops / mp / 1e9:.1f} GFLOPs/MP; "
                  f"8K is {100 * (per_mp_8k / per_mp - 1):+.0f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
