"""`pcsr eval`: PSNR / SSIM / FLOPs of models on folders of HR images, over routing settings."""
from __future__ import annotations

import argparse
import json

from ..errors import PcsrError
from .args import whole


def _number_list(text: str) -> list[float]:
    """'0,1,2' or '0' -> floats, so that -k takes '0 1 2' and '0,1,2' alike."""
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or comma-separated numbers: {text!r}") from None


def add_parser(sub):
    p = sub.add_parser(
        "eval", help="PSNR / SSIM / FLOPs of models on folders of HR images, over routing settings",
        description="For every image: crop HR to a multiple of the scale, make LR with the MATLAB-compatible "
                    "bicubic, super-resolve (the whole image, or 32 px LR patches every 28 px folded back with "
                    "the overlaps averaged), and compare (PSNR and SSIM on RGB and Y, scale-pixel border "
                    "shaved, 8-bit rounded outputs). One table row per model, folder and setting; several "
                    "settings of a model share its network passes.",
        epilog="examples:  pcsr eval --model a.pth b.pth --data Set5 Set14 -k 0 1 2 --adaptive --budget 1\n"
               "           pcsr eval --model a.pth --data B100 --routing pixel patch -k 0,1 "
               "--threshold 0.3,0.5 --plot curve.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", action="extend", default=None, metavar="MODEL",
                   help="bundled model names or paths (.safetensors, reference .pth); several allowed")
    p.add_argument("--data", nargs="+", action="extend", required=True, metavar="DIR",
                   help="folders (or files) of HR images, each one set; several allowed")
    g = p.add_argument_group("settings (every one given is evaluated, in one run)")
    g.add_argument("-k", "--k", nargs="+", action="extend", type=_number_list, default=None, metavar="K",
                   help="cost rule: class = argmax p_j / cost_j^k; 0 = plain argmax, larger = cheaper "
                        "(a list: -k 0 1 2 or -k 0,1,2; -k=-1,0 for a list starting negative)")
    g.add_argument("--adaptive", action="store_true",
                   help="adaptive decision (k-means over the whole image; over patch means for --routing patch)")
    g.add_argument("--budget", nargs="+", action="extend", type=_number_list, default=None, metavar="F",
                   help="send this fraction (0..1) of the pixels to the heavy upsampler (1 = all heavy)")
    g.add_argument("--threshold", nargs="+", action="extend", type=_number_list, default=None, metavar="T",
                   help="patch-level routing: a whole LR patch goes heavy when its mean heavy probability "
                        "exceeds T (implies --routing patch unless given)")
    g.add_argument("--routing", nargs="+", choices=["pixel", "patch"], default=None,
                   help="pixel: the model's per-pixel decision; patch: the patch-level baseline on the same "
                        "weights (32x32 LR patches, --patch). Both: both curves")
    g.add_argument("--no-refine", action="store_true", help="switch off the pixel-wise refinement")
    q = p.add_argument_group("protocol")
    q.add_argument("--protocol", choices=["image", "patch"], default="image",
                   help="image: the whole image in one pass (default); patch: ClassSR / PCSR-paper patches")
    q.add_argument("--patch", type=whole(1), default=32, help="LR patch size (default 32)")
    q.add_argument("--step", type=whole(1), default=28, help="LR patch step of --protocol patch (default 28)")
    q.add_argument("--scale", type=whole(1), default=None, help="scale (default: each model's)")
    q.add_argument("--device", default="auto", help="auto, cpu or cuda")
    q.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    q.add_argument("--batch", type=whole(1), default=64, help="patches per forward pass (default 64)")
    q.add_argument("--threads", type=whole(1), default=None,
                   help="torch CPU threads (default: torch's choice; 1 is often fastest on a busy machine)")
    q.add_argument("--exact", action="store_true",
                   help="run the model once per setting (slower; gives per-setting times) instead of "
                        "sharing one set of network passes among the settings")
    o = p.add_argument_group("output")
    o.add_argument("--ssim", action="store_true", help="also SSIM (RGB and Y)")
    o.add_argument("--per-image", action="store_true", help="also list every image")
    o.add_argument("--json", action="store_true",
                   help="JSON on stdout: one object for one model/folder/setting, else a list")
    o.add_argument("--csv", metavar="FILE", help="write the rows (and per-image rows) as CSV")
    o.add_argument("--plot", metavar="FILE.png", help="PSNR-GFLOPs curves, a panel per folder (needs matplotlib)")
    o.add_argument("--plot-metric", choices=["psnr_y", "psnr_rgb"], default="psnr_y")
    o.add_argument("--save-images", metavar="DIR",
                   help="write SR images and class maps (light green, heavy red) as DIR/model/set/setting/")
    p.set_defaults(func=_eval)


def _flat(values) -> list[float]:
    return [v for group in (values or []) for v in group]


def eval_settings(args):
    """The settings asked for on the command line (usage errors as PcsrError)."""
    from ..eval import make_settings
    ks, budgets, thresholds = _flat(args.k), _flat(args.budget), _flat(args.threshold)
    routings = args.routing
    if routings is None:
        routings = (["pixel"] if ks or budgets or not thresholds else []) + (["patch"] if thresholds else [])
    if (ks or budgets) and "pixel" not in routings:
        raise PcsrError("-k and --budget are pixel-level settings: add pixel to --routing")
    if thresholds and "patch" not in routings:
        raise PcsrError("--threshold is a patch-level setting: add patch to --routing")
    bad = [b for b in budgets if not 0.0 <= b <= 1.0]
    if bad:
        raise PcsrError(f"--budget must be between 0 and 1, got {bad[0]:g}")
    return make_settings(ks, args.adaptive, budgets, thresholds, routings, refine=not args.no_refine)


def _eval(args) -> int:
    from .. import api
    from ..eval import csv_text, markdown_per_image, markdown_table, plot_curves, public_row, sweep
    settings = eval_settings(args)
    if args.step > args.patch:
        raise PcsrError(f"--step must be at most --patch, got {args.step} and {args.patch}")
    if args.plot:  # now, not after a sweep of many minutes
        try:
            import matplotlib  # noqa: F401  (only: is it installed?)
        except ImportError:
            raise PcsrError(f"--plot {args.plot} needs matplotlib: pip install 'pcsr[plot]'") from None
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    models = [api.load(m, device=args.device, precision=args.precision) for m in (args.model or [None])]
    for name, model in zip(args.model or ["the default model"], models):
        if args.scale is not None and not model.is_pcsr and args.scale != model.scale:
            raise PcsrError(f"{name}: an original (non-PCSR) model upscales x{model.scale} only, "
                            f"not --scale {args.scale}")
    rows = sweep(models, args.data, settings, scale=args.scale, protocol=args.protocol, patch=args.patch,
                 step=args.step, ssim=args.ssim, per_image=args.per_image, exact=args.exact,
                 save_dir=args.save_images, batch=args.batch, progress=not args.json)
    if args.csv:
        from pathlib import Path
        try:
            Path(args.csv).write_text(csv_text(rows, per_image=args.per_image))
        except OSError as e:
            raise PcsrError(f"{args.csv}: cannot write ({e.strerror or e})") from None
    if args.plot:
        plot_curves(rows, args.plot, metric=args.plot_metric)
    if args.json:
        out = public_row(rows[0], labelled=False) if len(rows) == 1 else [public_row(r, True) for r in rows]
        print(json.dumps(out))
        return 0
    print(markdown_table(rows))
    if args.per_image:
        print()
        print(markdown_per_image(rows))
    return 0
