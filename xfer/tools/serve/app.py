"""The serving app: runs loaded once (checksums verified), `POST /predict` for texts (JSON) and images (multipart
uploads), `GET /models`, `GET /health`, the try-it page at `/` and the OpenAPI page at `/docs`, both with local
assets only.

Inference runs in worker threads, never in the event loop, one call at a time per model (a lock: PyTorch already
uses every core for one batch), under a deadline; bodies and batches are bounded. Every refused request is a 4xx
JSON `{"error": ...}` that says what to change.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from xfer.errors import XferError

STATIC = Path(__file__).parent / "static"
MAX_BODY = 10 << 20  # bytes per request
MAX_BATCH = 64  # inputs per request
TIMEOUT = 30.0  # seconds per request, waiting for the model included
MAX_PIXELS = 40_000_000  # per uploaded image, checked before it is decoded
TOP_K = 5
OPEN_PATHS = ("/", "/health", "/docs", "/openapi.json")  # served without a token (they hold no model data)
OPEN_PREFIXES = ("/static/", "/swagger/")
log = logging.getLogger("xfer.serve")


class Refused(Exception):
    """A request the server will not answer: its HTTP status and a message that says how to fix it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class TextRequest(BaseModel):
    """Texts for a model that reads text."""

    model: str | None = Field(None, description="model name (a run folder's name); optional when one is served")
    inputs: list[str] = Field(..., description="the texts to classify, answered in this order",
                              examples=[["a gripping, beautiful film"]])
    top_k: int = Field(TOP_K, ge=1, description="how many labels, most probable first, each answer lists")


@dataclass
class Served:
    """One loaded run under its name, with the lock that serialises its model calls."""

    name: str
    run: object  # xfer.Run or OnnxRun: predict, labels, spec, reads_text, path
    headline: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def modality(self) -> str:
        return "text" if self.run.reads_text else "image"

    @property
    def report(self) -> Path | None:
        from xfer.runs.folder import REPORT

        path = Path(self.run.path) / REPORT if getattr(self.run, "path", None) else None
        return path if path is not None and path.is_file() else None

    def info(self) -> dict:
        return {"name": self.name, "modality": self.modality, "labels": list(self.run.labels),
                "metrics": self.headline, "report": f"/models/{self.name}/report" if self.report else None}


def load_run(path: str | Path):
    """A run folder, checksums verified: an ONNX run through ONNX Runtime (no PyTorch), any other with xfer.load."""
    from xfer.runs.onnx_run import is_onnx_run, load_onnx

    if is_onnx_run(path):
        return load_onnx(path)
    from xfer.runs.run import load

    return load(path)


def load_runs(paths: Sequence[str | Path]) -> dict[str, object]:
    """Runs by name (the folder's name), each loaded once; a tampered or unreadable run raises XferError."""
    if not paths:
        raise XferError("Nothing to serve: give one or more run folders, e.g. `xfer serve runs/reviews runs/digits`.")
    by_name: dict[str, Path] = {}
    for p in map(Path, paths):
        name = p.resolve().name
        if name in by_name:
            raise XferError(f"Two runs are named {name!r} ({by_name[name]} and {p}): a model is named by its "
                            "folder, so names must be unique; copy or export one of them under another name.")
        if not p.is_dir():
            raise XferError(f"{p} is not a run folder; give folders written by `xfer fit` (or export/compress).")
        by_name[name] = p
    return {name: load_run(p) for name, p in by_name.items()}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_warning(host: str, token: str | None) -> str | None:
    """What to tell the user before binding `host`: nothing on loopback; the missing authentication elsewhere."""
    if is_loopback(host):
        return None
    if not token:
        return (f"serving on {host} with no authentication: anyone who can reach this port can use the models. "
                "Give --token (or XFER_SERVE_TOKEN), or bind 127.0.0.1 behind a proxy.")
    return (f"serving on {host} over plain HTTP: the token travels unencrypted; put a TLS proxy in front of the "
            "server on untrusted networks.")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _BodyTooLarge(Exception):
    pass


