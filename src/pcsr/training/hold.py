"""Output channels held fixed while the rest of their layers train (`hold:` in a config).

`freeze` holds whole modules; some starts need finer grain. The original CARN started from a
CARN-PCSR backbone (tools/widen_carn.py) carries the LR image through its body on a few channels;
when the body trains, those channels' rows would learn to add terms computed from large features,
and in bf16 the image they carry then picks up the rounding of those terms (docs/TRAINING.md,
session 18). Holding the rows keeps that path exact while every other channel adapts: the gradient
of each held row is zeroed after the backward pass, so Adam never moves it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import PcsrError


def named_parts(net: nn.Module, names: list[str], option: str) -> list[nn.Module]:
    """The modules a config option names (dotted paths): a typo must fail, not train what it meant to hold."""
    try:
        return [net.get_submodule(n) for n in names]
    except AttributeError as e:
        raise PcsrError(f"{option}: this model has no such part ({e})") from None


def hold_masks(net: nn.Module, parts: list[str], channels: list[int]) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, 0/1 mask) for every trainable parameter under `parts` whose leading (output
    channel) axis covers `channels`."""
    if bool(parts) != bool(channels):
        raise PcsrError("hold: give both parts and channels, or neither")
    masks = []
    for part, module in zip(parts, named_parts(net, parts, "hold")):
        for name, p in module.named_parameters():
            if not p.requires_grad or p.dim() == 0:
                continue
            if max(channels) >= p.shape[0] or min(channels) < 0:
                raise PcsrError(f"hold: {part}.{name} has {p.shape[0]} output channels, not {max(channels) + 1}")
            mask = torch.ones(p.shape[0], *[1] * (p.dim() - 1), dtype=p.dtype, device=p.device)
            mask[channels] = 0
            masks.append((p, mask))
    return masks


def apply_holds(masks: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    for p, mask in masks:
        if p.grad is not None:
            p.grad.mul_(mask)
