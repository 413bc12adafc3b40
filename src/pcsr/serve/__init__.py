"""`pcsr serve`: a web page to upscale a picture, see where the compute went, and trade quality for
speed with `k`; and a JSON API under /api/ for scripts (docs/SERVE.md).

Needs the optional extra (`pip install "pcsr[serve]"`: Starlette, uvicorn, python-multipart); the
package itself never imports this module. Modules: app (routes, the app factory `create_app`),
http (upload limits, headers, forms), jobs (the bounded queue per device, progress), work (what a
job does on the core; decoding and encoding through pcsr.io), preview (re-routing a cached image),
store (bounded LRU stores); static/ holds the page (plain HTML, CSS and JavaScript, no build step).
"""
from __future__ import annotations


def create_app(*args, **kwargs):
    """pcsr.serve.app.create_app, imported on use (it needs the serve extra)."""
    from .app import create_app as make
    return make(*args, **kwargs)
