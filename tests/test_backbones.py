"""Generic tests every registered backbone gets, and a toy backbone that gets them from one
registration (no global table is changed: the registry is passed where it is used)."""
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from pcsr.engines import pick_engine
from pcsr.engines.base import Engine
from pcsr.models.backbones import REGISTRY, Backbone, Registration, build_backbone, register
from pcsr.models.pcsr import Routing, build_model
from pcsr.models.specs import ModelSpec
from pcsr.errors import WeightsError


@dataclass(frozen=True)
class ToyConfig:
    c: int = 6


class Toy(Backbone):
    """Two 3x3 convolutions; as an original model, a 3x3 convolution to s*s*3 channels and a shuffle."""

    def __init__(self, cfg: ToyConfig, scale: int | None = None):
        super().__init__()
        self.cfg, self.scale = cfg, scale
        self.body = nn.Sequential(nn.Conv2d(3, cfg.c, 3, padding=1), nn.ReLU(), nn.Conv2d(cfg.c, cfg.c, 3, padding=1))
        self.out_channels = 3 if scale else cfg.c
        self.tail = nn.Sequential(nn.Conv2d(cfg.c, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale)) \
            if scale else None

    def forward(self, x):
        x = self.body(x)
        return self.tail(x) if self.tail is not None else x


TOY = Registration("toy", ToyConfig, Toy, {"c": (1, 64)}, tiny={"c": 5}, original_scales=(2, 3, 4))
WITH_TOY = register(TOY)
CASES = [pytest.param(name, id=name) for name in WITH_TOY]


def test_registering_copies_the_table():
    assert "toy" in WITH_TOY and "toy" not in REGISTRY
    with pytest.raises(WeightsError, match="unknown backbone"):
        ModelSpec("toy", {"c": 5})


def test_the_toys_flops_and_radius_are_counted_generically():
    toy = build_backbone("toy", {"c": 5}, registry=WITH_TOY)
    assert toy.flops(3, 4) == (2 * 9 * 3 * 5 + 2 * 9 * 5 * 5) * 12
    assert toy.receptive_radius == 2
    tail = build_backbone("toy", {"c": 5}, scale=2, registry=WITH_TOY)
    assert tail.flops(3, 4) == toy.flops(3, 4) + 2 * 9 * 5 * 12 * 12
    assert tail.receptive_radius == 3


@pytest.mark.parametrize("name", CASES)
def test_features_shapes_flops_and_bounds(name):
    reg = WITH_TOY[name]
    net = build_backbone(name, reg.tiny, registry=WITH_TOY).eval()
    x = torch.rand(2, 3, 7, 9)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, net.out_channels, 7, 9)
    assert net.flops(7, 9) > 0 and net.flops(14, 9) == 2 * net.flops(7, 9)
    for key, (lo, hi) in reg.bounds.items():
        with pytest.raises(WeightsError, match=key):
            ModelSpec(name, {**reg.tiny, key: hi + 1}, registry=WITH_TOY)
        assert lo >= 1


@pytest.mark.parametrize("name", CASES)
def test_receptive_radius_covers_what_a_pixel_changes(name):
    """One LR pixel changed: no feature (and no original-model output pixel) farther than the radius
    moves; random weights and biases, so no path is silent by accident."""
    reg = WITH_TOY[name]
    for scale in (None, reg.original_scales[min(1, len(reg.original_scales) - 1)]):
        torch.manual_seed(1)
        net = build_backbone(name, reg.tiny, scale=scale, registry=WITH_TOY).eval()
        x = torch.rand(1, 3, 45, 45, dtype=torch.float64)
        y = x.clone()
        y[..., 22, 22] += 1.0
        with torch.no_grad():
            net = net.double()
            diff = (net(x) - net(y)).abs().amax(1)[0]
        s = scale or 1
        owner = torch.nonzero(diff > 0) // s  # the LR pixel each changed output pixel belongs to
        assert (owner - 22).abs().max() <= net.receptive_radius, (name, scale)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("engine", ["reference", "cpu"])
def test_pcsr_and_original_models_run_on_every_engine(name, engine):
    """A PCSR model on the backbone and the backbone's own original model, through the engines:
    the CPU engine's result equals the reference's (class map imposed)."""
    reg = WITH_TOY[name]
    torch.manual_seed(0)
    spec = ModelSpec(name, reg.tiny, scale=2, upsamplers=((4,), (6, 6)), classifier=(4,), registry=WITH_TOY)
    net = build_model(spec, WITH_TOY).eval()
    lr = torch.rand(1, 3, 6, 5)
    want = Engine(net, torch.device("cpu"), "fp32").run(lr, Routing(k=0.0))
    got = pick_engine(net, torch.device("cpu"), "fp32", engine).run(lr, Routing(k=0.0), classes=want.classes)
    assert got.sr.shape == (1, 3, 12, 10) and got.flops == want.flops
    assert (got.sr - want.sr).abs().max() <= 1e-5 * (1 + want.sr.abs().max())
    scale = reg.original_scales[-1]
    original = build_model(ModelSpec(name, reg.tiny, scale=scale, registry=WITH_TOY), WITH_TOY).eval()
    out = pick_engine(original, torch.device("cpu"), "fp32", engine).run(lr)
    assert out.sr.shape == (1, 3, 6 * scale, 5 * scale)
    assert out.flops == [original.backbone.flops(6, 5)]