class _Limits:
    """Pure ASGI middleware: the bearer token (when set) and the body size, checked before the app reads a byte."""

    def __init__(self, app, token: str | None, max_body: int):
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        if self.token and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not secrets.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                reason = "a wrong token" if given else "no token"
                return await _error(401, f"This server needs a token and the request had {reason}: send the header "
                                         "`Authorization: Bearer <token>` (the token given to `xfer serve --token`).",
                                    {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_body
            except ValueError:
                return await _error(400, "The Content-Length header is not a number.")(scope, receive, send)
            if too_large:
                return await _error(413, self._too_large(int(length)))(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge(self._too_large(received))
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self, size: int) -> str:
        return (f"The request body ({size / 2**20:.1f} MB or more) is over the server's limit of "
                f"{self.max_body / 2**20:.1f} MB; send fewer or smaller inputs per request.")


def _validation_message(e: ValidationError | RequestValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts[:5])


def make_app(runs: Mapping[str, object], token: str | None = None, *, max_body: int = MAX_BODY,
             max_batch: int = MAX_BATCH, timeout: float = TIMEOUT) -> FastAPI:
    """The app serving `runs` (name -> loaded run). With `token`, every request but the page, its assets, the docs
    and /health needs `Authorization: Bearer <token>`."""
    from xfer.runs.folder import RunFolder

    models = {name: Served(name, run, RunFolder(Path(run.path)).headline() if getattr(run, "path", None) else {})
              for name, run in runs.items()}
    app = FastAPI(title="xfer serve", version=_version(), docs_url=None, redoc_url=None,
                  description="Predictions from trained xfer runs. Texts: JSON `{\"inputs\": [...]}`; images: "
                              "multipart uploads in the field `files`. See docs/serving.md.")
    app.state.models = models

    @app.exception_handler(Refused)
    async def refused(request: Request, e: Refused):
        return _error(e.status, e.message)

    @app.exception_handler(_BodyTooLarge)
    async def too_large(request: Request, e: _BodyTooLarge):
        return _error(413, str(e))

    @app.exception_handler(XferError)
    async def user_error(request: Request, e: XferError):
        return _error(422, str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return _error(422, _validation_message(e))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        message = {404: f"No such path: {request.url.path}. See /docs for the API.",
                   405: f"{request.method} is not allowed on {request.url.path}; see /docs."}
        return _error(e.status_code, message.get(e.status_code, str(e.detail)), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):  # logged with its traceback; the client gets none
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"Internal error ({type(e).__name__}); the server log has the details.")

    def pick(name: str | None) -> Served:
        if name:
            if name not in models:
                raise Refused(404, f"Unknown model {name!r}; served: {', '.join(sorted(models))} (GET /models).")
            return models[name]
        if len(models) == 1:
            return next(iter(models.values()))
        raise Refused(422, f"Several models are served ({', '.join(sorted(models))}): name one with \"model\" "
                           "(a JSON field, or a form field next to the files).")

    def check_batch(n: int) -> None:
        if n == 0:
            raise Refused(422, "No inputs: give at least one text in \"inputs\", or one file in the field \"files\".")
        if n > max_batch:
            raise Refused(413, f"{n} inputs in one request; the limit is {max_batch}. Split them over several "
                               "requests.")

    async def infer(served: Served, items: list, top_k: int) -> list[dict]:
        deadline = time.monotonic() + timeout

        def work():
            if not served.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError
            try:
                return served.run.predict(items, top_k=min(top_k, len(served.run.labels)))
            finally:
                served.lock.release()

        try:
            with anyio.fail_after(timeout):
                return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except TimeoutError:
            raise Refused(504, f"Model {served.name!r} did not answer within {timeout:g} s (busy, or a large "
                               "batch); retry later or send fewer inputs per request.") from None

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/health", summary="Liveness and settings")
    async def health():
        threads = None
        if any(not s.run.__class__.__name__.startswith("Onnx") for s in models.values()):
            import torch

            threads = torch.get_num_threads()
        return {"status": "ok", "models": sorted(models), "auth": bool(token), "torch_threads": threads,
                "workers": 1, "max_batch": max_batch, "max_body_bytes": max_body, "timeout_s": timeout}

    @app.get("/models", summary="The served models: name, modality, labels, headline metrics")
    async def list_models():
        return {"models": [s.info() for s in models.values()]}

    @app.get("/models/{name}/report", summary="The run's HTML report (404 when the run has none)")
    async def report(name: str):
        served = pick(name)
        if served.report is None:
            raise Refused(404, f"Run {name!r} has no report.html; write one with `xfer report` and restart.")
        # sandboxed: the report's scripts run, but cannot read this page's storage (the token)
        return FileResponse(served.report, media_type="text/html",
                            headers={"Content-Security-Policy": "sandbox allow-scripts allow-popups"})

    @app.post("/predict", summary="Predict labels for texts (JSON) or images (multipart uploads)",
              openapi_extra=_predict_openapi(max_batch))
    async def predict(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                body = TextRequest.model_validate(await request.json())
            except ValueError as e:  # bad JSON or a body of the wrong shape
                detail = _validation_message(e) if isinstance(e, ValidationError) else "the body is not valid JSON"
                raise Refused(422, f"Bad request: {detail}. Send {{\"model\": NAME, \"inputs\": [\"text\", ...]}}.")
            served = pick(body.model)
            if served.modality != "text":
                raise Refused(415, f"Model {served.name!r} reads images, not text: upload image files as "
                                   "multipart/form-data in the field \"files\" (curl -F files=@digit.png ...).")
            check_batch(len(body.inputs))
            empty = [i for i, t in enumerate(body.inputs) if not t.strip()]
            if empty:
                raise Refused(422, f"inputs {empty[:10]} are empty: give non-empty texts.")
            return {"predictions": await infer(served, body.inputs, body.top_k)}
        if ctype == "multipart/form-data":
            form = await request.form(max_files=max_batch + 1, max_fields=16)
            try:
                served = pick(form.get("model") or None)
                files = [f for f in form.getlist("files") if hasattr(f, "read")]
                if served.modality != "image":
                    raise Refused(415, f"Model {served.name!r} reads text, not images: send JSON "
                                       "{\"inputs\": [\"text\", ...]} with Content-Type application/json.")
                check_batch(len(files))
                top_k = _form_int(form.get("top_k"), TOP_K)
                images = [await anyio.to_thread.run_sync(_decode, await f.read(), f.filename or f"files[{i}]",
                                                         served.run.spec)
                          for i, f in enumerate(files)]
            finally:
                await form.close()
            preds = await infer(served, images, top_k)
            for p, f in zip(preds, files):
                p["input"] = f.filename
            return {"predictions": preds}
        raise Refused(415, f"Unsupported Content-Type {ctype or '(none)'!r}: send application/json "
                           "({\"inputs\": [\"text\", ...]}) for texts or multipart/form-data (field \"files\") for "
                           "images.")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _offline_docs(app, token)
    app.add_middleware(_Limits, token=token, max_body=max_body)
    return app


def _form_int(value, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        k = int(value)
    except (TypeError, ValueError):
        k = 0
    if k < 1:
        raise Refused(422, f"top_k must be a positive whole number, not {value!r}.")
    return k


def _decode(data: bytes, name: str, spec: dict) -> np.ndarray:
    """An upload as the pixel array the run's own reader makes of the same file (grey or RGB, as in training)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise Refused(413, f"{name} is {img.width}x{img.height} pixels; the limit is {MAX_PIXELS:,} pixels. "
                                   "Resize it first.")
            channels = spec.get("prep", {}).get("channels", 3)
            return np.asarray(img.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise Refused(422, f"{name} is not an image that can be read ({type(e).__name__}); upload a PNG, JPEG, "
                           "BMP, GIF, TIFF or WebP file.") from None


def _predict_openapi(max_batch: int) -> dict:
    """Both bodies /predict takes, for the OpenAPI page (the endpoint reads the request itself)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": TextRequest.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": max_batch},
            "model": {"type": "string"}, "top_k": {"type": "integer", "minimum": 1}}}}}},
        "responses": {"200": {"description": "one prediction per input, in input order", "content": {
            "application/json": {"example": {"predictions": [{"input": "a gripping, beautiful film",
                                                               "label": "fresh", "confidence": 0.93, "top_k": [
                {"label": "fresh", "probability": 0.93}, {"label": "rotten", "probability": 0.07}]}]}}}}}}


