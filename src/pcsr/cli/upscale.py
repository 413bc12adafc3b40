"""`pcsr upscale`: the batch driver. Files, folders and globs in; one upscaled file per image out.

Each input either succeeds or fails on its own with a one-line reason, so a bad file never costs
the rest of a batch. Outputs are written atomically and never replace an input, nor an existing
file unless --overwrite is given. Under torchrun (RANK / WORLD_SIZE set) every process takes
inputs[rank::world]; no process group is needed since the ranks never talk to each other.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import args as cliargs
from ..classmap import tint
from ..errors import ImageError, PcsrError
from ..io import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, WRITABLE_EXTENSIONS, check_output_dir, exclusive_writes,
                 format_for, list_images, read_image, write_image)

if TYPE_CHECKING:  # the core imports torch; the command imports it only where it runs a model
    from ..core import Core

# torch, and the modules that import it, are imported where they are used: `pcsr --help` and
# usage errors then answer at once instead of after torch's two-second import.

EXTENSIONS = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tif": ".tif"}


# ----------------------------------------------------------------------------- command line
def add_parser(sub) -> None:
    p = sub.add_parser(
        "upscale", help="super-resolve image files (files, folders, globs)",
        description="Upscale every input image by the model's scale. Large images are processed in tiles "
                    "with enough context that the result equals the untiled one; adaptive and budget "
                    "routing are decided over the whole image. Under torchrun the inputs are split "
                    "across the processes.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image files, folders or glob patterns. A folder gives its images except the earlier "
                        "results of this command beside their sources (<stem>_<suffix>.<ext> next to "
                        "<stem>.<ext>, and *_classes.png), which are skipped with one note line")
    p.add_argument("-i", "--input", dest="more_inputs", action="append", default=[], metavar="INPUT",
                   help="an input as -i gives it in Real-ESRGAN's scripts (may be repeated; adds to INPUT)")
    p.add_argument("-o", "--output", dest="outdir", default=None, metavar="OUT",
                   help="output folder (default: next to each input); with a single input image, also a "
                        "file name with an image extension (.png, .jpg, .webp, .tif, .bmp), which sets the format")
    p.add_argument("-s", "--outscale", type=_scale, default=None, metavar="S",
                   help="final scale of the output against the input (default: the model's own, 4 for the "
                        "bundled model). A PCSR model trained for a range of scales runs at S natively; "
                        "otherwise another value resizes the model's result with Lanczos, as Real-ESRGAN's "
                        "--outscale does (a note says so)")
    p.add_argument("--suffix", default=None,
                   help="added to the output name: <stem>_<suffix>.<ext> (default x<scale>, e.g. x4 or x2.5)")
    p.add_argument("--ext", default="auto", choices=["auto", *EXTENSIONS],
                   help="output format (default auto: the input's own)")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="bundled model name or path (.safetensors, reference .pth)")
    cliargs.add_routing(p)
    p.add_argument("-t", "--tile", type=cliargs.whole(0), default=None, metavar="N",
                   help="tile side in LR pixels (default: from free memory; 0: never tile; a side below the "
                        "tiling minimum is refused, naming it)")
    p.add_argument("--tile-pad", type=cliargs.whole(0), default=None, metavar="P",
                   help="LR pixels of context around each tile (default and minimum: the model's receptive radius + 2)")
    p.add_argument("--device", default="auto", type=_device, help="auto, cpu or cuda[:N]")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: a reduced precision only where measured harmless for the model and fast "
                        "on this hardware, else fp32")
    p.add_argument("--class-map", action="store_true",
                   help="also write <stem>_<suffix>_classes.png: the result tinted by upsampler (green light, red heavy)")
    p.add_argument("--max-pixels", type=cliargs.whole(1), default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="refuse inputs with more pixels (default 2^28)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    p.set_defaults(func=run, usage_error=p.error)


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 < value <= 64):
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 64, got {text}")
    return value


def scale_label(scale: float) -> str:
    """x4, x2.5: the default suffix."""
    return f"x{scale:g}"


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


# ----------------------------------------------------------------------------- planning
@dataclass
class Job:
    """One input image and where its results go; `error` set means it will not be run."""

    input: Path
    output: Path | None = None
    class_map: Path | None = None
    error: str | None = None


def rank_and_world(environ=os.environ) -> tuple[int, int]:
    """torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    try:
        rank, world = int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise PcsrError("RANK and WORLD_SIZE must be whole numbers") from None
    if world < 1 or not 0 <= rank < world:
        raise PcsrError(f"RANK={rank} is not within WORLD_SIZE={world}")
    return rank, world


