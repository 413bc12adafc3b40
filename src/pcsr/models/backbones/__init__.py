"""The backbone registry: one small explicit table, one file per backbone.

A registration carries the backbone's config dataclass, its module class, the bounds of every
config field (weights files are data from strangers: specs are checked against these before
anything is built), a tiny config that the tests build every registered backbone with, and its
capabilities ("features": a PCSR backbone; "original": with its own upsampling tail; the scales
that tail takes). To add a backbone: write its file and add one entry below; the generic tests
(tests/test_backbones.py, the conformance suite) pick it up from here.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ...errors import WeightsError
from .base import Backbone, Measured, measure
from .carn import CARN, CARNConfig
from .fsrcnn import FSRCNN, FSRCNNConfig
from .msrresnet import MSRResNet, MSRResNetConfig


@dataclass(frozen=True)
class Registration:
    name: str
    config: type
    module: type[Backbone]
    bounds: dict[str, tuple[int, int]]          # config field -> (min, max), inclusive
    tiny: dict                                  # a config for fast tests
    capabilities: frozenset = frozenset({"features", "original"})
    original_scales: tuple[int, ...] = tuple(range(1, 17))
    check: object = None                        # optional extra check of a config: callable(cfg) -> None

    def __post_init__(self):
        names = {f.name for f in fields(self.config)}
        if set(self.bounds) != names:
            raise ValueError(f"backbone {self.name}: bounds must name exactly the config fields {sorted(names)}")

    def defaults(self) -> dict:
        return {f.name: f.default for f in fields(self.config)}


def _carn_groups(cfg: CARNConfig) -> None:
    if cfg.nf % cfg.groups:
        raise WeightsError(f"carn: nf={cfg.nf} is not divisible by groups={cfg.groups}")


REGISTRY: dict[str, Registration] = {r.name: r for r in (
    Registration("fsrcnn", FSRCNNConfig, FSRCNN, {"d": (1, 1024), "s": (1, 1024), "m": (1, 256)},
                 tiny={"d": 8, "s": 4, "m": 2}, original_scales=tuple(range(1, 10))),
    Registration("carn", CARNConfig, CARN, {"nf": (1, 1024), "groups": (1, 1024)},
                 tiny={"nf": 8, "groups": 4}, check=_carn_groups),
    Registration("msrresnet", MSRResNetConfig, MSRResNet, {"nf": (1, 1024), "nb": (1, 256)},
                 tiny={"nf": 8, "nb": 2}),
)}


def register(reg: Registration, registry: dict[str, Registration] | None = None) -> dict[str, Registration]:
    """A registry with `reg` added (a copy: the table above is never changed at run time)."""
    out = dict(REGISTRY if registry is None else registry)
    out[reg.name] = reg
    return out


def build_backbone(name: str, args: dict, scale: int | None = None,
                   registry: dict[str, Registration] | None = None) -> Backbone:
    table = REGISTRY if registry is None else registry
    if name not in table:
        raise WeightsError(f"unknown backbone {name!r}; known: {', '.join(table)}")
    reg = table[name]
    known = {f.name for f in fields(reg.config)}
    unknown = set(args) - known
    if unknown:
        raise WeightsError(f"backbone {name!r}: unknown options {sorted(unknown)}")
    cfg = reg.config(**args)
    if reg.check is not None:
        reg.check(cfg)
    if scale and scale not in reg.original_scales:
        raise WeightsError(f"backbone {name!r}: its own tail upscales by {reg.original_scales[0]}.."
                           f"{reg.original_scales[-1]}, not x{scale}")
    return reg.module(cfg, scale)


# name -> (config class, module class), for code that needs only those two
BACKBONES = {name: (r.config, r.module) for name, r in REGISTRY.items()}

__all__ = ["Backbone", "Measured", "measure", "Registration", "REGISTRY", "BACKBONES", "register",
           "build_backbone", "CARN", "CARNConfig", "FSRCNN", "FSRCNNConfig", "MSRResNet", "MSRResNetConfig"]