def _offline_docs(app: FastAPI, token: str | None) -> None:
    """/docs from the swagger-ui files installed with the package (FastAPI's default page loads them from a CDN)."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/swagger", StaticFiles(directory=str(swagger_ui_path)), name="swagger")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="xfer serve: API",
                                   swagger_js_url="/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/swagger/swagger-ui.css",
                                   swagger_favicon_url="/swagger/favicon-32x32.png",
                                   swagger_ui_parameters={"validatorUrl": None})  # no badge from validator.swagger.io

    def openapi():
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            if token:  # the Authorize button of /docs
                schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http",
                                                                                     "scheme": "bearer"}}
                schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _version() -> str:
    import xfer

    return xfer.__version__


def serve(paths: Sequence[str], host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          echo=print, warn=print, **limits) -> None:
    """Load the runs (refusing any that fails its checks), then serve them until interrupted."""
    import uvicorn

    runs = load_runs(paths)
    app = make_app(runs, token, **limits)
    warning = host_warning(host, token)
    if warning:
        warn(warning)
    shown = "[" + host + "]" if ":" in host else host
    echo(f"serving {', '.join(f'{n} ({s.modality})' for n, s in app.state.models.items())} at "
         f"http://{shown}:{port}/ (API docs: /docs); 1 worker, "
         f"torch threads: {_torch_threads()}, one model call at a time per model" + ("; token required" if token
                                                                                     else ""))
    uvicorn.run(app, host=host, port=port, workers=1, log_level=os.environ.get("XFER_SERVE_LOG", "warning"),
                timeout_graceful_shutdown=5)


def _torch_threads() -> str:
    import sys

    if "torch" not in sys.modules:
        return "-"
    return str(sys.modules["torch"].get_num_threads())
