"""The Python API against the command, on the same image in the same process: does
`pcsr.load().upscale(Image.open(path))` take the time `pcsr upscale path --json` reports?

Interleaved rounds (each round runs the command once and the API once, per precision), medians
and the median of the per-round ratios. The command's `seconds` cover read, upscale and write; the
API row is read + upscale, and "API + save" adds writing the same file. Prints a Markdown table.

    PYTHONPATH=src python benchmarks/api_vs_command.py --hr ../shared/official/demo_hr.png --rounds 7
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pcsr
from pcsr.cli import main
from pcsr.resize import imresize


def lr_file(hr: Path, folder: Path, scale: int = 4) -> Path:
    """The MATLAB-bicubic LR of `hr`, saved as an 8-bit PNG (what a user would upscale)."""
    x = torch.from_numpy(np.array(Image.open(hr).convert("RGB"))).permute(2, 0, 1).float() / 255
    h, w = x.shape[1] // scale * scale, x.shape[2] // scale * scale
    lr = imresize(x[:, :h, :w].unsqueeze(0), scale=1 / scale)[0].clamp(0, 1)
    path = folder / "lr.png"
    Image.fromarray((lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


def command_seconds(path: Path, out: Path, model: str | None, precision: str) -> float:
    argv = ["upscale", str(path), "-o", str(out), "--overwrite", "--json", "-q", "--precision", precision]
    argv += ["--model", model] if model else []
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    if code:
        sys.exit(f"pcsr upscale failed ({code})")
    return float(json.loads(buf.getvalue().strip().splitlines()[-1])["seconds"])


def main_(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hr", required=True, help="HR image; its x1/4 LR is upscaled")
    ap.add_argument("--model", default=None)
    ap.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = lr_file(Path(args.hr), tmp)
        models = {p: pcsr.load(args.model, precision=p) for p in args.precision}
        times = {(p, kind): [] for p in args.precision for kind in ("command", "api", "api+save")}
        for p, m in models.items():  # one warm-up each: first calls build oneDNN's primitives
            m.upscale(Image.open(path))
            command_seconds(path, tmp / "cmd.png", args.model, p)
        for _ in range(args.rounds):
            for p, m in models.items():
                times[p, "command"].append(command_seconds(path, tmp / "cmd.png", args.model, p))
                t0 = time.perf_counter()
                res = m.upscale(Image.open(path))
                t1 = time.perf_counter()
                res.save(tmp / "api.png")
                t2 = time.perf_counter()
                times[p, "api"].append(t1 - t0)
                times[p, "api+save"].append(t2 - t0)
        w, h = res.pixels.shape[1], res.pixels.shape[0]
        print(f"{Path(args.hr).name} LR -> {w}x{h}, model {args.model or 'bundled default'}, "
              f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds\n")
        print("| precision | command (s, median) | API (s) | API / command | API + save (s) | (API + save) / command |")
        print("|---|---:|---:|---:|---:|---:|")
        for p in args.precision:
            c, a, s = times[p, "command"], times[p, "api"], times[p, "api+save"]
            r1 = statistics.median(x / y for x, y in zip(a, c))
            r2 = statistics.median(x / y for x, y in zip(s, c))
            print(f"| {p} | {statistics.median(c):.3f} | {statistics.median(a):.3f} | {r1:.3f} | "
                  f"{statistics.median(s):.3f} | {r2:.3f} |")


if __name__ == "__main__":
    main_()
