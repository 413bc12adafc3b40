"""`pcsr serve`: the web page and its JSON API (pcsr.serve) on a real ASGI server (uvicorn).

It listens on 127.0.0.1 unless --host says otherwise, and then accepts only Host headers naming
the loopback, so that a web page elsewhere cannot reach it through DNS rebinding. Starlette and
uvicorn come with the optional extra `pcsr[serve]` and are imported only when the command runs:
`pcsr --help` works without them, and their absence is one line naming the install command.
"""
from __future__ import annotations

import importlib.util

from ..errors import PcsrError
from .args import whole

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MB = 1 << 20


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="a web page to upscale pictures and explore k (needs pcsr[serve])",
        description="Serve a page where you drop a picture, move k and see the result, the class map and "
                    "the FLOPs; and a JSON API under /api/ (docs/SERVE.md). Listens on 127.0.0.1 unless "
                    "--host says otherwise.")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=whole(0, 65535), default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--model", nargs="+", default=None, metavar="NAME|PATH",
                   help="bundled model names or model files to offer (default: the bundled default); the "
                        "first is preselected")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="as pcsr upscale's --precision")
    p.add_argument("--max-pixels", type=whole(1), default=1 << 22, metavar="N",
                   help="refuse uploads with more pixels (default 4194304, a 2048x2048 picture)")
    p.add_argument("--max-upload-mb", type=whole(1), default=64, metavar="MB",
                   help="refuse uploads larger than this (default 64)")
    p.add_argument("--preview-pixels", type=whole(1), default=1 << 22, metavar="N",
                   help="largest output (pixels) whose re-routing is cached so that k moves live; larger "
                        "pictures run the whole model on each change (default 4194304)")
    p.add_argument("--cache-mb", type=whole(1), default=1024, metavar="MB",
                   help="memory for cached previews (default 1024; results and uploads get half as much each)")
    p.add_argument("--jobs", type=whole(1), default=1, metavar="N",
                   help="jobs run at once per device; more wait in line (default 1)")
    p.set_defaults(func=run, usage_error=p.error)


def missing_extra() -> str | None:
    """The one-line reason the server cannot start, when the extra is not installed."""
    missing = [m for m in ("starlette", "uvicorn", "python_multipart") if importlib.util.find_spec(m) is None]
    if missing:
        return f"pcsr serve needs {', '.join(missing)}: pip install \"pcsr[serve]\""
    return None


def model_keys(names: list[str]) -> list[str]:
    """What the page calls each model: a bundled name as it is, a file by its stem (never its path,
    which stays on the server), numbered when two would read the same."""
    from pathlib import Path
    keys: list[str] = []
    for name in names:
        key = Path(name).stem if name.endswith((".safetensors", ".pth", ".pt")) or "/" in name else name
        base, n = key, 2
        while key in keys:
            key, n = f"{base}-{n}", n + 1
        keys.append(key)
    return keys


def run(args) -> int:
    why = missing_extra()
    if why:
        raise PcsrError(why)
    from .. import api, weights
    from ..serve.app import Limits, create_app

    names = args.model or [weights.DEFAULT_MODEL]
    models = {key: api.load(name, device=args.device, precision=args.precision)
              for key, name in zip(model_keys(names), names)}
    limits = Limits(max_pixels=args.max_pixels, max_upload_bytes=args.max_upload_mb * MB,
                    preview_pixels=args.preview_pixels, cache_bytes=args.cache_mb * MB, workers=args.jobs)
    hosts = list(LOOPBACK) + ["[::1]"] if args.host in LOOPBACK else None
    app = create_app(models, limits, allowed_hosts=hosts)
    return serve(app, args.host, args.port)


def serve(app, host: str, port: int) -> int:
    """Bind first (so a busy port is one line, and port 0 gets its number), print the URL, then
    hand the socket to uvicorn until Ctrl-C or SIGTERM."""
    import socket

    import uvicorn
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise PcsrError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
    sock.listen(128)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"pcsr serve: http://{shown}:{port}/  (Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
