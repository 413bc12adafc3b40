"""Regenerate every number and figure of docs/REPRODUCTION.md in one run:

    PYTHONPATH=src python benchmarks/reproduce.py --shared ../shared --out docs/

The four reference checkpoints (../shared/official) and any model bundled under src/pcsr/bundled/
are evaluated on Set5, Set14 and B100 through `pcsr.eval.sweep`, the code behind `pcsr eval`:
the whole-image protocol and the ClassSR / PCSR-paper patch protocol, pixel-level routing (a k
sweep, the adaptive decision, all light, all heavy) and the patch-level baseline (a threshold
sweep), plus the authors' demo image against the figures their code produced. The generated
tables replace the blocks between `<!-- reproduce:NAME -->` and `<!-- /reproduce:NAME -->` in
OUT/REPRODUCTION.md; the figures go to OUT/figures/, the raw rows to OUT/figures/results.json.
Needs matplotlib (pip install 'pcsr[plot]'). About 40 min on one busy CPU core.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pcsr import api, weights  # noqa: E402
from pcsr.io import write_image  # noqa: E402
from pcsr.classmap import tint  # noqa: E402
from pcsr.eval import (Runner, Setting, Units, hr_tensor, make_lr, make_settings, plot_curves,  # noqa: E402
                       sweep, to_uint8)

OFFICIAL = {  # file stem -> label, backbone family
    "carn-x4": ("CARN", "carn"),
    "carn-pcsr-phase1": ("CARN-PCSR", "carn"),
    "fsrcnn-x4": ("FSRCNN", "fsrcnn"),
    "fsrcnn-pcsr-phase1": ("FSRCNN-PCSR", "fsrcnn"),
}
SETS = ("Set5", "Set14", "B100")
K_CURVE = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95
TABLE_SETTINGS = ("original", "k=0", "adaptive", "budget=1")
CROP = 192  # side of the class-map examples, HR pixels (keeps the PNGs small)
TABLE_NAMES = {"original": "original", "k=0": "k = 0", "adaptive": "ADM", "budget=1": "all heavy"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared data folder")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="folder holding REPRODUCTION.md")
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--protocols", nargs="+", default=["image", "patch"], choices=["image", "patch"])
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set only (a quick check)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a shared CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shared, out = Path(args.shared), Path(args.out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    models, labels, families = [], [], []
    for stem, (label, family) in OFFICIAL.items():
        models.append(api.load(shared / "official" / f"{stem}.pth", device="cpu", precision="fp32"))
        labels.append(label)
        families.append(family)
    bundled = sorted(weights.BUNDLED_DIR.glob("*.safetensors")) if weights.BUNDLED_DIR.is_dir() else []
    for path in bundled:
        m = api.load(path, device="cpu", precision="fp32")  # as the references: no bf16 near-tie moves
        models.append(m)
        labels.append(f"ours: {path.stem}")
        families.append(m.spec.backbone)

    sets = []
    for name in args.sets:
        folder = shared / "data" / "bench" / name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
        sets.append(files[:args.limit] if args.limit else folder)
    set_names = list(args.sets)

    settings = make_settings(K_CURVE, adaptive=True, budgets=[0.0, 1.0], thresholds=THRESHOLDS,
                             routings=["pixel", "patch"])
    want_ssim = (lambda s: s.label in TABLE_SETTINGS)
    results = {}
    for protocol in args.protocols:
        rows = []
        for model, label in zip(models, labels):
            t0 = time.time()
            got = sweep(model, sets, settings, protocol=protocol, ssim=want_ssim, names=[label], progress=True)
            for r, set_name in zip_sets(got, set_names):
                r["data"] = set_name
            rows += got
            print(f"{protocol:5s} {label:24s} {time.time() - t0:7.1f} s", file=sys.stderr)
        results[protocol] = rows

    demo = demo_parity(shared, models, labels)
    examples = class_map_examples(shared, models, labels, figures)

    blocks = {"meta": meta_block(args, time.time() - t_start, bundled)}
    for protocol, rows in results.items():
        blocks[f"table-{protocol}"] = main_table(rows, labels, set_names, protocol)
        blocks[f"equal-{protocol}"] = equal_flops_table(rows, labels, set_names, protocol)
        for family in dict.fromkeys(families):
            names = [lb for lb, f in zip(labels, families) if f == family]
            fig = figures / f"curves-{protocol}-{family}.png"
            plot_curves([r for r in rows if r["model"] in names], fig,
                        title=f"{family.upper()} x4, {protocol} protocol: pixel-level (solid) vs "
                              f"patch-level (dashed) routing on the same weights")
    blocks["demo"] = demo
    blocks["examples"] = examples
    save = {p: [{k: v for k, v in r.items() if k != "per_image"} for r in rows] for p, rows in results.items()}
    (figures / "results.json").write_text(json.dumps(save, indent=1))
    fill_doc(out / "REPRODUCTION.md", blocks)
    print(f"done in {time.time() - t_start:.0f} s", file=sys.stderr)
    return 0


def zip_sets(rows, set_names):
    """Rows come set by set, settings within; name them by the requested set (a --limit list has no name)."""
    per_set = len(rows) // len(set_names)
    for i, r in enumerate(rows):
        yield r, set_names[i // per_set]


def _row(rows, model, data, setting):
    for r in rows:
        if r["model"] == model and r["data"] == data and r["setting"] == setting:
            return r
    return None


def _original_of(label: str, labels: list[str]) -> str | None:
    base = label.replace("-PCSR", "")
    return base if base != label and base in labels else None


def main_table(rows, labels, set_names, protocol) -> str:
    per_patch = protocol == "patch"
    head = ["set", "model", "setting", "PSNR RGB", "PSNR Y", "SSIM RGB", "SSIM Y",
            "GFLOPs / patch" if per_patch else "GFLOPs / image", "% of original", "heavy %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([" --- "] * 3 + [" ---: "] * (len(head) - 3)) + "|"]
    for data in set_names:
        for label in labels:
            orig = _original_of(label, labels)
            for setting in TABLE_SETTINGS:
                r = _row(rows, label, data, setting)
                if r is None:
                    continue
                g = r["patch_gflops"] if per_patch else r["gflops"]
                o = _row(rows, orig, data, "original") if orig else None
                pct = f"{100 * r['gflops'] / o['gflops']:.1f}" if o else ("100.0" if setting == "original" else "-")
                hf = "-" if r["heavy_fraction"] is None else f"{100 * r['heavy_fraction']:.1f}"
                lines.append(f"| {data} | {label} | {TABLE_NAMES[setting]} | {r['psnr_rgb']:.2f} | {r['psnr_y']:.2f} | "
                             f"{r['ssim_rgb']:.4f} | {r['ssim_y']:.4f} | {g:.3f} | {pct} | {hf} |")
    return "\n".join(lines)


def _interp(curve, x):
    """PSNR of a piecewise-linear curve (sorted by GFLOPs) at x; None outside it."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def equal_flops_table(rows, labels, set_names, protocol) -> str:
    """Pixel-level settings against the patch-level curve at the same FLOPs (linear interpolation
    between the neighbouring thresholds; all light and all heavy close both curves)."""
    head = ["set", "model", "pixel-level setting", "GFLOPs", "PSNR Y pixel-level", "PSNR Y patch-level, same FLOPs",
            "gain (dB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([" --- "] * 3 + [" ---: "] * 4) + "|"]
    for data in set_names:
        for label in labels:
            mine = [r for r in rows if r["model"] == label and r["data"] == data]
            ends = [r for r in mine if r["rule"] == "budget" and r["value"] in (0.0, 1.0)]
            patch = [r for r in mine if r["routing"] == "patch" and r["rule"] == "threshold"] + ends
            if not patch:
                continue
            curve = sorted((r["gflops"], r["psnr_y"]) for r in patch)
            for setting in ("k=0", "adaptive", "k=1"):
                r = _row(rows, label, data, setting)
                y = None if r is None else _interp(curve, r["gflops"])
                if y is None:
                    continue
                lines.append(f"| {data} | {label} | {TABLE_NAMES.get(setting, setting.replace('=', ' = '))} | "
                             f"{r['gflops']:.3f} | {r['psnr_y']:.3f} | {y:.3f} | {r['psnr_y'] - y:+.3f} |")
    return "\n".join(lines)


def demo_parity(shared: Path, models, labels) -> str:
    """The authors' code's figures on their demo image (../shared/official/parity_metrics.json)
    next to ours, through the same shared-pass sweep as the tables."""
    ref = json.loads((shared / "official" / "parity_metrics.json").read_text())["demo_hr_full"]
    demo = shared / "official" / "demo_hr.png"
    keys = {"CARN": "carn-x4", "FSRCNN": "fsrcnn-x4", "CARN-PCSR": "carn-pcsr", "FSRCNN-PCSR": "fsrcnn-pcsr"}
    settings, names = [], []
    for k in (-25.0, -1.0, 0.0, 1.0, 2.0, None):
        for refine in (True, False):
            s = Setting("adaptive", None, refine=refine) if k is None else Setting("k", k, refine=refine)
            settings.append(s)
            names.append(f"{'adaptive' if k is None else f'k{k:g}'}/{'refine' if refine else 'norefine'}")
    by_label = {s.label: n for s, n in zip(settings, names)}
    lines = ["| model | setting | PSNR RGB theirs | ours | PSNR Y theirs | ours | GFLOPs theirs | ours | "
             "heavy % theirs | ours |", "|" + "|".join([" --- "] * 2 + [" ---: "] * 8) + "|"]
    for model, label in zip(models, labels):
        key = keys.get(label)
        if key is None:
            continue
        rows = sweep(model, [demo], settings, names=[label])
        for r in rows:
            name = by_label.get(r["setting"], "")
            theirs = ref[key] if not name else ref[f"{key}/{name}"]
            hf_t = theirs.get("heavy_fraction")
            hf = "-" if hf_t is None else f"{100 * hf_t:.2f} | {100 * r['heavy_fraction']:.2f}"
            lines.append(f"| {label} | {name or 'original'} | {theirs['psnr_rgb']:.3f} | {r['psnr_rgb']:.3f} | "
                         f"{theirs['psnr_y']:.3f} | {r['psnr_y']:.3f} | {theirs['flops'] / 1e9:.2f} | "
                         f"{r['gflops']:.2f} | {hf if hf_t is not None else '- | -'} |")
    return "\n".join(lines)


def class_map_examples(shared: Path, models, labels, figures: Path) -> str:
    """Class maps of one Set14 image (a central crop): pixel-level k = 0 against patch-level routing at
    about the same heavy share over the whole image, for each PCSR model (light green, heavy red)."""
    path = shared / "data" / "bench" / "Set14" / "comic.png"
    hr, lr = make_lr(hr_tensor(path), 4)
    lines = []
    for model, label in zip(models, labels):
        if not model.is_pcsr or label not in ("CARN-PCSR", "FSRCNN-PCSR"):
            continue
        runner = Runner(model, 4)
        units = Units.of(lr, 4, "image", 32, 28)
        shared_passes = runner.prepare(units)
        pixel = runner.output(units, Setting("k", 0.0), shared_passes)
        share = pixel.heavy / pixel.pixels
        best = None
        for t in [i / 100 for i in range(1, 100)]:
            out = runner.output(units, Setting("threshold", t, routing="patch"), shared_passes)
            if best is None or abs(out.heavy / out.pixels - share) < abs(best[1].heavy / best[1].pixels - share):
                best = (t, out)
        t, patch = best
        stem = label.lower()
        y0, x0 = pixel.sr.shape[-2] // 2 - CROP // 2, pixel.sr.shape[-1] // 2 - CROP // 2
        crop = (slice(max(y0, 0), max(y0, 0) + CROP), slice(max(x0, 0), max(x0, 0) + CROP))
        for kind, o in (("pixel", pixel), ("patch", patch)):
            sr = to_uint8(o.sr[0])[:, crop[0], crop[1]]
            level = o.classes[0][crop].numpy()
            write_image(figures / f"classes-{stem}-{kind}.png", tint(sr.permute(1, 2, 0).numpy(), level,
                                                                     model.num_classes))
        lines.append(f"| {label} | ![pixel](figures/classes-{stem}-pixel.png) k = 0, heavy {100 * share:.1f} % | "
                     f"![patch](figures/classes-{stem}-patch.png) threshold {t:.2f}, heavy "
                     f"{100 * patch.heavy / patch.pixels:.1f} % |")
    return "| model | pixel-level | patch-level |\n| --- | --- | --- |\n" + "\n".join(lines)


def meta_block(args, seconds: float, bundled) -> str:
    cpu = platform.processor() or platform.machine()
    own = ", ".join(p.stem for p in bundled) if bundled else "none: no model was bundled under src/pcsr/bundled/ " \
                                                             "when this ran, so no row of ours is listed"
    limit = f"; first {args.limit} images of each set only" if args.limit else ""
    return (f"Generated {time.strftime('%Y-%m-%d')} by `benchmarks/reproduce.py` in {seconds / 60:.0f} min on "
            f"{cpu} ({args.threads} torch thread{'s' if args.threads > 1 else ''}), torch {torch.__version__}, protocols: "
            f"{', '.join(args.protocols)}{limit}. Our own trained models: {own}.")


def fill_doc(path: Path, blocks: dict) -> None:
    text = path.read_text() if path.exists() else ""
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- reproduce:{re.escape(name)} -->\n).*?(<!-- /reproduce:{re.escape(name)} -->)",
                             re.S)
        if pattern.search(text):
            text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
        else:
            print(f"note: {path} has no block '{name}'; appended", file=sys.stderr)
            text += f"\n<!-- reproduce:{name} -->\n{body}\n<!-- /reproduce:{name} -->\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
