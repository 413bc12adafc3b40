"""`pcsr eval`: the benchmark protocol. HR images are cropped to a multiple of the scale, made LR by
the MATLAB-compatible bicubic, super-resolved, rounded to 8 bits and compared with the HR
(BasicSR conventions: a border of `scale` pixels shaved; Y per MATLAB's rgb2ycbcr, rounded).

Two protocols:

* ``image``: the whole LR image in one pass, the usual protocol of SR benchmarks;
* ``patch``: ClassSR's and the PCSR paper's: LR patches of 32 px every 28 px (the last one of a row
  or column aligned to the edge), each super-resolved on its own, the outputs folded back with the
  overlaps averaged, FLOPs counted per patch.

And two ways to route a PCSR model:

* ``pixel``: the model's own per-pixel decision (cost rule with k, adaptive k-means, or a budget);
* ``patch``: the patch-level baseline on the same weights: every HR pixel of a 32x32 LR patch goes
  to the heavy upsampler when the patch's mean heavy-class probability exceeds a threshold.

A sweep over several settings shares the network passes. Per image, the classifier probabilities
and the output of every upsampler on every pixel are computed once, without refinement; each
setting then only decides a class map, picks each pixel from its upsampler's output and refines.
Each output pixel of an upsampler depends on its own query alone, so this equals what `Model.run`
gives for that class map up to float rounding (tests/test_evaluate.py checks it). ``exact=True``
runs the model once per setting instead, which is also what gives a per-setting time.
"""
from __future__ import annotations

import csv
import io
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from . import routing as routing_rules
from .api import Model, autocast
from .errors import PcsrError
from .imageio import list_images, read_image, write_image
from .metrics import rgb_to_y
from .models.pcsr import Routing
from .resize import imresize

PROTOCOLS = ("image", "patch")
ROUTINGS = ("pixel", "patch")
LIGHT_RGB = (0.0, 1.0, 0.0)
HEAVY_RGB = (1.0, 0.0, 0.0)
TINT_OPACITY = 0.65


# ----------------------------------------------------------------------------- HR / LR
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


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    """One point of a sweep. rule: "k", "adaptive", "budget", "threshold" (patch routing only) or
    "original" (a model without routing); routing: "pixel", "patch" or "none"."""

    rule: str = "k"
    value: float | None = 0.0
    routing: str = "pixel"
    refine: bool = True
    budget_of: str = "pixels"

    @property
    def label(self) -> str:
        if self.rule == "original":
            return "original"
        v = "" if self.value is None else f"{self.value:g}"
        text = {"k": f"k={v}", "adaptive": "adaptive", "budget": f"budget={v}", "threshold": f"t={v}"}[self.rule]
        if self.budget_of == "flops":
            text += " of flops"
        if self.routing == "patch":
            text = "patch " + text
        return text if self.refine else text + " no-refine"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", self.label)

    def to_routing(self) -> Routing:
        return Routing(k=self.value if self.rule == "k" else 0.0, adaptive=self.rule == "adaptive",
                       budget=self.value if self.rule == "budget" else None, budget_of=self.budget_of,
                       refine=self.refine)

    @classmethod
    def from_routing(cls, r: Routing | None) -> "Setting":
        r = r or Routing()
        if r.adaptive:
            return cls("adaptive", None, refine=r.refine)
        if r.budget is not None:
            return cls("budget", float(r.budget), refine=r.refine, budget_of=r.budget_of)
        return cls("k", float(r.k), refine=r.refine)


ORIGINAL = Setting("original", None, routing="none")


def make_settings(ks: Iterable[float] = (), adaptive: bool = False, budgets: Iterable[float] = (),
                  thresholds: Iterable[float] = (), routings: Iterable[str] = ("pixel",),
                  refine: bool = True) -> list[Setting]:
    """Every requested setting, pixel routing first; a routing asked for with nothing else gets its
    default point (k = 0, threshold 0.5)."""
    ks, budgets, thresholds, routings = list(ks), list(budgets), list(thresholds), list(routings)
    out = []
    if "pixel" in routings:
        if not (ks or adaptive or budgets):
            ks = [0.0]
        out += [Setting("k", float(k), refine=refine) for k in ks]
        out += [Setting("adaptive", None, refine=refine)] if adaptive else []
        out += [Setting("budget", float(b), refine=refine) for b in budgets]
    if "patch" in routings:
        if not (thresholds or adaptive):
            thresholds = [0.5]
        out += [Setting("threshold", float(t), routing="patch", refine=refine) for t in thresholds]
        out += [Setting("adaptive", None, routing="patch", refine=refine)] if adaptive else []
    seen, unique = set(), []
    for s in out:
        if s not in seen:
            seen.add(s)
            unique.append(s)
    return unique


