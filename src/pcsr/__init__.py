"""pcsr: image super-resolution that spends compute only where the image needs it (PCSR, ECCV 2024).

The names below are imported on first use (PEP 562), so that `pcsr --help` and the command's
usage errors need no torch import (two seconds on the machines we measured).
"""
from .errors import ImageError, PcsrError, WeightsError

__version__ = "0.1.0"
__all__ = ["load", "Model", "Upscaled", "Routing", "PcsrError", "ImageError", "WeightsError", "__version__"]

_LAZY = {"load": "api", "Model": "api", "Upscaled": "api", "Routing": "models.pcsr"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
