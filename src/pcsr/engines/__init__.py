"""Engines decide how a pure model (pcsr.models) runs on a device in a precision.

`pick_engine` is the one place that choice is made: the CPU engine (fast forms of every step, each
falling back to torch's operations, the whole engine to the reference on any failure) on a CPU,
the reference engine (the model's own modules, plain torch) elsewhere, CUDA included.
"""
from __future__ import annotations

import torch

from ..errors import PcsrError
from .base import Engine, ReferenceEngine, SRResult, is_out_of_memory
from ..device import (DTYPES, autocast, check_precision, choose_precision, emulated_bf16, fast_bf16,
                      pick_device)

ENGINES = ("auto", "reference", "cpu")


def pick_engine(net: torch.nn.Module, device: torch.device, precision: str, engine: str = "auto",
                compile: bool = False) -> Engine:
    """An engine for `net` on `device` in `precision` ("fp32", "bf16", "fp16"; not "auto").
    `compile`: the reference engine with its backbone under torch.compile (any device; the CPU
    engine has its own fast forms instead)."""
    if engine not in ENGINES:
        raise PcsrError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    if compile and engine == "cpu":
        raise PcsrError("compile applies to the reference engine; the cpu engine has its own fast forms")
    if engine == "reference" or compile or (engine == "auto" and device.type != "cpu"):
        return ReferenceEngine(net, device, precision, compile=compile)
    if device.type != "cpu":
        raise PcsrError("the cpu engine runs on a CPU only")
    from .cpu import CpuEngine
    return CpuEngine(net, device, precision)


__all__ = ["Engine", "ReferenceEngine", "SRResult", "pick_engine", "is_out_of_memory", "DTYPES", "autocast",
           "check_precision", "choose_precision", "emulated_bf16", "fast_bf16", "pick_device", "ENGINES"]
