"""An exponential moving average of a model's weights (Polyak averaging), kept beside the raw ones.

Its own few lines rather than torch.optim.swa_utils.AveragedModel: that keeps a second module (and a
`module.` prefix in its state), where the trainer needs a plain state dict to checkpoint, resume
exactly and swap in for validation and export.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class Ema:
    def __init__(self, net: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in net.state_dict().items()}

    def update(self, net: nn.Module) -> None:
        """After an optimiser step. The decay warms up as (1 + t) / (10 + t), so that the average does
        not drag the starting weights along for thousands of iterations; integer buffers are copied."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        cur = net.state_dict()
        keys = [k for k, v in self.shadow.items() if v.is_floating_point()]
        with torch.no_grad():
            torch._foreach_lerp_([self.shadow[k] for k in keys], [cur[k].detach() for k in keys], 1.0 - d)
            for k, v in self.shadow.items():
                if not v.is_floating_point():
                    v.copy_(cur[k])

    def state_dict(self) -> dict:
        return {"updates": self.updates, "weights": {k: v.detach().cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for k, v in state["weights"].items():
            self.shadow[k].copy_(v)

    @contextmanager
    def swapped_in(self, net: nn.Module):
        """The averaged weights in `net` for the duration (validation, saving), the raw ones after."""
        raw = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.load_state_dict(self.shadow)
        try:
            yield net
        finally:
            net.load_state_dict(raw)


def inference_state(ck: dict) -> dict:
    """The weights a training checkpoint stands for: the average where the run kept one, else the raw weights."""
    return ck["ema"]["weights"] if ck.get("ema") else ck["model"]
