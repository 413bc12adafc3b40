"""`pcsr eval`: the benchmark protocol. HR images are cropped to a multiple of the scale, made LR by
the MATLAB-compatible bicubic, super-resolved, rounded to 8 bits and compared with the HR.

protocol.py  LR making, sweep settings, the patch protocol's geometry, patch-level routing
score.py     PSNR / SSIM against the HR image (BasicSR / MATLAB conventions)
runner.py    one model on one image's units under a setting; the passes a sweep shares
sweeps.py    sweep() over models, sets and settings; evaluate() for one routing
report.py    Markdown tables, CSV, plots, saved images with tinted class maps
"""
from .protocol import ORIGINAL, PROTOCOLS, Setting, Units, hr_tensor, make_lr, make_settings, to_uint8
from .report import csv_text, markdown_per_image, markdown_table, plot_curves
from .runner import Runner
from .score import Reference
from .sweeps import evaluate, public_row, sweep

__all__ = ["ORIGINAL", "PROTOCOLS", "Setting", "Units", "hr_tensor", "make_lr", "make_settings", "to_uint8",
           "csv_text", "markdown_per_image", "markdown_table", "plot_curves", "Runner", "Reference",
           "evaluate", "public_row", "sweep"]
