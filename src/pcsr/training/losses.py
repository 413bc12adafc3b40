"""The PCSR losses."""
from __future__ import annotations

import torch


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.float() - target.float()).abs().mean()


def l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error: PSNR's own objective. Efficient-SR recipes train with L1 and fine-tune
    the last stretch with L2 at a small learning rate (loss.kind: l2)."""
    return (pred.float() - target.float()).square().mean()


RECONSTRUCTION = {"l1": l1, "l2": l2}


def average_loss(prob: torch.Tensor, class_dim: int) -> torch.Tensor:
    """The paper's L_avg, which keeps the classifier from sending every pixel to the heavy upsampler:
    |sum of p_heavy - N/2| / (N/2) over the N pixels of the batch. For M classes every class gets
    an even target share N/M, and the M deviations are averaged (for M = 2 both equal the paper's)."""
    m = prob.shape[class_dim]
    p = prob.float().movedim(class_dim, -1).reshape(-1, m)
    target = p.shape[0] / m
    return ((p.sum(0) - target).abs() / target).mean()
