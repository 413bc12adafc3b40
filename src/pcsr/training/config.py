"""Typed training configs loaded from YAML.

A config file maps onto `TrainConfig` field by field; an unknown key or a value of the wrong type
is an error naming the offending key, because a silently ignored typo can waste a day of training.
A file may start from another with `base: other.yaml` (path relative to the file) and override it.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import PcsrError
from ..models.specs import ModelSpec


class ConfigError(PcsrError):
    """A config file, key or --set override that cannot be used."""


@dataclass
class ModelConfig:
    backbone: str = "carn"
    backbone_args: dict = field(default_factory=dict)
    scale: int = 4
    upsamplers: list[list[int]] = field(default_factory=list)  # cheapest first; empty = original model
    classifier: list[int] = field(default_factory=list)
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def spec(self) -> ModelSpec:
        return ModelSpec(backbone=self.backbone, backbone_args=dict(self.backbone_args), scale=self.scale,
                         upsamplers=tuple(tuple(u) for u in self.upsamplers), classifier=tuple(self.classifier),
                         mean=tuple(self.mean))


@dataclass
class DataConfig:
    folders: list[str] = field(default_factory=list)
    batch_size: int = 16
    lr_patch: int = 32              # LR side of a training patch; the HR crop is lr_patch * scale
    scale_range: list[float] | None = None  # e.g. [1, 4]: a scale per batch, trained through point queries
    queries: int = 0                # > 0: train on this many random HR pixels per patch (point-query path)
    augment: bool = True            # random h/v flips and transposition
    # Skip flat crops (sky, blur, darkness): a crop whose mean absolute difference between
    # neighbouring pixels (gray, 0-255 scale) is below min_detail is redrawn, up to detail_tries
    # times; the last draw is kept so that sampling always ends. 0 = every crop is kept.
    min_detail: float = 0.0
    detail_tries: int = 4


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    min_lr: float = 1e-7            # cosine annealing floor, reached at the last iteration
    iterations: int = 100_000
    # exponential moving average of the weights, validated and exported in place of the raw ones
    # (decay per iteration, warmed up as min(ema, (1 + t) / (10 + t))); 0 = off
    ema: float = 0.0


@dataclass
class LossConfig:
    kind: str = "l1"                # reconstruction loss: l1, or l2 (fine-tuning towards PSNR)
    w_rgb: float = 1000.0
    w_avg: float = 3.0


@dataclass
class ValConfig:
    folders: list[str] = field(default_factory=list)
    every: int = 2000               # iterations; 0 = never
    # phase 1: routings to report; the first one picks best.safetensors. Phase 0 and original
    # models are validated all-heavy / as they are.
    k: list[float] = field(default_factory=lambda: [0.0])
    all_heavy: bool = True
    at_end: bool = True


@dataclass
class HoldConfig:
    parts: list[str] = field(default_factory=list)     # dotted module paths, e.g. backbone.blocks
    channels: list[int] = field(default_factory=list)  # output channels whose weights stay put there


@dataclass
class TrainConfig:
    name: str = ""                  # run folder runs/<name>; default: the config file's stem + phase
    seed: int = 0
    phase: int = 0                  # PCSR: 0 = backbone + heavy upsampler, 1 = classifier + lighter upsamplers
    init_from: str | None = None    # weights to start from: a run folder, a .pt checkpoint or a .safetensors
    freeze: list[str] = field(default_factory=list)  # parts held fixed, in eval mode (e.g. backbone.blocks)
    hold: HoldConfig = field(default_factory=HoldConfig)  # output channels held fixed (training/hold.py)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    val: ValConfig = field(default_factory=ValConfig)
    device: str = "auto"
    precision: str = "auto"         # autocast dtype for forward passes (master weights stay fp32);
                                    # auto: bf16 where the hardware runs it natively, else fp32
    channels_last: bool = True
    flush_denormal: bool = True     # tiny activations otherwise slow CPU arithmetic down many times
    threads: int = 0                # torch threads per process; 0 = the machine's cores / local processes
    log_every: int = 50
    checkpoint_minutes: float = 5.0

    def spec(self) -> ModelSpec:
        """The model's spec as trained: with data.scale_range, the model says which scales it was
        trained for, so `pcsr upscale -s` runs it natively there (pcsr.models.specs)."""
        spec = self.model.spec()
        if not self.data.scale_range or not spec.is_pcsr or len(self.data.scale_range) != 2:
            return spec  # check() names what is wrong with a bad range
        return ModelSpec.from_dict({**spec.to_dict(), "scale_range": [float(v) for v in self.data.scale_range]})

    def check(self) -> None:
        spec = self.spec()
        if self.phase not in (0, 1):
            raise ConfigError(f"phase must be 0 or 1, got {self.phase}")
        if not spec.is_pcsr and self.phase != 0:
            raise ConfigError("an original model (no upsamplers) trains in one phase: set phase: 0")
        if not spec.is_pcsr and (self.data.scale_range or self.data.queries):
            raise ConfigError("data.scale_range / data.queries need a PCSR model (upsamplers)")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if not self.data.folders:
            raise ConfigError("data.folders: give at least one folder of HR training images")
        if self.data.scale_range is not None and len(self.data.scale_range) != 2:
            raise ConfigError("data.scale_range needs two numbers [min, max]")
        if self.data.scale_range and not self.data.queries:
            raise ConfigError("data.scale_range needs data.queries > 0 (a non-integer scale uses point queries)")
        if not 0.0 <= self.optim.ema < 1.0:
            raise ConfigError(f"optim.ema must be in [0, 1) (0 = off), got {self.optim.ema}")
        if self.loss.kind not in ("l1", "l2"):
            raise ConfigError(f"loss.kind must be l1 or l2, got {self.loss.kind!r}")
        if self.optim.iterations < 1 or self.data.batch_size < 1 or self.data.lr_patch < 1:
            raise ConfigError("optim.iterations, data.batch_size and data.lr_patch must be positive")
        if not (self.data.min_detail >= 0 and self.data.detail_tries >= 1):
            raise ConfigError("data.min_detail must be >= 0 and data.detail_tries >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- dict -> dataclass
def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(value, tp, key: str):
    """`value` checked against (and gently converted to) type `tp`; `key` names it in errors."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return convert(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def from_dict(cls, d: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        where = f" in {prefix}" if prefix else ""
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(repr(f'{prefix}.{k}' if prefix else k) for k in unknown)}{where} "
                          f"(known: {', '.join(names)})")
    kwargs = {k: convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in d.items()}
    return cls(**kwargs)


# ----------------------------------------------------------------------------- files and overrides
def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' includes form a loop")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    base = data.pop("base", None)
    if base is None:
        return data
    parent = _read_yaml(path.parent / str(base), seen + (path.resolve(),))
    return _merge(parent, data)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "backbone_args" \
            else v
    return out


def apply_override(raw: dict, item: str) -> None:
    """`a.b=3`: the value is read as YAML (so 3 is an int, [1, 4] a list, null None)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=1e-4")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {p} is not a section")
        node = nxt
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = (), raw: dict | None = None) -> TrainConfig:
    """From a YAML file (or a ready dict), with `key=value` overrides, checked."""
    data = dict(raw or {})
    if path is not None:
        path = Path(path)
        data = _merge(_read_yaml(path), data)
    for item in overrides:
        apply_override(data, item)
    cfg = from_dict(TrainConfig, data)
    if not cfg.name:
        stem = Path(path).stem if path is not None else "run"
        suffix = f"-phase{cfg.phase}"
        cfg.name = stem + suffix if cfg.model.upsamplers and not stem.endswith(suffix) else stem
    try:
        cfg.check()
    except PcsrError as e:
        raise ConfigError(str(e)) from None
    return cfg


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
