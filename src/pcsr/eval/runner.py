"""One model on the units of one image under one setting: the network calls of an evaluation.

A sweep over several settings shares the network passes. Per image, the classifier probabilities
and the output of every upsampler on every pixel are computed once, without refinement; each
setting then only decides a class map, picks each pixel from its upsampler's output and refines.
Each output pixel of an upsampler depends on its own query alone, so this equals what the model's `run`
gives for that class map up to float rounding (tests/test_evaluate.py checks it). ``exact=True``
runs the model once per setting instead, which is also what gives a per-setting time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import routing as routing_rules
from ..core import Core
from ..errors import PcsrError
from ..models.pcsr import Routing
from .protocol import Setting, Units, patch_level_classes


@dataclass
class Output:
    """What one setting gave on the units of one image."""

    sr: torch.Tensor                  # (N, 3, P, Q) float, per unit
    classes: torch.Tensor | None      # (N, P, Q) uint8
    flops: int                        # summed over the units
    max_flops: int
    heavy: int | None                 # pixels of the costliest class, over the units
    pixels: int


class Runner:
    """Turns the units of one image and a setting into outputs, for one model."""

    def __init__(self, model: Core, scale: int, patch: int = 32, protocol: str = "image",
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
                res = self.model.run(chunk, routing, scale=self.scale, classes=c, return_prob=True)
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
