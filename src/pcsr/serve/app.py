"""The web app: one page and a JSON API under /api/, on the inference core.

A top layer like the command and the API: every image goes through `pcsr.io` to be read and
written, through a loaded `pcsr.api.Model` (the core) to be upscaled, and the preview re-routes
with the model's own routing rule (pcsr.serve.preview). Nothing here names a file on the server:
models are chosen by the names the server was started with, images and results by ids it made.

Routes (docs/SERVE.md has the API for scripts):
  GET  /                              the page (static/index.html, app.js, style.css)
  GET  /api/models                    the models and the server's limits
  POST /api/images                    upload (multipart field "image", or the raw bytes) -> id
  GET  /api/images/{id}/bicubic       the "before" picture: MATLAB bicubic at the model's scale
  POST /api/jobs                      route an uploaded image (JSON): a preview or the exact run
  GET  /api/jobs/{id}, /events        a job's state; its changes as server-sent events
  GET  /api/results/{id}/{what}       view, file.png (the result), overlay.png, classmap.png
  POST /api/upscale                   one call for scripts: image + routing -> result + figures
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import PcsrError
from . import jobs as jobq
from .http import BodyLimit, SecurityHeaders, body_image, routing_from
from .store import Store
from .work import Output, Upload, bicubic_view, decode, display_name, prepare, run_exact, run_preview, view_type

STATIC = Path(__file__).parent / "static"
MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 1 << 22          # input pixels (a 2048x2048 picture); the command's --max-pixels
    max_upload_bytes: int = 64 * MB
    preview_pixels: int = 1 << 22      # output pixels up to which a preview is cached (about 100 MB each)
    cache_bytes: int = 1024 * MB       # prepared previews; results and uploads take half of it each
    workers: int = 1                   # jobs at once per device
    max_queued: int = 16               # jobs waiting per device


class Server:
    """The state behind the routes: models, one job lane per device, the bounded stores, and the
    private folder (0700) where an upload is decoded and a download encoded, removed on shutdown."""

    def __init__(self, models: dict, limits: Limits):
        if not models:
            raise PcsrError("give at least one model to serve")
        self.models, self.limits = models, limits
        self.default = next(iter(models))
        self.lanes = {}
        for m in models.values():
            dev = str(m.device)
            if dev not in self.lanes:
                self.lanes[dev] = jobq.Lane(dev, limits.workers, limits.max_queued)
        self.uploads: Store[Upload] = Store(limits.cache_bytes // 2, lambda u: u.nbytes)
        self.prepared = Store(limits.cache_bytes, lambda p: p.nbytes)
        self.outputs: Store[Output] = Store(limits.cache_bytes // 2, lambda o: o.nbytes)
        self.befores: Store[bytes] = Store(limits.cache_bytes // 8, len)
        self.exact_ids: Store[str] = Store(4096, lambda _: 1)  # (image, model, routing) -> result id
        self.jobs: Store[jobq.Job] = Store(1024, lambda _: 1)
        self.folder = Path(tempfile.mkdtemp(prefix="pcsr-serve-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.close()
        self._cleanup()

    # ------------------------------------------------------------------ lookups with one-line errors
    def model(self, key: str | None):
        key = key or self.default
        if key not in self.models:
            raise PcsrError(f"unknown model {key!r} (this server has: {', '.join(self.models)})")
        return key, self.models[key]

    def upload(self, image_id) -> Upload:
        up = self.uploads.get(str(image_id))
        if up is None:
            raise NotFound("this image is no longer on the server; upload it again")
        return up

    def add_upload(self, data: bytes, name: str) -> Upload:
        name = display_name(name)
        key = hashlib.sha256(data).hexdigest()[:32]  # the same picture again: the same id, its caches kept
        found = self.uploads.get(key)
        if found is not None:
            return found
        if not data:
            raise PcsrError(f"{name}: empty file (0 bytes)")
        pic, notes = decode(data, name, self.folder, self.limits.max_pixels)
        return self.uploads.put(key, Upload(key, name, pic, notes))

    # ------------------------------------------------------------------ jobs
    def submit(self, up: Upload, model_key: str | None, routing, exact: bool) -> jobq.Job:
        key, model = self.model(model_key)
        h, w = up.picture.rgb.shape[:2]
        cached = model.is_pcsr and h * w * model.scale ** 2 <= self.limits.preview_pixels
        wanted = (up.id, key, routing.k, routing.adaptive, routing.budget, routing.refine)
        echo = {"model": key, "image": up.id, "k": routing.k, "adaptive": routing.adaptive,
                "budget": routing.budget, "refine": routing.refine}

        def body(job: jobq.Job) -> dict:
            prep = None
            if cached and not exact:
                prep = self.prepared.get((up.id, key))
                if prep is None:
                    prep = prepare(model, up)
                    if prep is not None:
                        self.prepared.put((up.id, key), prep)
            if prep is None:
                done = self.outputs.get(self.exact_ids.get(wanted) or "")
                if done is None:
                    done = run_exact(model, up, routing, job.id, progress=job.progress)
                    self.outputs.put(done.id, done)
                    self.exact_ids.put(wanted, done.id)
                return {**done.describe(), **echo}
            out = self.outputs.put(job.id, run_preview(prep, up, routing, job.id, model))
            return {**out.describe(), **echo}

        job = jobq.Job(body, asyncio.get_running_loop())
        self.lanes[str(model.device)].submit(job)
        self.jobs.put(job.id, job)
        return job

    def output(self, result_id: str) -> Output:
        out = self.outputs.get(result_id)
        if out is None:
            raise NotFound("this result is no longer on the server; run it again")
        return out


class NotFound(PcsrError):
    pass


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def _handled(fn):
    """Every user error as one JSON line {"error": ...}: 404 for ids the server no longer has, 503
    when the line is full, 400 for the rest."""
    async def endpoint(request: Request):
        try:
            return await fn(request)
        except NotFound as err:
            return _error(str(err), 404)
        except jobq.Busy as err:
            return _error(str(err), 503)
        except PcsrError as err:
            return _error(str(err), 400)
    return endpoint


async def _wait(job: jobq.Job, seconds: float | None) -> None:
    """Until the job ends, or `seconds` pass (None: no limit)."""
    loop = asyncio.get_running_loop()
    deadline = None if seconds is None else loop.time() + seconds
    while job.state not in ("done", "failed"):
        left = 30.0 if deadline is None else deadline - loop.time()
        if left <= 0:
            return
        await job.wait_change(job.version, min(left, 30.0))


def create_app(models: dict, limits: Limits = Limits(), allowed_hosts: list[str] | None = None) -> Starlette:
    """The ASGI app serving `models` (name -> loaded pcsr.api.Model; the first is the default).
    `allowed_hosts`: the Host headers accepted (the command sets them when it listens on the
    loopback only, so that a web page elsewhere cannot reach the server by DNS rebinding)."""
    server = Server(models, limits)

    async def page(request: Request):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def list_models(request: Request):
        out = [{"name": k, "scale": m.scale, "classes": m.num_classes, "pcsr": m.is_pcsr, "device": str(m.device),
                "precision": m.precision} for k, m in server.models.items()]
        return JSONResponse({"models": out, "default": server.default, "limits": {
            "max_pixels": limits.max_pixels, "max_upload_bytes": limits.max_upload_bytes,
            "preview_pixels": limits.preview_pixels}})

    async def add_image(request: Request):
        data, name, _ = await body_image(request, limits.max_upload_bytes)
        up = await asyncio.to_thread(server.add_upload, data, name)
        return JSONResponse(up.describe())

    async def bicubic(request: Request):
        up = server.upload(request.path_params["image"])
        key, model = server.model(request.query_params.get("model"))
        h, w = up.picture.rgb.shape[:2]
        if h * w * model.scale ** 2 > limits.preview_pixels:
            raise PcsrError("this picture is too large for a bicubic view; the page shows it enlarged as it is")
        cache_key = (up.id, model.scale)
        data = server.befores.get(cache_key)
        if data is None:
            data = server.befores.put(cache_key, await asyncio.to_thread(bicubic_view, up.picture, model.scale))
        return Response(data, media_type=view_type(data), headers={"Cache-Control": "private, max-age=3600"})

    async def new_job(request: Request):
        try:
            spec = await request.json()
        except ValueError:
            raise PcsrError("expected a JSON object") from None
        if not isinstance(spec, dict):
            raise PcsrError("expected a JSON object")
        up = server.upload(spec.get("image"))
        job = server.submit(up, spec.get("model"), routing_from(spec), bool(spec.get("exact", False)))
        wait = spec.get("wait", 0)
        await _wait(job, min(max(float(wait), 0.0), 30.0) if isinstance(wait, (int, float)) else 0.0)
        return JSONResponse(job.snapshot(), status_code=200 if job.state in ("done", "failed") else 202)

    def find_job(request: Request) -> jobq.Job:
        job = server.jobs.get(request.path_params["job"])
        if job is None:
            raise NotFound("no such job on this server")
        return job

    async def job_state(request: Request):
        return JSONResponse(find_job(request).snapshot())

    async def job_events(request: Request):
        job = find_job(request)

        async def stream():
            seen = -1
            while True:
                if job.version != seen:
                    seen = job.version
                    yield f"data: {json.dumps(job.snapshot())}\n\n"
                    if job.state in ("done", "failed"):
                        return
                elif not await job.wait_change(seen, 15.0):
                    yield ": still working\n\n"  # keeps proxies and the browser from giving up
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def result_part(request: Request):
        out = server.output(request.path_params["result"])
        what = {"view": "view", "file.png": "file", "overlay.png": "overlay", "classmap.png": "classmap"}.get(
            request.path_params["what"])
        if what is None:
            raise NotFound("no such part of a result (view, file.png, overlay.png, classmap.png)")
        data, kind = await asyncio.to_thread(out.encoded, what, server.folder)
        server.outputs.put(out.id, out)  # counts the encoding it now holds against the budget
        headers = {"Cache-Control": "private, max-age=3600"}
        if what in ("file", "classmap") and "download" in request.query_params:
            name = out.describe()["download" if what == "file" else "classmap_download"]
            headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return Response(data, media_type=kind or view_type(data), headers=headers)

    async def upscale(request: Request):
        data, name, fields = await body_image(request, limits.max_upload_bytes)
        up = await asyncio.to_thread(server.add_upload, data, name)
        job = server.submit(up, fields.get("model"), routing_from(fields), exact=True)
        await _wait(job, None)
        if job.state == "failed":
            return _error(job.error or "failed", 400)
        res = job.result
        out = server.output(res["result"])
        image, _ = await asyncio.to_thread(out.encoded, "file", server.folder)
        if fields.get("format", "json") == "png":
            return Response(image, media_type="image/png", headers={"X-PCSR-Figures": json.dumps(
                {k: res[k] for k in ("width", "height", "flops", "max_flops", "heavy_fraction", "counts")})})
        payload = {k: v for k, v in res.items() if k not in ("view", "file", "overlay", "classmap")}
        payload["image"] = base64.b64encode(image).decode("ascii")
        if out.classes is not None:
            cmap, _ = await asyncio.to_thread(out.encoded, "classmap", server.folder)
            payload["class_map"] = base64.b64encode(cmap).decode("ascii")
        return JSONResponse(payload)

    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.detail or "bad request", exc.status_code)

    routes = [
        Route("/", page),
        Route("/api/models", _handled(list_models)),
        Route("/api/images", _handled(add_image), methods=["POST"]),
        Route("/api/images/{image}/bicubic", _handled(bicubic)),
        Route("/api/jobs", _handled(new_job), methods=["POST"]),
        Route("/api/jobs/{job}", _handled(job_state)),
        Route("/api/jobs/{job}/events", _handled(job_events)),
        Route("/api/results/{result}/{what}", _handled(result_part)),
        Route("/api/upscale", _handled(upscale), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders), Middleware(BodyLimit, max_bytes=limits.max_upload_bytes + (1 << 16))]
    if allowed_hosts:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))

    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error},
                    lifespan=_lifespan(server))
    app.state.server = server
    return app


def _lifespan(server: Server):
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            server.close()
    return lifespan
