"""Sweeps: every model over every data set under every setting, one row of mean figures each; and
`evaluate`, one model and one routing over one set, the form the trainer's validation and the
benchmark scripts use. The rows feed report.py (tables, CSV, plots) and the command's JSON.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..core import Core
from ..errors import PcsrError
from ..io import list_images
from ..models.pcsr import Routing
from .protocol import ORIGINAL, PROTOCOLS, Setting, Units, hr_tensor, make_lr, to_uint8, unfold_patches
from .report import save_images
from .runner import Runner
from .score import Reference


@dataclass
class ImageScore:
    name: str
    psnr_rgb: float
    psnr_y: float
    flops: int
    max_flops: int
    heavy_fraction: float | None
    seconds: float
    ssim_rgb: float | None = None
    ssim_y: float | None = None
    patches: int | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "heavy_fraction"}


@dataclass
class _Accumulator:
    setting: Setting
    scores: list[ImageScore] = field(default_factory=list)


def display_name(model: Core | str | Path | None) -> str:
    """A short name for tables: the file stem of a path, or the bundled name."""
    name = getattr(model, "name", model)
    if name is None:
        return "default"
    text = str(name)
    p = Path(text)
    return p.stem if p.suffix in (".safetensors", ".pth", ".pt") else text


def _set_name(data) -> str:
    if isinstance(data, (str, Path)):
        p = Path(data)
        return p.name if p.is_dir() else p.stem
    return "images"


def sweep(models: Core | Sequence[Core], sets, settings: Sequence[Setting] | None = None, *,
          scale: int | None = None, protocol: str = "image", patch: int = 32, step: int = 28,
          ssim: bool | Callable[[Setting], bool] = False, per_image: bool = False, exact: bool = False,
          save_dir: str | Path | None = None, batch: int = 64, progress: bool = False,
          names: Sequence[str] | None = None) -> list[dict]:
    """One row per (model, set, setting): mean figures over the set's images.

    `sets` is one folder, file or list of files, or a list of such (each one set). Models without
    routing get one row ("original") whatever the settings. `ssim` may be a predicate on the setting,
    so that a long sweep computes SSIM only where it is reported.
    """
    if protocol not in PROTOCOLS:
        raise PcsrError(f"unknown protocol {protocol!r} ({', '.join(PROTOCOLS)})")
    if protocol == "patch":
        unfold_patches(torch.zeros(3, 1, 1), patch, step)  # validates patch and step
    models = [models] if isinstance(models, Core) else list(models)
    if isinstance(sets, (str, Path)) or (isinstance(sets, (list, tuple)) and sets
                                         and all(isinstance(s, (str, Path)) and Path(s).is_file() for s in sets)):
        sets = [sets]
    settings = list(settings or [Setting()])
    names = list(names) if names else _unique([display_name(m) for m in models])
    want_ssim = ssim if callable(ssim) else (lambda s, on=bool(ssim): on)
    rows = []
    for model, mname in zip(models, names):
        s_model = int(scale or model.scale)
        runner = Runner(model, s_model, patch=patch, protocol=protocol, exact=exact or len(settings) == 1,
                        batch=batch)
        todo = settings if model.is_pcsr else [ORIGINAL]
        for data in sets:
            dname = _set_name(data)
            paths = list_images([str(data)] if isinstance(data, (str, Path)) else [str(p) for p in data])
            accs = [_Accumulator(s) for s in todo]
            it = paths
            if progress:
                from tqdm import tqdm
                it = tqdm(paths, desc=f"{mname} {dname}", unit="img", leave=False)
            for path in it:
                _score_one(runner, Path(path), accs, s_model, protocol, patch, step, want_ssim,
                           save_dir and Path(save_dir) / mname / dname)
            for acc in accs:
                rows.append(_aggregate(acc, mname, dname, protocol, per_image, want_ssim(acc.setting)))
    return rows


def _unique(names: list[str]) -> list[str]:
    out = []
    for n in names:
        cand, i = n, 2
        while cand in out:
            cand, i = f"{n}#{i}", i + 1
        out.append(cand)
    return out


def _score_one(runner: Runner, path: Path, accs: list[_Accumulator], scale: int, protocol: str,
               patch: int, step: int, want_ssim, save: Path | None) -> None:
    hr, lr = make_lr(hr_tensor(path), scale)
    units = Units.of(lr, scale, protocol, patch, step)
    ref = Reference(to_uint8(hr), shave=scale, ssim=any(want_ssim(a.setting) for a in accs))
    t0 = time.perf_counter()
    shared = runner.prepare(units)
    shared_seconds = (time.perf_counter() - t0) / len(accs)
    for acc in accs:
        t0 = time.perf_counter()
        out = runner.output(units, acc.setting, shared)
        sr = to_uint8(units.fold(out.sr))
        seconds = time.perf_counter() - t0 + shared_seconds
        m = ref.score(sr, ssim=want_ssim(acc.setting))
        acc.scores.append(ImageScore(
            name=path.name, psnr_rgb=m["psnr_rgb"], psnr_y=m["psnr_y"], flops=out.flops, max_flops=out.max_flops,
            heavy_fraction=None if out.heavy is None else out.heavy / out.pixels, seconds=seconds,
            ssim_rgb=m.get("ssim_rgb"), ssim_y=m.get("ssim_y"),
            patches=None if units.boxes is None else len(units.boxes)))
        if save is not None:
            save_images(save / acc.setting.slug, path.stem, sr, units, out, runner.classes_n)


def _aggregate(acc: _Accumulator, model: str, data: str, protocol: str, per_image: bool, with_ssim: bool) -> dict:
    scores = acc.scores
    n = len(scores)
    mean = (lambda key: sum(getattr(r, key) for r in scores) / n)
    heavy = [r.heavy_fraction for r in scores if r.heavy_fraction is not None]
    s = acc.setting
    row = {"model": model, "data": data, "setting": s.label, "routing": s.routing, "rule": s.rule,
           "value": s.value, "protocol": protocol,
           "psnr_rgb": mean("psnr_rgb"), "psnr_y": mean("psnr_y")}
    if with_ssim:
        row["ssim_rgb"], row["ssim_y"] = mean("ssim_rgb"), mean("ssim_y")
    row.update({
        "gflops": mean("flops") / 1e9, "max_gflops": mean("max_flops") / 1e9,
        "heavy_fraction": sum(heavy) / len(heavy) if heavy else None,
        "images": n, "seconds": sum(r.seconds for r in scores),
    })
    if protocol == "patch":
        patches = sum(r.patches for r in scores)
        row["patches"] = patches
        row["patch_gflops"] = sum(r.flops for r in scores) / patches / 1e9
    if per_image:
        row["per_image"] = [r.as_dict() for r in scores]
    return row


LABEL_KEYS = ("model", "data", "setting")
_ROW_ONLY = ("routing", "rule", "value", "protocol")


def public_row(row: dict, labelled: bool) -> dict:
    """A row as JSON shows it: the single-result object keeps the historical keys (plus SSIM, patch
    figures and per-image rows when they were asked for); a list labels every object."""
    out = {k: row[k] for k in LABEL_KEYS} if labelled else {}
    if labelled:
        out.update({k: row[k] for k in _ROW_ONLY})
    out.update({k: v for k, v in row.items() if k not in LABEL_KEYS and k not in _ROW_ONLY})
    return out


def evaluate(model: Core, data: str | Path | list, scale: int | None = None, routing: Routing | None = None,
             progress: bool = False, **options) -> dict:
    """Mean figures over the images of a folder (or a list of paths), and the per-image rows."""
    setting = ORIGINAL if not model.is_pcsr else Setting.from_routing(routing)
    row = sweep(model, [data], [setting], scale=scale, per_image=True, progress=progress, **options)[0]
    return public_row(row, labelled=False)
