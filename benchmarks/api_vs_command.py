"""The Python API against the command, on the same image in the same process: does
`pcsr.load().upscale(Image.open(path))` take the time `pcsr upscale path --json` reports?

Interleaved rounds (each round runs the command once and the API once, per precision), medians
and the median of the per-round ratios. The command's `seconds` cover read, upscale and write; the
API row is read + upscale, and "API + save" adds writing the same file. Prints a Markdown table.

Same process conditions: a `pcsr upscale` run loads its model and prepares the heap (prefaults
the first image's working memory) once, as a loaded API model does on its first call. Each
command run therefore gets `--images` copies of the image and its later images' times are compared
with the warm API model's (the first image's time, with the preparation, is shown apart).

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


def command_seconds(paths: list[Path], out: Path, model: str | None, precision: str) -> list[float]:
    """Per-image seconds of one `pcsr upscale` run over `paths`, in order."""
    argv = ["upscale", *map(str, paths), "-o", str(out), "--overwrite", "--json", "-q", "--precision", precision]
    argv += ["--model", model] if model else []
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    if code:
        sys.exit(f"pcsr upscale failed ({code})")
    lines = [json.loads(x) for x in buf.getvalue().strip().splitlines()]
    by_input = {line["input"]: float(line["seconds"]) for line in lines}
    return [by_input[str(p)] for p in paths]


def main_(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hr", required=True, help="HR image; its x1/4 LR is upscaled")
    ap.add_argument("--model", default=None)
    ap.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--images", type=int, default=3, help="copies of the image per command run")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = lr_file(Path(args.hr), tmp)
        copies = [path] + [tmp / f"copy{i}.png" for i in range(1, args.images)]
        for c in copies[1:]:
            c.write_bytes(path.read_bytes())
        models = {p: pcsr.load(args.model, precision=p) for p in args.precision}
        times = {(p, kind): [] for p in args.precision for kind in ("command", "first", "api", "api+save")}
        for p, m in models.items():  # one warm-up each: first calls build oneDNN's primitives
            m.upscale(Image.open(path))
            command_seconds(copies, tmp / "cmd", args.model, p)
        for _ in range(args.rounds):
            for p, m in models.items():
                secs = command_seconds(copies, tmp / "cmd", args.model, p)
                times[p, "first"].append(secs[0])
                times[p, "command"].append(statistics.median(secs[1:]))
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
        print("| precision | command, first image (s) | command, later images (s) | API (s) | API / command | "
              "API + save (s) | (API + save) / command |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for p in args.precision:
            c, a, s = times[p, "command"], times[p, "api"], times[p, "api+save"]
            r1 = statistics.median(x / y for x, y in zip(a, c))
            r2 = statistics.median(x / y for x, y in zip(s, c))
            print(f"| {p} | {statistics.median(times[p, 'first']):.3f} | {statistics.median(c):.3f} | "
                  f"{statistics.median(a):.3f} | {r1:.3f} | {statistics.median(s):.3f} | {r2:.3f} |")


if __name__ == "__main__":
    main_()
