"""Command-line arguments that several `pcsr` subcommands share (the routing flags, whole numbers).

A module of its own so that the subcommand modules (upscale, bench, ...) and `pcsr.cli`, which
gathers them, both import it instead of each other. It imports no torch: `pcsr --help` and
usage errors answer before torch's import.
"""
from __future__ import annotations

import argparse

from ..errors import PcsrError


def add_routing(p) -> None:
    """-k / --adaptive / --budget (one of them) and --no-refine on an argparse parser."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("-k", "--k", type=float, default=0.0,
                   help="cost rule: class = argmax p_j / cost_j^k; 0 = plain argmax, larger = cheaper (default 0)")
    g.add_argument("--adaptive", action="store_true", help="adaptive decision (k-means over the whole image)")
    g.add_argument("--budget", type=float, default=None, metavar="F",
                   help="send this fraction (0..1) of the pixels to the heavy upsampler")
    p.add_argument("--no-refine", action="store_true", help="switch off the pixel-wise refinement")


def check_routing_args(args) -> None:
    """Usage errors of the routing flags, before anything imports torch."""
    if args.k != args.k or args.k in (float("inf"), float("-inf")):
        raise PcsrError(f"-k must be a finite number, got {args.k}")
    if args.budget is not None and not 0.0 <= args.budget <= 1.0:
        raise PcsrError(f"--budget must be between 0 and 1, got {args.budget}")


def routing_from_args(args):
    check_routing_args(args)
    from ..models.pcsr import Routing
    return Routing(k=args.k, adaptive=args.adaptive, budget=args.budget, refine=not args.no_refine)


def whole(low: int, high: int | None = None):
    """An argparse type for a whole number in [low, high]: a bad value is a one-line usage error
    naming the flag, before any work starts (not a traceback from deep inside torch)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = (f"between {low} and {high}" if high is not None
                     else "0 or more" if low == 0 else f"at least {low}")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    return parse
