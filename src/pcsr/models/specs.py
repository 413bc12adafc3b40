"""Typed model specs: everything needed to rebuild a model, and nothing else.

A spec round-trips through a plain dict (stored as JSON in the weights file), so a model
file rebuilds its network without code lookups beyond the small name -> class table in
`backbones.BACKBONES`.

A model file is data from anywhere, and the spec decides how much memory building the network
takes: every field is checked for its type and a sane bound here, before anything is allocated,
so that a spec asking for a terabyte layer is refused in one line instead of attempted.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from numbers import Integral, Real

from ..errors import WeightsError

# Backbone options: (default, smallest, largest). The defaults are those of each backbone's config
# dataclass (a test holds the two together); they are needed here to check options that depend on
# each other (CARN's groups must divide nf) when a spec leaves one out. Widths above 1024 or depths
# above 256 are far beyond any SR backbone this package runs, and would only serve to exhaust memory.
MAX_WIDTH, MAX_DEPTH = 1024, 256
BACKBONE_OPTIONS: dict[str, dict[str, tuple[int, int, int]]] = {
    "fsrcnn": {"d": (56, 1, MAX_WIDTH), "s": (12, 1, MAX_WIDTH), "m": (4, 1, MAX_DEPTH)},
    "carn": {"nf": (64, 1, MAX_WIDTH), "groups": (4, 1, MAX_WIDTH)},
    "msrresnet": {"nf": (64, 1, MAX_WIDTH), "nb": (16, 1, MAX_DEPTH)},
}
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


def check_backbone(name, args) -> dict:
    """The backbone's options as plain ints, or WeightsError naming the first bad one."""
    if not isinstance(name, str):
        raise WeightsError(f"model spec: backbone must be a name, got {type(name).__name__}")
    if name not in BACKBONE_OPTIONS:
        raise WeightsError(f"unknown backbone {name[:40]!r}; known: {', '.join(BACKBONE_OPTIONS)}")
    if not isinstance(args, dict):
        raise WeightsError(f"model spec: backbone_args must be a mapping, got {type(args).__name__}")
    options = BACKBONE_OPTIONS[name]
    unknown = [k for k in args if k not in options]
    if unknown:
        raise WeightsError(f"backbone {name!r}: unknown options {sorted(str(k)[:40] for k in unknown)[:5]}")
    checked = {k: _int_in(v, options[k][1], options[k][2], f"backbone_args.{k}") for k, v in args.items()}
    if name == "carn":
        nf = checked.get("nf", options["nf"][0])
        groups = checked.get("groups", options["groups"][0])
        if nf % groups:
            raise WeightsError(f"carn: nf={nf} is not divisible by groups={groups}")
    return checked


@dataclass(frozen=True)
class ModelSpec:
    """A PCSR model (upsamplers given) or an "original" SR model with its own tail (none given).

    backbone:      name in BACKBONES ("fsrcnn", "carn", "msrresnet")
    backbone_args: fields of that backbone's config dataclass
    scale:         the scale the model was trained for (the only scale of an original model)
    upsamplers:    hidden widths of each per-pixel upsampler MLP, cheapest first
    classifier:    hidden widths of the classifier MLP
    mean:          RGB mean subtracted from the input and added back to the output
    """

    backbone: str
    backbone_args: dict = field(default_factory=dict)
    scale: int = 4
    upsamplers: tuple[tuple[int, ...], ...] = ()
    classifier: tuple[int, ...] = ()
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self):
        # Checked here rather than in from_dict so that a spec made in code (training configs) is
        # held to the same bounds as one read from a file.
        object.__setattr__(self, "backbone_args", check_backbone(self.backbone, self.backbone_args))
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

    @property
    def is_pcsr(self) -> bool:
        return len(self.upsamplers) >= 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["upsamplers"] = [list(h) for h in self.upsamplers]
        d["classifier"] = list(self.classifier)
        d["mean"] = list(self.mean)
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
