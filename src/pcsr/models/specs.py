"""Typed model specs: everything needed to rebuild a model, and nothing else.

A spec round-trips through a plain dict (stored as JSON in the weights file), so a model
file rebuilds its network without code lookups beyond the backbone registry
(`backbones.REGISTRY`, which also holds each backbone option's bounds).

A model file is data from anywhere, and the spec decides how much memory building the network
takes: every field is checked for its type and a sane bound here, before anything is allocated,
so that a spec asking for a terabyte layer is refused in one line instead of attempted.
"""
from __future__ import annotations

import math
from dataclasses import InitVar, asdict, dataclass, field, fields
from numbers import Integral, Real

from ..errors import WeightsError
from .backbones import REGISTRY

MAX_SCALE = 16
MAX_MLP_WIDTH, MAX_MLP_LAYERS = 4096, 16   # per-pixel MLPs: a hidden layer's width, hidden layers
MAX_CLASSES = 16                           # upsamplers of a PCSR model (class maps are uint8)


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _int_in(value, lo: int, hi: int, what: str) -> int:
    if not _is_int(value):
        raise WeightsError(f"model spec: {what} must be a whole number, got {value!r:.40}")
    if not lo <= value <= hi:
        raise WeightsError(f"model spec: {what} must be between {lo} and {hi}, got {value}")
    return int(value)


def _sequence(value, what: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise WeightsError(f"model spec: {what} must be a list, got {type(value).__name__}")
    return tuple(value)


def _widths(value, what: str) -> tuple[int, ...]:
    items = _sequence(value, what)
    if len(items) > MAX_MLP_LAYERS:
        raise WeightsError(f"model spec: {what} has {len(items)} hidden layers, at most {MAX_MLP_LAYERS}")
    return tuple(_int_in(w, 1, MAX_MLP_WIDTH, f"{what}[{i}]") for i, w in enumerate(items))


def check_backbone(name, args, registry: dict | None = None) -> dict:
    """The backbone's options as plain ints within the bounds its registration gives (pcsr.models.
    backbones), or WeightsError naming the first bad one."""
    table = REGISTRY if registry is None else registry
    if not isinstance(name, str):
        raise WeightsError(f"model spec: backbone must be a name, got {type(name).__name__}")
    if name not in table:
        raise WeightsError(f"unknown backbone {name[:40]!r}; known: {', '.join(table)}")
    if not isinstance(args, dict):
        raise WeightsError(f"model spec: backbone_args must be a mapping, got {type(args).__name__}")
    reg = table[name]
    unknown = [k for k in args if k not in reg.bounds]
    if unknown:
        raise WeightsError(f"backbone {name!r}: unknown options {sorted(str(k)[:40] for k in unknown)[:5]}")
    checked = {k: _int_in(v, *reg.bounds[k], f"backbone_args.{k}") for k, v in args.items()}
    if reg.check is not None:  # options that depend on each other (CARN: groups divide nf), defaults filled in
        reg.check(reg.config(**{**reg.defaults(), **checked}))
    return checked


@dataclass(frozen=True)
class ModelSpec:
    """A PCSR model (upsamplers given) or an "original" SR model with its own tail (none given).

    backbone:      name in the backbone registry ("fsrcnn", "carn", "msrresnet")
    backbone_args: fields of that backbone's config dataclass
    scale:         the scale the model was trained for (the only scale of an original model)
    upsamplers:    hidden widths of each per-pixel upsampler MLP, cheapest first
    classifier:    hidden widths of the classifier MLP
    mean:          RGB mean subtracted from the input and added back to the output
    scale_range:   (lo, hi) when a PCSR model was trained on every scale in [lo, hi] (its point-query
                   heads take any scale): `pcsr upscale -s S` in that range runs it at S natively
                   instead of resizing its x`scale` result. None: trained at `scale` only.
    """

    backbone: str
    backbone_args: dict = field(default_factory=dict)
    scale: int = 4
    upsamplers: tuple[tuple[int, ...], ...] = ()
    classifier: tuple[int, ...] = ()
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale_range: tuple[float, float] | None = None
    registry: InitVar[dict | None] = None  # another backbone table (tests of a new backbone); not stored

    def __post_init__(self, registry):
        # Checked here rather than in from_dict so that a spec made in code (training configs) is
        # held to the same bounds as one read from a file.
        object.__setattr__(self, "backbone_args", check_backbone(self.backbone, self.backbone_args, registry))
        object.__setattr__(self, "scale", _int_in(self.scale, 1, MAX_SCALE, "scale"))
        ups = _sequence(self.upsamplers, "upsamplers")
        if len(ups) == 1:
            raise WeightsError("model spec: a PCSR model needs at least 2 upsamplers")
        if len(ups) > MAX_CLASSES:
            raise WeightsError(f"model spec: {len(ups)} upsamplers, at most {MAX_CLASSES}")
        object.__setattr__(self, "upsamplers", tuple(_widths(h, f"upsamplers[{i}]") for i, h in enumerate(ups)))
        object.__setattr__(self, "classifier", _widths(self.classifier, "classifier"))
        mean = _sequence(self.mean, "mean")
        if len(mean) != 3:
            raise WeightsError(f"model spec: mean needs 3 values, got {len(mean)}")
        if not all(isinstance(m, Real) and not isinstance(m, bool) and math.isfinite(m) for m in mean):
            raise WeightsError(f"model spec: mean needs 3 finite numbers, got {list(mean)!r:.80}")
        object.__setattr__(self, "mean", tuple(float(m) for m in mean))
        if self.scale_range is not None:
            object.__setattr__(self, "scale_range", self._check_range(self.scale_range))

    def _check_range(self, value) -> tuple[float, float]:
        rng = _sequence(value, "scale_range")
        if len(rng) != 2 or not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)
                                    for v in rng):
            raise WeightsError(f"model spec: scale_range needs 2 finite numbers, got {list(rng)!r:.80}")
        lo, hi = float(rng[0]), float(rng[1])
        if not 1.0 <= lo <= hi <= MAX_SCALE:
            raise WeightsError(f"model spec: scale_range must satisfy 1 <= lo <= hi <= {MAX_SCALE}, "
                               f"got [{lo:g}, {hi:g}]")
        if not self.is_pcsr:
            raise WeightsError("model spec: scale_range needs a PCSR model (an original model has one scale)")
        return lo, hi

    def native(self, scale: float) -> bool:
        """Whether the model was trained for `scale` (its own, or one in its scale_range)."""
        if scale == self.scale:
            return True
        return self.scale_range is not None and self.scale_range[0] <= scale <= self.scale_range[1]

    @property
    def is_pcsr(self) -> bool:
        return len(self.upsamplers) >= 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["upsamplers"] = [list(h) for h in self.upsamplers]
        d["classifier"] = list(self.classifier)
        d["mean"] = list(self.mean)
        if self.scale_range is None:
            del d["scale_range"]  # files of models trained at one scale stay as they were
        else:
            d["scale_range"] = list(self.scale_range)
        return d

    @classmethod
    def from_dict(cls, d) -> "ModelSpec":
        if not isinstance(d, dict):
            raise WeightsError(f"model spec: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise WeightsError(f"model spec: unknown keys {sorted(str(k)[:40] for k in unknown)[:5]}")
        if "backbone" not in d:
            raise WeightsError("model spec: no backbone")
        return cls(**d)
