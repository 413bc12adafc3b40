"""tools/widen_carn.py: the original CARN started from a narrower CARN-PCSR backbone must compute
the narrow features on its kept channels, carry the image on its base channels and start as two
bilinear x2 upsamplings (torch's interpolate is the independent reference)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from pcsr.models.pcsr import build_model
from pcsr.models.specs import ModelSpec

_spec = importlib.util.spec_from_file_location("widen_carn", Path(__file__).parent.parent / "tools" / "widen_carn.py")
widen_carn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(widen_carn)


def _narrow(seed: int):
    torch.manual_seed(seed)
    net = build_model(ModelSpec.from_dict({"backbone": "carn", "backbone_args": {"nf": 52, "groups": 4}, "scale": 4,
                                           "upsamplers": [[8], [16]], "classifier": [4], "mean": [0.45, 0.44, 0.4]}))
    with torch.no_grad():  # trained-looking batch norms, so that copying them wrongly shows
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    return net


def test_widened_carn_keeps_the_features_and_starts_bilinear():
    old = _narrow(0)
    net = widen_carn.widened(old, seed=1)
    assert net.spec.backbone_args["nf"] == 64 and not net.spec.is_pcsr
    err = widen_carn.check(old, net, torch.rand(2, 3, 26, 22, generator=torch.Generator().manual_seed(2)))
    assert err["features"] > 0.1
    assert err["kept"] < 1e-4 and err["base"] < 1e-5 and err["bilinear"] < 1e-5


def test_channel_map_keeps_each_group_at_the_head_of_its_wider_group():
    m = widen_carn.channel_map(52, 64, 4).tolist()
    assert m[:13] == list(range(13)) and m[13:26] == list(range(16, 29)) and m[-1] == 60