def expand_inputs(items: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Images of every input item, once each, and (item, reason) for items that give none."""
    found: list[Path] = []
    seen: set[str] = set()
    failed = []
    for item in items:
        try:
            paths = list_images([item], unreadable=True)  # named pipes, link loops: one line each
        except ImageError as err:
            failed.append((item, str(err)))
            continue
        for path in paths:
            key = _key(path)
            if key not in seen:
                seen.add(key)
                found.append(path)
    return found, failed


def _key(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path))


def earlier_outputs(images: list[Path], folders: list[Path], suffix: str) -> set[str]:
    """Keys of the images found in `folders` that are this command's own earlier results: named
    <stem>_<suffix>.<image ext> beside a source <stem>.<any image ext>, or <name>_classes.png beside
    an image <name>.<ext> (the class map written next to its result). Upscaling them again would
    only make <stem>_<suffix>_<suffix> files; named one by one or by a glob, they are taken."""
    if not suffix or not folders:
        return set()
    roots = {_key(f) for f in folders}
    image_exts = {e.lower() for e in (*IMAGE_EXTENSIONS, *_pillow_extensions())}
    stems: dict[Path, set[str]] = {}
    skip = set()
    for path in images:
        if _key(path.parent) not in roots:
            continue
        if path.parent not in stems:
            try:
                names = os.listdir(path.parent)
            except OSError:
                names = []
            stems[path.parent] = {os.path.splitext(n)[0] for n in names if os.path.splitext(n)[1].lower() in image_exts}
        here, stem = stems[path.parent], path.stem
        if stem.endswith("_classes") and stem[:-len("_classes")] in here:
            skip.add(_key(path))
        elif stem.endswith(f"_{suffix}") and stem[:-len(suffix) - 1] in here:
            skip.add(_key(path))
    return skip


def _pillow_extensions() -> list[str]:
    from PIL import Image
    Image.init()
    return list(Image.registered_extensions())


def output_name(path: Path, suffix: str, ext: str) -> str:
    if ext == "auto":
        own = path.suffix
        ext = own if own.lower() in IMAGE_EXTENSIONS else ".png"  # e.g. GIF in, PNG out
    else:
        ext = EXTENSIONS[ext]
    return f"{path.stem}_{suffix}{ext}" if suffix else f"{path.stem}{ext}"


def output_file(out: str | None) -> Path | None:
    """`-o` as a file name: an image extension, and not an existing folder."""
    if out is None:
        return None
    path = Path(out)
    return path if path.suffix.lower() in WRITABLE_EXTENSIONS and not path.is_dir() else None


def plan_jobs(images: list[Path], outdir: str | None, suffix: str, ext: str, class_map: bool,
              overwrite: bool, out_file: Path | None = None) -> list[Job]:
    """Outputs for every image of every rank, so that all ranks agree on name clashes. `out_file`:
    the one image's output named by the user (suffix and --ext do not apply)."""
    inputs = {_key(p): p for p in images}
    claimed: dict[str, Path] = {}
    jobs = []
    for path in images:
        folder = Path(outdir) if outdir is not None else path.parent
        out = folder / output_name(path, suffix, ext)
        cmap = folder / f"{Path(output_name(path, suffix, 'png')).stem}_classes.png" if class_map else None
        if out_file is not None:
            out, cmap = out_file, out_file.with_name(f"{out_file.stem}_classes.png") if class_map else None
        job = Job(path, out, cmap)
        for target in (t for t in (out, cmap) if t is not None):
            key = _key(target)
            if key in inputs:
                job.error = f"{path}: the output {target} would replace an input image; choose another --suffix or -o"
            elif key in claimed:
                job.error = f"{path}: the output {target} is also the output of {claimed[key]}; use another -o or --ext"
            elif target.exists() and not overwrite:
                job.error = f"{path}: {target} already exists (use --overwrite to replace it)"
            if job.error:
                break
        if job.error is None:
            for target in (t for t in (out, cmap) if t is not None):
                claimed[_key(target)] = path
        jobs.append(job)
    return jobs


# ----------------------------------------------------------------------------- running
@dataclass
class Outcome:
    width: int
    height: int
    flops: int
    max_flops: int
    heavy_fraction: float | None
    seconds: float


def upscale_file(model: Core, job: Job, routing, *, tile=None, pad=None,
                 max_pixels=DEFAULT_MAX_PIXELS, progress=None, outscale: float | None = None) -> Outcome:
    """Read, upscale (by the inference core), write one image and its class map; raises PcsrError
    with a one-line reason. The core prepares the process's memory before the first image."""
    t0 = time.perf_counter()
    pic = read_image(job.input, max_pixels=max_pixels)
    try:
        res = model.upscale_array(pic.rgb, routing, alpha=pic.alpha, bits=pic.bits, gray=pic.mode in ("L", "LA"),
                                  scale=outscale, tile=tile, context=pad, progress=progress)
    except PcsrError as err:
        raise PcsrError(f"{job.input}: {err}") from None
    pic.rgb = None  # the LR samples are not needed for writing
    write_image(job.output, res.pixels, alpha=res.alpha, mode=pic.mode, bits=pic.bits,
                icc_profile=pic.icc_profile, exif=pic.exif)
    if job.class_map is not None and res.classes is not None:
        write_image(job.class_map, tint(res.pixels, res.classes, model.num_classes))
    H, W = res.pixels.shape[:2]
    return Outcome(W, H, res.flops, res.max_flops, res.heavy_fraction, time.perf_counter() - t0)


def _human(flops: int) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if flops >= size:
            return f"{flops / size:.1f}{unit}"
    return str(flops)


class _Report:
    """One line per image on stdout (text or JSON); reasons for failures on stderr."""

    def __init__(self, as_json: bool, bars: bool):
        self.as_json, self.bars = as_json, bars
        self.failures = 0

    def _out(self, line: str) -> None:
        if self.bars:  # keeps the progress bars intact on a terminal
            from tqdm import tqdm
            tqdm.write(line + "\n", file=sys.stdout, end="")  # one write, as _line
        else:
            _line(sys.stdout, line)

    def ok(self, job: Job, o: Outcome) -> None:
        if self.as_json:
            self._out(json.dumps({
                "input": str(job.input), "output": str(job.output), "width": o.width, "height": o.height,
                "flops": o.flops, "max_flops": o.max_flops, "heavy_fraction": o.heavy_fraction,
                "seconds": round(o.seconds, 4), "error": None}))
            return
        share = 100.0 * o.flops / o.max_flops if o.max_flops else 100.0
        self._out(f"{job.input} -> {job.output}  {o.width}x{o.height}  flops: {_human(o.flops)} ({share:.1f} %) | "
                  f"max_flops: {_human(o.max_flops)} (100 %)  {o.seconds:.2f} s")

    def fail(self, input_: str, output: Path | None, message: str) -> None:
        self.failures += 1
        _line(sys.stderr, f"pcsr upscale: error: {message}")
        if self.as_json:
            self._out(json.dumps({
                "input": input_, "output": None if output is None else str(output), "width": None, "height": None,
                "flops": None, "max_flops": None, "heavy_fraction": None, "seconds": None, "error": message}))


def _line(stream, text: str) -> None:
    """One write per line: ranks share stdout, and print's separate newline could interleave."""
    stream.write(text + "\n")
    stream.flush()


def _device_for_rank(device: str, world: int) -> str:
    """One GPU per local process when torchrun starts several on a machine with several GPUs."""
    import torch
    if world > 1 and device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    return device


def run(args) -> int:
    items = list(args.inputs) + list(args.more_inputs)
    if not items:
        args.usage_error("give at least one input image, folder or glob (INPUT or -i INPUT)")
    try:
        cliargs.check_routing_args(args)
    except PcsrError as err:
        args.usage_error(str(err))
    if args.tile:  # None: from free memory; 0: never tile
        from ..tiling import MIN_TILE  # (imports torch: only when a tile side is given)
        if args.tile < MIN_TILE:
            args.usage_error(f"--tile must be 0 (never tile) or at least {MIN_TILE} LR pixels, got {args.tile}")
    rank, world = rank_and_world()
    report = _Report(args.json, bars=not args.quiet and rank == 0)
    images, bad_items = expand_inputs(items)
    if rank == 0:  # every rank sees the same items; one report is enough
        for item, message in bad_items:
            report.fail(item, None, message)
    out_file = output_file(args.outdir)
    if out_file is not None:
        if len(images) + len(bad_items) != 1:
            args.usage_error(f"-o {args.outdir} names an image file, but the inputs give {len(images)} images; "
                             "give -o a folder")
        if args.ext != "auto" and format_for(EXTENSIONS[args.ext]) != format_for(out_file.suffix):
            args.usage_error(f"--ext {args.ext} contradicts -o {args.outdir}")
        check_output_dir(out_file.parent)  # fail before the model loads, not after the first image
    elif args.outdir is not None:
        check_output_dir(args.outdir)
    if not images[rank::world]:
        return 1 if report.failures else 0

    from .. import api, tiling
    routing = cliargs.routing_from_args(args)
    model = api.load(args.model, device=_device_for_rank(args.device, world), precision=args.precision)
    need = tiling.required_context(model)
    if args.tile_pad is not None and args.tile_pad < need:
        args.usage_error(f"--tile-pad {args.tile_pad} is below this model's need of {need} LR pixels of context")
    if args.class_map and not model.is_pcsr:
        _line(sys.stderr, "pcsr upscale: note: --class-map ignored, this model has no upsampler classes")
    if args.outscale is not None and not model.native(args.outscale) and rank == 0:
        _line(sys.stderr, f"pcsr upscale: note: the model was trained for x{model.scale:g} only; -s {args.outscale:g} "
                          "resizes its result with Lanczos")
    suffix = args.suffix if args.suffix is not None else scale_label(args.outscale or model.scale)
    skipped = earlier_outputs(images, [Path(i) for i in items if Path(i).is_dir()], suffix)
    if skipped:
        images = [p for p in images if _key(p) not in skipped]
        if rank == 0:
            _line(sys.stderr, f"pcsr upscale: note: skipped {len(skipped)} earlier output(s) of pcsr upscale in the "
                              "input folders; name them as inputs to upscale them again")
    jobs = plan_jobs(images, args.outdir, suffix, args.ext, args.class_map and model.is_pcsr, args.overwrite,
                     out_file)
    mine = jobs[rank::world]

    from tqdm import tqdm
    bars = report.bars

    def tile_bar(total: int):
        return tqdm(total=total, desc="tiles", unit="tile", leave=False, file=sys.stderr, disable=not bars)

    writable: dict[str, str | None] = {}
    with exclusive_writes(not args.overwrite):  # a file another run publishes meanwhile is kept
        for job in tqdm(mine, desc="upscale", unit="img", file=sys.stderr, disable=not bars or len(mine) < 2):
            if job.error is None and args.outdir is None:
                job.error = _folder_error(job.input, job.output.parent, writable)
            if job.error is not None:
                report.fail(str(job.input), job.output, job.error)
                continue
            try:
                outcome = upscale_file(model, job, routing, tile=args.tile, pad=args.tile_pad,
                                       max_pixels=args.max_pixels, progress=tile_bar, outscale=args.outscale)
            except Exception as err:  # noqa: BLE001 - one bad image must never cost the rest of the batch
                # (KeyboardInterrupt and the signals turned into it are BaseException: they still stop the run)
                report.fail(str(job.input), job.output, failure_reason(job.input, err))
                continue
            report.ok(job, outcome)
    return 1 if report.failures else 0


def failure_reason(path: Path, err: BaseException) -> str:
    """`<input>: <reason>` on one line, whatever went wrong: our own errors say it already; anything
    else (torch refusing a tiny image, an OSError, a bug) is named by its type, since its message
    alone may make no sense to the user."""
    if isinstance(err, PcsrError):
        text = str(err)
    elif isinstance(err, MemoryError):
        text = "not enough memory for this image"
    elif isinstance(err, OSError):
        text = f"{err.strerror or type(err).__name__}" + (f" ({err.filename})" if err.filename else "")
    else:
        text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    text = " ".join(text.split())  # one line, however the message was laid out
    if len(text) > 300:
        text = text[:297] + "..."
    name = str(path)
    return text if text.startswith(name) else f"{name}: {text}"


def _folder_error(path: Path, folder: Path, cache: dict[str, str | None]) -> str | None:
    key = str(folder)
    if key not in cache:
        try:
            check_output_dir(folder)
            cache[key] = None
        except PcsrError as err:
            cache[key] = f"cannot write the output ({err})"
    return None if cache[key] is None else f"{path}: {cache[key]}"
