"""Typed model specs: everything needed to rebuild a model, and nothing else.

A spec round-trips through a plain dict (stored as JSON in the weights file), so a model
file rebuilds its network without code lookups beyond the small name -> class table in
`backbones.BACKBONES`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..errors import WeightsError


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
        object.__setattr__(self, "upsamplers", tuple(tuple(int(w) for w in h) for h in self.upsamplers))
        object.__setattr__(self, "classifier", tuple(int(w) for w in self.classifier))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "backbone_args", dict(self.backbone_args))
        if len(self.mean) != 3:
            raise WeightsError(f"model spec: mean needs 3 values, got {len(self.mean)}")
        if len(self.upsamplers) == 1:
            raise WeightsError("model spec: a PCSR model needs at least 2 upsamplers")
        if int(self.scale) < 1:
            raise WeightsError(f"model spec: scale must be >= 1, got {self.scale}")

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
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise WeightsError(f"model spec: unknown keys {sorted(unknown)}")
        return cls(**d)
