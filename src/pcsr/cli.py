"""The `pcsr` command. Each subcommand is a thin wrapper over the modules of the package.

Errors a user can cause print as one line on stderr (exit 1, or 2 for bad usage), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import PcsrError


# ----------------------------------------------------------------------------- convert
def _add_convert(sub):
    p = sub.add_parser("convert", help="import a reference PCSR checkpoint (.pth) into our .safetensors format",
                       description="Import the authors' released checkpoints ({model: {name, args, sd}}) "
                                   "without unpickling arbitrary objects (torch.load weights_only=True).")
    p.add_argument("src", help="reference checkpoint (.pth)")
    p.add_argument("-o", "--output", required=True, help="destination .safetensors file")
    p.set_defaults(func=_convert)


def _convert(args) -> int:
    from . import weights
    spec = weights.convert(args.src, args.output)
    kind = "PCSR" if spec.is_pcsr else "original"
    print(f"{args.src} -> {args.output}  ({kind} {spec.backbone} x{spec.scale})")
    return 0


# ----------------------------------------------------------------------------- eval
def _add_eval(sub):
    p = sub.add_parser("eval", help="PSNR / FLOPs of a model on folders of HR images",
                       description="For every image: crop HR to a multiple of the scale, make LR with the "
                                   "MATLAB-compatible bicubic, super-resolve, and compare (PSNR on RGB and Y, "
                                   "scale-pixel border shaved, 8-bit rounded outputs). Prints the means.")
    p.add_argument("--model", default=None, help="bundled model name or path (.safetensors, reference .pth)")
    p.add_argument("--data", required=True, help="folder of HR images")
    _add_routing(p)
    p.add_argument("--scale", type=int, default=None, help="scale (default: the model's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--per-image", action="store_true", help="also list every image")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=_eval)


def _add_routing(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("-k", "--k", type=float, default=0.0,
                   help="cost rule: class = argmax p_j / cost_j^k; 0 = plain argmax, larger = cheaper (default 0)")
    g.add_argument("--adaptive", action="store_true", help="adaptive decision (k-means over the whole image)")
    g.add_argument("--budget", type=float, default=None, metavar="F",
                   help="send this fraction (0..1) of the pixels to the heavy upsampler")
    p.add_argument("--no-refine", action="store_true", help="switch off the pixel-wise refinement")


def routing_from_args(args):
    from .models.pcsr import Routing
    if args.budget is not None and not 0.0 <= args.budget <= 1.0:
        raise PcsrError(f"--budget must be between 0 and 1, got {args.budget}")
    return Routing(k=args.k, adaptive=args.adaptive, budget=args.budget, refine=not args.no_refine)


def _eval(args) -> int:
    from . import api
    from .evaluate import evaluate
    model = api.load(args.model, device=args.device, precision=args.precision)
    res = evaluate(model, args.data, scale=args.scale, routing=routing_from_args(args), progress=not args.json)
    if not args.per_image:
        res.pop("per_image")
    if args.json:
        print(json.dumps(res))
        return 0
    if args.per_image:
        for r in res["per_image"]:
            print(f"{r['name']:24s} {r['psnr_rgb']:7.3f} {r['psnr_y']:7.3f}  {r['flops'] / 1e9:8.3f} GFLOPs")
    hf = "" if res["heavy_fraction"] is None else f"  heavy {res['heavy_fraction'] * 100:5.1f} %"
    print(f"{args.data}: {res['images']} images  PSNR {res['psnr_rgb']:.3f} dB (RGB) {res['psnr_y']:.3f} dB (Y)  "
          f"{res['gflops']:.3f} / {res['max_gflops']:.3f} GFLOPs{hf}  {res['seconds']:.1f} s")
    return 0


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(
        prog="pcsr", description="Image super-resolution that spends compute only where the image needs it.")
    parser.add_argument("--version", action="version", version=f"pcsr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _commands():
        add(sub)
    return parser


def _commands():
    cmds = [_add_convert, _add_eval]
    for module in ("upscale", "training.cli", "bench"):
        try:
            mod = __import__(f"pcsr.{module}", fromlist=["add_parser"])
        except ImportError:
            continue
        if hasattr(mod, "add_parser"):
            cmds.append(mod.add_parser)
    return cmds


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PcsrError as e:
        print(f"pcsr {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pcsr {args.command}: interrupted", file=sys.stderr)
        return 130
