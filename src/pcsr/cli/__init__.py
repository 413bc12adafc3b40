"""The `pcsr` command. Each subcommand is a thin wrapper over the modules of the package.

Errors a user can cause print as one line on stderr (exit 1, or 2 for bad usage), never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import warnings

from ..errors import PcsrError


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    parser = argparse.ArgumentParser(
        prog="pcsr", description="Image super-resolution that spends compute only where the image needs it.")
    parser.add_argument("--version", action="version", version=f"pcsr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _commands():
        add(sub)
    return parser


def _commands():
    """Every subcommand's parser builder. Imported by name: a subcommand whose module fails to import
    is a bug to see at once, not a subcommand to drop silently. (None of these modules imports torch
    at import time, so that --help stays fast.)"""
    from . import bench, convert, evaluate, serve, train, upscale
    return [convert.add_parser, evaluate.add_parser, upscale.add_parser, train.add_parser, bench.add_parser,
            serve.add_parser]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings(), signals_interrupt():
            warnings.showwarning = lambda message, *_, **__: print(
                f"pcsr {args.command}: warning: {message}", file=sys.stderr)  # one line, no source
            return int(args.func(args) or 0)
    except PcsrError as e:
        print(f"pcsr {args.command}: error: {e}", file=sys.stderr)
        return 1
    except Terminated as e:
        print(f"pcsr {args.command}: terminated ({e.name})", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"pcsr {args.command}: interrupted", file=sys.stderr)
        return 130


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread. A KeyboardInterrupt, so that every cleanup that
    Ctrl-C runs (temporary files removed, by the handlers of pcsr.io.atomic_write) runs for them too,
    instead of the process dying where it stands."""

    def __init__(self, signum: int):
        import signal
        self.signum, self.name = signum, signal.Signals(signum).name
        super().__init__(self.name)


def _terminate(signum, _frame):
    raise Terminated(signum)


@contextlib.contextmanager
def signals_interrupt():
    """SIGTERM and SIGHUP raise Terminated while the block runs (main thread only; a signal that is
    ignored, as under nohup, stays ignored); the previous handlers come back afterwards."""
    import signal
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
                saved[sig] = signal.signal(sig, _terminate)
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)
