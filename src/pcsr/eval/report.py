"""What a sweep's rows become: Markdown tables, CSV, PSNR-FLOPs plots, and the saved SR images with
their class maps tinted over them.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..classmap import tint
from ..errors import PcsrError
from ..io import write_image
from .protocol import Units

if TYPE_CHECKING:  # runner imports the models; a report needs only the shape of its output
    from .runner import Output



# ----------------------------------------------------------------------------- reports
def _fmt(v, spec: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def _columns(rows: list[dict]) -> list[tuple[str, str, Callable[[dict], object]]]:
    cols = [("model", "", lambda r: r["model"]), ("data", "", lambda r: r["data"]),
            ("setting", "", lambda r: r["setting"]),
            ("PSNR RGB", ".3f", lambda r: r["psnr_rgb"]), ("PSNR Y", ".3f", lambda r: r["psnr_y"])]
    if any("ssim_rgb" in r for r in rows):
        cols += [("SSIM RGB", ".4f", lambda r: r.get("ssim_rgb")), ("SSIM Y", ".4f", lambda r: r.get("ssim_y"))]
    cols += [("GFLOPs", ".3f", lambda r: r["gflops"])]
    if any("patch_gflops" in r for r in rows):
        cols += [("GFLOPs/patch", ".4f", lambda r: r.get("patch_gflops"))]
    cols += [("% of max", ".1f", lambda r: 100 * r["gflops"] / r["max_gflops"] if r["max_gflops"] else None),
             ("heavy %", ".1f", lambda r: None if r["heavy_fraction"] is None else 100 * r["heavy_fraction"]),
             ("images", "d", lambda r: r["images"]), ("s/img", ".2f", lambda r: r["seconds"] / r["images"])]
    return cols


def markdown_table(rows: list[dict]) -> str:
    cols = _columns(rows)
    lines = ["| " + " | ".join(c[0] for c in cols) + " |",
             "|" + "|".join(" --- " if not c[1] else " ---: " for c in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(get(r), spec) for _, spec, get in cols) + " |")
    return "\n".join(lines)


def markdown_per_image(rows: list[dict]) -> str:
    """Every image of every row (rows from a sweep with per_image=True)."""
    ssim = any("ssim_rgb" in r for r in rows)
    head = ["model", "data", "setting", "image", "PSNR RGB", "PSNR Y"] + (["SSIM RGB", "SSIM Y"] if ssim else [])
    head += ["GFLOPs", "heavy %", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " if i < 4 else " ---: " for i in range(len(head))) + "|"]
    for r in rows:
        for im in r.get("per_image", []):
            cells = [r["model"], r["data"], r["setting"], im["name"], _fmt(im["psnr_rgb"], ".3f"), _fmt(im["psnr_y"], ".3f")]
            if ssim:
                cells += [_fmt(im.get("ssim_rgb"), ".4f"), _fmt(im.get("ssim_y"), ".4f")]
            hf = im["heavy_fraction"]
            cells += [_fmt(im["flops"] / 1e9, ".3f"), _fmt(None if hf is None else 100 * hf, ".1f"),
                      _fmt(im["seconds"], ".2f")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CSV_FIELDS = ("model", "data", "protocol", "routing", "setting", "image", "psnr_rgb", "psnr_y", "ssim_rgb", "ssim_y",
              "gflops", "max_gflops", "patch_gflops", "heavy_fraction", "images", "patches", "seconds")


def csv_text(rows: list[dict], per_image: bool = False) -> str:
    """One line per row (image empty), and with per_image one more per image of each row."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "image": ""})
        if per_image:
            for im in r.get("per_image", []):
                w.writerow({"model": r["model"], "data": r["data"], "protocol": r["protocol"],
                            "routing": r["routing"], "setting": r["setting"], "image": im["name"],
                            "psnr_rgb": im["psnr_rgb"], "psnr_y": im["psnr_y"], "ssim_rgb": im.get("ssim_rgb"),
                            "ssim_y": im.get("ssim_y"), "gflops": im["flops"] / 1e9,
                            "max_gflops": im["max_flops"] / 1e9, "heavy_fraction": im["heavy_fraction"],
                            "images": 1, "patches": im.get("patches"), "seconds": im["seconds"]})
    return buf.getvalue()


def plot_curves(rows: list[dict], path: str | Path, metric: str = "psnr_y", title: str | None = None) -> None:
    """PSNR against GFLOPs, one panel per data set: a line per model and routing (solid pixel-level,
    dashed patch-level), a star for each adaptive decision, a diamond for models without routing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PcsrError("plots need matplotlib: pip install 'pcsr[plot]'") from None
    sets = list(dict.fromkeys(r["data"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    per_patch = all("patch_gflops" in r for r in rows)
    x_of = (lambda r: r["patch_gflops"]) if per_patch else (lambda r: r["gflops"])
    fig, axes = plt.subplots(1, len(sets), figsize=(4.6 * len(sets), 3.9), squeeze=False)
    handles = {}
    for ax, data in zip(axes[0], sets):
        for i, model in enumerate(models):
            color = f"C{i % 10}"
            mine = [r for r in rows if r["model"] == model and r["data"] == data]
            for rt, style, marker in (("pixel", "-", "o"), ("patch", "--", "s")):
                curve = sorted((r for r in mine if r["routing"] == rt and r["rule"] != "adaptive"), key=x_of)
                if curve:
                    (h,) = ax.plot([x_of(r) for r in curve], [r[metric] for r in curve], linestyle=style,
                                   marker=marker, markersize=3.5, color=color, linewidth=1.3)
                    handles.setdefault(f"{model} ({rt}-level)", h)
                for r in (r for r in mine if r["routing"] == rt and r["rule"] == "adaptive"):
                    (h,) = ax.plot([x_of(r)], [r[metric]], marker="*" if rt == "pixel" else "P", markersize=11,
                                   color=color, linestyle="none", markeredgecolor="black", markeredgewidth=0.5)
                    handles.setdefault(f"{model} adaptive ({rt}-level)", h)
            for r in (r for r in mine if r["routing"] == "none"):
                (h,) = ax.plot([x_of(r)], [r[metric]], marker="D", markersize=6, color=color, linestyle="none")
                handles.setdefault(model, h)
        ax.set_title(data)
        ax.set_xlabel("GFLOPs per LR patch" if per_patch else "GFLOPs per image (mean)")
        ax.set_ylabel({"psnr_y": "PSNR Y (dB)", "psnr_rgb": "PSNR RGB (dB)"}.get(metric, metric))
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(3, len(handles)),
               fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    rows_of_legend = -(-len(handles) // 3)
    fig.tight_layout(rect=(0, 0.05 * rows_of_legend + 0.02, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- images
def save_images(folder: Path, stem: str, sr: torch.Tensor, units: Units, out: Output, n_classes: int) -> None:
    """One setting's 8-bit output of an image, and for a PCSR model its class map tinted over it."""
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / f"{stem}.png", sr.permute(1, 2, 0).numpy())
    if out.classes is None:
        return
    level = units.fold(out.classes.unsqueeze(1).float())[0]  # the class, or its mean over overlapping patches
    write_image(folder / f"{stem}_classes.png", tint(sr.permute(1, 2, 0).numpy(), level.numpy(), n_classes))
