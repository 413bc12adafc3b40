"""Devices and precisions: which device a model runs on and in which number format (a leaf module).

The rule behind `auto`: a reduced precision only where it was measured harmless for the model
(`reduced_precision_ok` in its weights file, written by benchmarks/precision.py) and only where the
hardware runs it natively; fp32 otherwise.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from .errors import PcsrError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PcsrError("--device cuda: no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise PcsrError(f"unknown device {device!r} (auto, cpu, cuda or cuda:N)") from None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively: AMX / AVX512-BF16 CPUs, or CUDA with bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def emulated_bf16(device: torch.device) -> str:
    """Why bf16 is a bad choice on `device` ("" where it runs natively)."""
    if fast_bf16(device):
        return ""
    return f"this {device.type.upper()} has no native bfloat16: bf16 is emulated and many times slower than fp32 here"


def choose_precision(device: torch.device, info: dict) -> str:
    ok = info.get("reduced_precision_ok", [])
    if device.type == "cuda" and "fp16" in ok:
        return "fp16"
    if "bf16" in ok and fast_bf16(device):
        return "bf16"
    return "fp32"


def check_precision(device: torch.device, precision: str) -> None:
    if precision not in DTYPES:
        raise PcsrError(f"unknown precision {precision!r} (auto, fp32, bf16, fp16)")
    if precision == "fp16" and device.type != "cuda":
        raise PcsrError("fp16 needs a CUDA device; use bf16 on a CPU")


def autocast(device: torch.device, precision: str):
    """Reduced precision by autocast (weights stay fp32); fp32 is a no-op context."""
    if precision in ("fp32", "auto"):
        return contextlib.nullcontext()
    check_precision(device, precision)
    return torch.autocast(device.type, dtype=DTYPES[precision])
