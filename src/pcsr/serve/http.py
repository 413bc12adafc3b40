"""HTTP details of the server: the upload size limit, security headers, reading an uploaded image
(multipart or raw bytes) into memory, and routing options from form fields or JSON.

Multipart bodies are parsed by python-multipart with every file part held in memory (the body is
already bounded by `BodyLimit`): Starlette's own form parser would spool a large part to a file in
the system's temporary folder, outside the server's private one.
"""
from __future__ import annotations

import json

from starlette.requests import Request

from ..errors import PcsrError
from ..models.pcsr import Routing

_TRUE, _FALSE = {"1", "true", "on", "yes"}, {"0", "false", "off", "no", ""}


class TooLarge(Exception):
    pass


def _too_large_message(limit: int) -> str:
    return f"the upload is larger than the server's limit of {limit / (1 << 20):.0f} MB (--max-upload-mb)"


class BodyLimit:
    """Refuses request bodies over `max_bytes` (413, one JSON line): by Content-Length before
    reading, and by counting while reading for bodies sent without one."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse
        refuse = JSONResponse({"error": _too_large_message(self.max_bytes)}, status_code=413)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await refuse(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise TooLarge
            return message

        started = False

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched_send)
        except TooLarge:
            if not started:
                await refuse(scope, receive, send)


class SecurityHeaders:
    """The page loads only its own files; responses are never sniffed into another type."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
               (b"x-frame-options", b"DENY"),
               (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; "
                                            b"style-src 'self'; script-src 'self'; connect-src 'self'; "
                                            b"frame-ancestors 'none'")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + self.HEADERS}
            await send(message)
        await self.app(scope, receive, with_headers)


async def body_image(request: Request, limit: int) -> tuple[bytes, str, dict]:
    """(image bytes, the client's file name, the other fields as strings) from a multipart form
    (field "image", routing in the other fields) or a raw body (name in ?name=, routing in the
    query string)."""
    ctype = request.headers.get("content-type", "")
    fields = dict(request.query_params)
    if not ctype.startswith("multipart/form-data"):
        data = await request.body()
        if len(data) > limit:
            raise TooLarge
        return data, fields.pop("name", "upload"), fields
    from python_multipart import FormParser
    from python_multipart.multipart import parse_options_header

    _, params = parse_options_header(ctype)
    if b"boundary" not in params:
        raise PcsrError("a multipart upload needs a boundary")
    files: dict[str, tuple[bytes, str]] = {}

    def on_field(f):
        fields[f.field_name.decode("utf-8", "replace")] = (f.value or b"").decode("utf-8", "replace")

    def on_file(f):
        f.file_object.seek(0)
        name = (f.file_name or b"upload").decode("utf-8", "replace")
        files[f.field_name.decode("utf-8", "replace")] = (f.file_object.read(), name)

    parser = FormParser("multipart/form-data", on_field, on_file, boundary=params[b"boundary"],
                        config={"MAX_MEMORY_FILE_SIZE": limit + 1, "MAX_BODY_SIZE": limit + (1 << 16)})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except TooLarge:
        raise
    except Exception as err:  # noqa: BLE001 - python-multipart raises several types for a broken body
        raise PcsrError(f"the upload is not a well-formed form ({type(err).__name__})") from None
    if "image" not in files:
        raise PcsrError('the form has no file field "image"')
    data, name = files["image"]
    if len(data) > limit:
        raise TooLarge
    return data, name, fields


def _flag(value, name: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise PcsrError(f"{name} must be true or false, got {value!r}")


def _number(value, name: str) -> float:
    if isinstance(value, bool):
        raise PcsrError(f"{name} must be a number, got {json.dumps(value)}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PcsrError(f"{name} must be a number, got {value!r}") from None


def routing_from(fields: dict) -> Routing:
    """k, adaptive, budget (0..1, empty: none), refine (default on), with pcsr's own checks."""
    k = _number(fields.get("k", 0), "k")
    budget = fields.get("budget")
    budget = None if budget in (None, "") else _number(budget, "budget")
    return Routing(k=k, adaptive=_flag(fields.get("adaptive"), "adaptive", False), budget=budget,
                   refine=_flag(fields.get("refine"), "refine", True))