# ----------------------------------------------------------------------------- patch geometry
def patch_starts(length: int, patch: int, step: int) -> list[int]:
    """Starts along one axis; the last patch is aligned to the edge so that every pixel is covered."""
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, step))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def unfold_patches(lr: torch.Tensor, patch: int, step: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(3, h, w) -> (N, 3, p, q) patches and their top-left corners (p = min(patch, h), q likewise)."""
    if patch < 1 or not 1 <= step <= patch:
        raise PcsrError(f"patches need 1 <= step <= patch, got patch {patch}, step {step}")
    h, w = lr.shape[-2:]
    ph, pw = min(patch, h), min(patch, w)
    boxes = [(y, x) for y in patch_starts(h, ph, step) for x in patch_starts(w, pw, step)]
    return torch.stack([lr[..., y:y + ph, x:x + pw] for y, x in boxes]), boxes


def fold_patches(patches: torch.Tensor, boxes: Sequence[tuple[int, int]], size: tuple[int, int],
                 scale: int = 1) -> torch.Tensor:
    """(N, C, P, Q) outputs of patches whose LR corners are `boxes` -> (C, H, W), overlaps averaged."""
    n, c, ph, pw = patches.shape
    out = torch.zeros(c, *size, dtype=torch.float64)
    weight = torch.zeros(1, *size, dtype=torch.float64)
    for (y, x), p in zip(boxes, patches):
        y, x = y * scale, x * scale
        out[:, y:y + ph, x:x + pw] += p.double()
        weight[:, y:y + ph, x:x + pw] += 1
    if bool((weight == 0).any()):
        raise ValueError("the patches do not cover the whole image")
    return (out / weight).to(patches.dtype if patches.is_floating_point() else torch.float32)


def tile_means(p: torch.Tensor, tile: int) -> torch.Tensor:
    """(N, H, W) -> (N, ceil(H/tile), ceil(W/tile)) means over tile x tile blocks (edge blocks smaller)."""
    n, h, w = p.shape
    th, tw = -(-h // tile), -(-w // tile)
    pad = (0, tw * tile - w, 0, th * tile - h)
    sums = torch.nn.functional.pad(p.double(), pad).view(n, th, tile, tw, tile).sum((2, 4))
    counts = torch.nn.functional.pad(torch.ones_like(p, dtype=torch.float64), pad).view(n, th, tile, tw, tile).sum((2, 4))
    return sums / counts


def _expand_tiles(t: torch.Tensor, tile: int, h: int, w: int) -> torch.Tensor:
    return t.repeat_interleave(tile, 1).repeat_interleave(tile, 2)[:, :h, :w]


def patch_level_classes(prob_heavy: torch.Tensor, tile: int, threshold: float | None,
                        heavy_class: int = 1) -> torch.Tensor:
    """The patch-level baseline: every pixel of a tile gets the heavy class when the tile's mean heavy
    probability exceeds `threshold`; None decides by k-means over the tile means (the paper's ADM,
    applied to patches). (N, H, W) probabilities -> (N, H, W) uint8 classes."""
    means = tile_means(prob_heavy, tile)
    if threshold is None:
        heavy = routing_rules.adaptive(means.reshape(-1).float()).view_as(means)
    else:
        heavy = means > threshold
    n, h, w = prob_heavy.shape
    return _expand_tiles(heavy, tile, h, w).to(torch.uint8) * heavy_class


# ----------------------------------------------------------------------------- metrics
_GAUSS = None


def _gauss() -> torch.Tensor:
    """The 11-tap, sigma 1.5 Gaussian of SSIM (Wang et al.; BasicSR), normalised."""
    global _GAUSS
    if _GAUSS is None:
        x = torch.arange(-5, 6, dtype=torch.float64)
        g = torch.exp(-(x * x) / (2 * 1.5 ** 2))
        _GAUSS = g / g.sum()
    return _GAUSS


def _band(n: int) -> torch.Tensor:
    """(n, n - 10) matrix whose product is the 'valid' correlation with the Gaussian."""
    g = _gauss()
    m = torch.zeros(n, n - 10, dtype=torch.float64)
    j = torch.arange(n - 10)
    for i in range(11):
        m[j + i, j] = g[i]
    return m


def _filter_rows(x: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Valid Gaussian filtering along the last axis, as blocked matrix products: the same sums as
    the 2-D convolution of metrics.ssim (to 1e-13), several times faster in float64 on a CPU."""
    n = x.shape[-1]
    out = torch.empty(*x.shape[:-1], n - 10, dtype=x.dtype)
    bands = {}
    for j0 in range(0, n - 10, block):
        j1 = min(j0 + block, n - 10)
        b = bands.get(j1 - j0)
        if b is None:
            b = bands[j1 - j0] = _band(j1 - j0 + 10)
        out[..., j0:j1] = x[..., j0:j1 + 10] @ b
    return out


def _gauss_filter(x: torch.Tensor) -> torch.Tensor:
    return _filter_rows(_filter_rows(x).transpose(-1, -2)).transpose(-1, -2)


class Reference:
    """The HR side of every comparison: its Y plane and SSIM statistics, computed once per image and
    reused by every setting. Metrics as metrics.psnr / metrics.ssim (scale border shaved, Y of
    MATLAB's rgb2ycbcr on uint8, rounded; SSIM with 'valid' 11x11 Gaussian windows, the RGB
    figure the mean over channels)."""

    C1 = (0.01 * 255.0) ** 2
    C2 = (0.03 * 255.0) ** 2

    def __init__(self, hr: torch.Tensor, shave: int, ssim: bool = False):
        self.shave = shave
        self.planes = self._planes(hr)
        h, w = self.planes.shape[-2:]
        if h < 1 or w < 1:
            raise PcsrError(f"a {hr.shape[-2]}x{hr.shape[-1]} image has nothing left after shaving {shave} pixels")
        self.ssim = ssim and h >= 11 and w >= 11
        if self.ssim:
            self.mu = _gauss_filter(self.planes)
            self.sq = _gauss_filter(self.planes * self.planes)

    def _planes(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> float64 (4, h, w): R, G, B, Y with the border shaved."""
        y = rgb_to_y(img, rounded=True)
        p = torch.cat([img.double(), y.double()])
        s = self.shave
        return p[..., s:p.shape[-2] - s, s:p.shape[-1] - s] if s else p

    def score(self, sr: torch.Tensor, ssim: bool = True) -> dict:
        a = self._planes(sr)
        d = (a - self.planes) ** 2
        out = {"psnr_rgb": _psnr(d[:3].mean().item()), "psnr_y": _psnr(d[3].mean().item())}
        if ssim and self.ssim:
            mu_a = _gauss_filter(a)
            sq_a = _gauss_filter(a * a)
            cross = _gauss_filter(a * self.planes)
            mu_ab = mu_a * self.mu
            var_a, var_b = sq_a - mu_a * mu_a, self.sq - self.mu * self.mu
            cov = cross - mu_ab
            m = ((2 * mu_ab + self.C1) * (2 * cov + self.C2)) / (
                (mu_a * mu_a + self.mu * self.mu + self.C1) * (var_a + var_b + self.C2))
            per_plane = m.flatten(1).mean(1)
            out["ssim_rgb"] = per_plane[:3].mean().item()
            out["ssim_y"] = per_plane[3].item()
        elif ssim:
            out["ssim_rgb"] = out["ssim_y"] = float("nan")
        return out


def _psnr(mse: float) -> float:
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


# ----------------------------------------------------------------------------- running a model
@dataclass
class Units:
    """What the network sees for one image: the whole LR image, or its patches."""

    lr: torch.Tensor                         # (N, 3, p, q)
    boxes: list[tuple[int, int]] | None      # LR corners of the patches; None: the whole image
    hr_size: tuple[int, int]
    scale: int

    @classmethod
    def of(cls, lr: torch.Tensor, scale: int, protocol: str, patch: int, step: int) -> "Units":
        hr_size = (lr.shape[-2] * scale, lr.shape[-1] * scale)
        if protocol == "patch":
            patches, boxes = unfold_patches(lr, patch, step)
            return cls(patches, boxes, hr_size, scale)
        return cls(lr.unsqueeze(0), None, hr_size, scale)

    @property
    def out_shape(self) -> tuple[int, int]:
        return self.lr.shape[-2] * self.scale, self.lr.shape[-1] * self.scale

    def fold(self, x: torch.Tensor) -> torch.Tensor:
        """Per-unit outputs (N, C, P, Q) -> (C, H, W) of the whole image."""
        if self.boxes is None:
            return x[0]
        return fold_patches(x, self.boxes, self.hr_size, self.scale)


@dataclass
class Output:
    sr: torch.Tensor                  # (N, 3, P, Q) float, per unit
    classes: torch.Tensor | None      # (N, P, Q) uint8
    flops: int                        # summed over the units
    max_flops: int
    heavy: int | None                 # pixels of the costliest class, over the units
    pixels: int


class Runner:
    """Turns the units of one image and a setting into outputs, for one model."""

    def __init__(self, model: Model, scale: int, patch: int = 32, protocol: str = "image",
                 exact: bool = False, batch: int = 64):
        self.model, self.scale, self.exact, self.batch = model, scale, exact, max(1, batch)
        self.pcsr = model.is_pcsr
        self.classes_n = model.net.num_classes if self.pcsr else 0
        self.tile = patch * scale if protocol == "image" else None

    # ---------------------------------------------------------------- network calls
    def _forward(self, lr: torch.Tensor, routing: Routing | None = None, classes: torch.Tensor | None = None,
                 prob: bool = False):
        """The model on the units, `batch` at a time: (sr, classes, prob, flops list, counts list)."""
        srs, cls, probs, flops, counts = [], [], [], [], []
        for i in range(0, lr.shape[0], self.batch):
            chunk = lr[i:i + self.batch]
            c = None if classes is None else classes[i:i + self.batch].to(self.model.device)
            if prob:
                with torch.inference_mode(), autocast(self.model.device, self.model.precision):
                    res = self.model.net.infer(chunk.to(self.model.device, torch.float32), scale=self.scale,
                                               routing_=routing, classes=c, return_prob=True)
                probs.append(res.prob.float().cpu())
            elif self.pcsr:
                res = self.model.run(chunk, routing, scale=self.scale, classes=c)
            else:
                res = self.model.run(chunk, None, scale=self.scale)
            srs.append(res.sr.float().cpu())
            flops += res.flops
            if res.classes is not None:
                cls.append(res.classes.cpu())
                counts += res.counts
        cat = (lambda xs: torch.cat(xs) if xs else None)
        return cat(srs), cat(cls), cat(probs), flops, counts

    def prepare(self, units: Units) -> dict | None:
        """Shared passes of a sweep: every upsampler's output on every pixel, and the probabilities."""
        if not self.pcsr or self.exact:
            return None
        n = units.lr.shape[0]
        outs, prob = [], None
        for j in range(self.classes_n):
            fixed = torch.full((n, *units.out_shape), j, dtype=torch.uint8)
            sr, _, p, _, _ = self._forward(units.lr, Routing(refine=False), fixed, prob=j == 0)
            outs.append(sr)
            prob = p if j == 0 else prob
        return {"outs": outs, "prob": prob}

    def _probabilities(self, units: Units) -> torch.Tensor:
        n = units.lr.shape[0]
        fixed = torch.zeros((n, *units.out_shape), dtype=torch.uint8)
        return self._forward(units.lr, Routing(refine=False), fixed, prob=True)[2]

    # ---------------------------------------------------------------- decisions
    def decide(self, setting: Setting, prob: torch.Tensor, units: Units) -> torch.Tensor:
        """(N, M, P, Q) probabilities -> (N, P, Q) uint8 classes for the setting. Joint rules (adaptive,
        budget) see every unit of the image together, as the whole-image protocol does."""
        n, m, ph, pw = prob.shape
        h, w = units.lr.shape[-2:]
        if setting.routing == "patch":
            tile = self.tile or max(ph, pw)
            thr = None if setting.rule == "adaptive" else setting.value
            if setting.rule not in ("threshold", "adaptive"):
                raise PcsrError(f"patch routing takes a threshold or --adaptive, not {setting.label}")
            if setting.rule == "adaptive" and units.boxes is not None:  # k-means over all patches of the image
                means = prob[:, -1].mean((1, 2))
                heavy = routing_rules.adaptive(means).view(n, 1, 1).expand(n, ph, pw)
                return heavy.to(torch.uint8) * (m - 1)
            return patch_level_classes(prob[:, -1], tile, thr, heavy_class=m - 1)
        net = self.model.net
        rows = prob.clamp_min(1e-38).log().permute(0, 2, 3, 1).reshape(-1, m)
        r = setting.to_routing()
        if setting.rule == "k":
            cls = net.route_rows(rows, r, n, h, w, ph, pw)
        else:
            if setting.budget_of == "flops" and n > 1:
                raise PcsrError("a budget of FLOPs needs the image protocol")
            cls = net.route_rows(rows, r, 1, h, w, n * ph * pw, 1)
        return cls.view(n, ph, pw)

    # ---------------------------------------------------------------- one setting
    def output(self, units: Units, setting: Setting, shared: dict | None) -> Output:
        pixels = units.lr.shape[0] * units.out_shape[0] * units.out_shape[1]
        if not self.pcsr:
            sr, _, _, flops, _ = self._forward(units.lr)
            return Output(sr, None, sum(flops), sum(flops), None, pixels)
        net = self.model.net
        if shared is not None:
            cls = self.decide(setting, shared["prob"], units)
            sr = shared["outs"][0].clone()
            for j in range(1, self.classes_n):
                sr = torch.where((cls == j).unsqueeze(1), shared["outs"][j], sr)
            if setting.refine:
                sr = routing_rules.refine(sr, cls)
            per_unit = cls.flatten(1)
            counts = torch.stack([(per_unit == j).sum(1) for j in range(self.classes_n)], 1).tolist()
        elif setting.routing == "pixel" and (units.boxes is None or setting.rule == "k"):
            sr, cls, _, _, counts = self._forward(units.lr, setting.to_routing())
        else:
            cls = self.decide(setting, self._probabilities(units), units)
            sr, cls, _, _, counts = self._forward(units.lr, Routing(refine=setting.refine), cls)
        h, w = units.lr.shape[-2:]
        per = units.out_shape[0] * units.out_shape[1]
        flops = sum(net.count_flops(h, w, c) for c in counts)
        max_flops = len(counts) * net.count_flops(h, w, [0] * (self.classes_n - 1) + [per])
        return Output(sr, cls, int(flops), int(max_flops), int(sum(c[-1] for c in counts)), pixels)


# ----------------------------------------------------------------------------- the sweep
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


def display_name(model: Model | str | Path | None) -> str:
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


def sweep(models: Model | Sequence[Model], sets, settings: Sequence[Setting] | None = None, *,
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
    models = [models] if isinstance(models, Model) else list(models)
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
            _save(save / acc.setting.slug, path.stem, sr, units, out, runner.classes_n)


def _save(folder: Path, stem: str, sr: torch.Tensor, units: Units, out: Output, n_classes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / f"{stem}.png", sr.permute(1, 2, 0).numpy())
    if out.classes is None:
        return
    level = units.fold(out.classes.unsqueeze(1).float() / max(n_classes - 1, 1))[0]  # 0 light .. 1 heavy
    write_image(folder / f"{stem}_classes.png", tint(sr, level))


def tint(sr: torch.Tensor, level: torch.Tensor, opacity: float = TINT_OPACITY) -> np.ndarray:
    """The class map over the image: light pixels green, heavy red (in between for mixed overlaps)."""
    light = torch.tensor(LIGHT_RGB).view(3, 1, 1)
    heavy = torch.tensor(HEAVY_RGB).view(3, 1, 1)
    color = light + (heavy - light) * level.unsqueeze(0)
    img = sr.float() / 255 * (1 - opacity) + color * opacity
    return to_uint8(img).permute(1, 2, 0).numpy()


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


LEGACY_KEYS = ("psnr_rgb", "psnr_y", "gflops", "max_gflops", "heavy_fraction", "images", "seconds")
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


def evaluate(model: Model, data: str | Path | list, scale: int | None = None, routing: Routing | None = None,
             progress: bool = False, **options) -> dict:
    """Mean figures over the images of a folder (or a list of paths), and the per-image rows."""
    setting = ORIGINAL if not model.is_pcsr else Setting.from_routing(routing)
    row = sweep(model, [data], [setting], scale=scale, per_image=True, progress=progress, **options)[0]
    return public_row(row, labelled=False)


def score_image(model: Model, hr: torch.Tensor, scale: int, routing: Routing | None, name: str = "") -> ImageScore:
    """One image, one routing (whole-image protocol)."""
    hr, lr = make_lr(hr, scale)
    setting = Setting.from_routing(routing) if model.is_pcsr else ORIGINAL
    runner = Runner(model, scale, exact=True)
    units = Units.of(lr, scale, "image", 32, 28)
    t0 = time.perf_counter()
    out = runner.output(units, setting, None)
    seconds = time.perf_counter() - t0
    m = Reference(to_uint8(hr), shave=scale).score(to_uint8(units.fold(out.sr)), ssim=False)
    return ImageScore(name, m["psnr_rgb"], m["psnr_y"], out.flops, out.max_flops,
                      None if out.heavy is None else out.heavy / out.pixels, seconds)


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
