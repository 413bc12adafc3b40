"""The public API: `pcsr.load()` gives a `Model` whose `upscale()` takes a picture and gives one back."""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import weights
from .errors import PcsrError
from .models.pcsr import Routing, SRResult


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PcsrError("--device cuda: no CUDA device is available")
    return torch.device(device)


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively: AMX / AVX512-BF16 CPUs, or CUDA with bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def emulated_bf16(device: torch.device) -> str:
    """Why bf16 is a bad choice on `device` ("" where it runs natively)."""
    if fast_bf16(device):
        return ""
    return f"this {device.type.upper()} has no native bfloat16: bf16 is emulated and many times slower than fp32 here"


def choose_precision(device: torch.device, info: dict) -> str:
    """`--precision auto`: a reduced precision only where it was measured to cost at most 0.01 dB and
    1 % of the FLOPs for this model (`info["reduced_precision_ok"]`, written by benchmarks/precision.py),
    and only where the hardware runs it fast; fp32 otherwise."""
    ok = info.get("reduced_precision_ok", [])
    if device.type == "cuda" and "fp16" in ok:
        return "fp16"
    if "bf16" in ok and fast_bf16(device):
        return "bf16"
    return "fp32"


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def with_inference_backbone(net: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of `net` whose backbone is its fast inference form in `dtype`, if it has one (CARN: in
    fp32 the same function to float rounding, a few 1e-7 relative; `net` itself is left alone)."""
    fast = net.backbone.inference_form(dtype)
    if fast is net.backbone:
        return net
    clone = copy.deepcopy(net)
    clone.backbone = fast
    return clone


def autocast(device: torch.device, precision: str):
    """Reduced precision by autocast (weights stay fp32); fp32 is a no-op context."""
    if precision in ("fp32", "auto"):
        return contextlib.nullcontext()
    dtype = DTYPES.get(precision)
    if dtype is None:
        raise PcsrError(f"unknown precision {precision!r} (fp32, bf16, fp16)")
    if dtype == torch.float16 and device.type != "cuda":
        raise PcsrError("fp16 needs a CUDA device; use bf16 on a CPU")
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class Upscaled:
    image: Image.Image                 # the result, 8-bit RGB
    sr: np.ndarray                     # float32 HxWx3 in [0, 1], before 8-bit rounding (after it, if tiled)
    class_map: np.ndarray | None       # HxW uint8, 0 = cheapest upsampler; None for original models
    flops: int
    max_flops: int

    @property
    def heavy_fraction(self) -> float | None:
        if self.class_map is None:
            return None
        return float((self.class_map > 0).mean())


class Model:
    """A loaded network with its device and precision."""

    def __init__(self, net: torch.nn.Module, info: dict | None = None, device: str = "auto",
                 precision: str = "fp32", name: str | None = None):
        self.device = pick_device(device)
        self.info = info or {}
        self.precision = choose_precision(self.device, self.info) if precision == "auto" else precision
        autocast(self.device, self.precision)  # validates the name and the device early
        if self.precision == "bf16" and (why := emulated_bf16(self.device)):
            warnings.warn(f"{why} (use --precision auto)", stacklevel=2)
        self.net = net.to(self.device, memory_format=torch.channels_last).eval()
        self.net = with_inference_backbone(self.net, DTYPES[self.precision])
        self.name = name

    @property
    def spec(self):
        return self.net.spec

    @property
    def scale(self) -> int:
        return self.net.spec.scale

    @property
    def is_pcsr(self) -> bool:
        return self.net.spec.is_pcsr

    def run(self, lr: torch.Tensor, routing: Routing | None = None, scale=None, out_size=None,
            classes: torch.Tensor | None = None, path: str = "auto", return_prob: bool = False) -> SRResult:
        """LR (N, 3, h, w) float in [0, 1] -> SRResult; the one inference path under every command.
        `path` "query" forces the reference query-based heads (PCSR models)."""
        lr = lr.to(self.device, torch.float32)
        with torch.inference_mode(), autocast(self.device, self.precision):
            if self.is_pcsr:
                res = self.net.infer(lr, scale=scale, out_size=out_size, routing_=routing, classes=classes,
                                     path=path, return_prob=return_prob)
            else:
                res = self.net.infer(lr, scale=scale, out_size=out_size)
        res.sr = res.sr.float()
        return res

    def upscale(self, image, k: float = 0.0, adaptive: bool = False, budget: float | None = None,
                refine: bool = True, scale: float | None = None, tile: int | None = None) -> Upscaled:
        """image: PIL.Image or HxWx3 uint8 array.

        At the model's own scale, an image wider or taller than `tile` LR pixels (None: a side
        that fits the free memory, as `pcsr upscale` picks it; 0: never tile) runs in tiles with
        exact context, in bounded memory, like the command; its `sr` is then the 8-bit result / 255.
        """
        arr = _as_rgb_array(image)
        routing = Routing(k=k, adaptive=adaptive, budget=budget, refine=refine)
        if scale is None or scale == self.scale:
            from . import tiling
            side = tiling.auto_tile(self, tiling.required_context(self)) if tile is None else int(tile)
            if side > 0 and max(arr.shape[:2]) > side:
                tiled = tiling.upscale(self, torch.from_numpy(arr).permute(2, 0, 1).float().div_(255), routing,
                                       tile=side)
                return Upscaled(Image.fromarray(tiled.pixels), tiled.pixels.astype(np.float32) / 255,
                                tiled.classes, int(tiled.flops), int(tiled.max_flops))
        lr = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).float().div_(255)
        res = self.run(lr, routing, scale=scale)
        sr = res.sr[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        img = Image.fromarray(np.round(sr * 255).astype(np.uint8))
        cmap = None if res.classes is None else res.classes[0].to(torch.uint8).cpu().numpy()
        return Upscaled(img, sr, cmap, int(res.flops[0]), int(res.max_flops[0]))


def _as_rgb_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise PcsrError(f"expected a PIL image or an HxWx3 uint8 array, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr[..., :3])


def load(name_or_path=None, device: str = "auto", precision: str = "auto") -> Model:
    """A bundled model name (default: the bundled default), a .safetensors file, or a reference .pth."""
    net, info = weights.load(name_or_path)
    return Model(net, info, device=device, precision=precision, name=str(name_or_path or weights.DEFAULT_MODEL))
