"""The explorer's HTTP side: a Starlette app over one loaded model.

Everything that touches the model runs on the :class:`~.jobs.JobQueue` worker; quick answers (top classes,
layer list, activation grids) wait for their turn there, slow ones (explanations, a unit's top images and
its activation-maximisation picture) return a job to poll. Errors are JSON ``{"error": "..."}`` with a
4xx status; an unexpected failure is a 500 JSON answer for that request only, the server keeps serving.

API (JSON unless said otherwise)::

    GET  /api/info                          model, methods, limits, whether there is an --images folder
    POST /api/images                        multipart field "file" -> {id, name, width, height}
    GET  /api/images/{id}/picture           the picture as PNG
    GET  /api/images/{id}/top?k=5           top classes
    GET  /api/images/{id}/activations?layer=NAME   grid geometry; the PNG at /api/images/{id}/activations.png
    GET  /api/folder                        pictures of --images;  POST /api/folder/open {"name"} -> image
    GET  /api/folder/file/{path}            a folder file as it is (only inside the folder)
    POST /api/explanations                  {image, method, target, score, params, seed} -> job
    POST /api/units/top                     {layer, channel, k} -> job;  POST /api/units/maximize {layer, channel, steps}
    GET  /api/jobs/{id}   POST /api/jobs/{id}/cancel   GET /api/jobs/{id}/png
    GET  /api/layers
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import BlackboxError
from . import explorer
from .jobs import DONE, Job, JobQueue
from .store import MAX_UPLOAD_BYTES, ImageStore, UploadError, safe_file

__all__ = ["STATIC", "create_app"]

STATIC = Path(__file__).resolve().parent / "static"
MULTIPART_OVERHEAD = 64 << 10  # bytes of multipart framing allowed on top of the upload limit
log = logging.getLogger("blackbox.serve")
HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
           "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                      "base-uri 'none'; frame-ancestors 'none'"}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=HEADERS)


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=HEADERS)


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers=HEADERS)


class Explorer:
    """The state one app serves: the model, its pictures, the worker."""

    def __init__(self, model, images: str | None = None, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 am_steps: int = explorer.AM_STEPS, cache_size: int = 128):
        self.model = model
        self.store = ImageStore(images, max_upload_bytes=max_upload_bytes)
        self.jobs = JobQueue(cache_size=cache_size)
        self.am_steps = am_steps
        self._default_method: str | None = None
        self._folder_files: list[str] | None = None

    def close(self) -> None:
        self.jobs.close()
        self.store.close()

    async def compute(self, kind: str, function, key=None) -> Any:
        """Run ``function()`` on the worker and wait for it without blocking the event loop."""
        job = self.jobs.submit(kind, lambda _job: function(), key)
        try:
            return await asyncio.wrap_future(job.future)
        except (asyncio.CancelledError, BlackboxError) as error:
            if isinstance(error, BlackboxError):
                raise
            raise BlackboxError(f"{kind} was cancelled") from None

    def folder_files(self, refresh: bool = False) -> list[str]:
        if self._folder_files is None or refresh:
            self._folder_files = self.store.folder_files()
        return self._folder_files

    def default_method(self) -> str:
        """grad_cam when the model has a spatial layer to weigh, else occlusion (works on any classifier)."""
        if self._default_method is None:
            try:
                self.model.default_cam_layer()
                self._default_method = "grad_cam"
            except BlackboxError:
                self._default_method = "occlusion"
        return self._default_method

    def info(self) -> dict[str, Any]:
        from ..methods import METHODS

        model = self.model
        return {"model": Path(str(model.path)).name if model.path else "model", "classes": int(model.num_classes),
                "labels": model.labels is not None, "input": [model.image.channels, model.image.height,
                                                                model.image.width],
                "default_method": self.default_method(),
                "methods": [{"name": name, "kind": spec.kind, "summary": spec.summary,
                             "default_score": spec.default_score} for name, spec in sorted(METHODS.items())],
                "folder": self.store.folder is not None, "max_upload_bytes": self.store.max_upload_bytes,
                "am_steps": self.am_steps}


# ------------------------------------------------------------------ request helpers

async def _body_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > 1 << 20:
        raise UploadError(413, "the request body is over 1 MB")
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise UploadError(400, "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise UploadError(400, "the request body must be a JSON object")
    return data


def _int(value: Any, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise UploadError(400, f"{what} must be a whole number, got {value!r}")
    try:
        number = int(value)
        if isinstance(value, float) and number != value:
            raise ValueError
    except (TypeError, ValueError):
        raise UploadError(400, f"{what} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise UploadError(400, f"{what} must be at least {minimum}, got {number}")
    return number


def _job_json(job: Job) -> dict[str, Any]:
    data = job.to_dict()
    data["png"] = f"/api/jobs/{job.id}/png" if job.status == DONE else None
    return data


def _explorer(request: Request) -> Explorer:
    return request.app.state.explorer


# ------------------------------------------------------------------ routes: pages

async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=HEADERS)


async def static(request: Request) -> Response:
    path = safe_file(STATIC, request.path_params["path"])
    return FileResponse(path, headers=HEADERS)


# ------------------------------------------------------------------ routes: pictures

async def info(request: Request) -> Response:
    ex = _explorer(request)
    return _json(await ex.compute("info", ex.info))


async def upload(request: Request) -> Response:
    """Multipart upload, the body read up to the limit and no further (413 beyond it, whatever the
    declared Content-Length)."""
    ex = _explorer(request)
    limit = ex.store.max_upload_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise UploadError(413, f"the upload is {int(declared):,} bytes, over the limit of "
                               f"{ex.store.max_upload_bytes:,}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise UploadError(413, f"the upload is over the limit of {ex.store.max_upload_bytes:,} bytes")
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadError(415, "send the picture as multipart/form-data with a field named 'file'")
    form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    try:
        item = form.get("file")
        if item is None or isinstance(item, str):
            raise UploadError(400, "the form has no file field named 'file'")
        data = await item.read()
        name = item.filename or "upload"
    finally:
        await form.close()
    from starlette.concurrency import run_in_threadpool

    entry = await run_in_threadpool(ex.store.add_upload, name, data)
    return _json(entry.to_dict(), 201)


async def picture(request: Request) -> Response:
    from ..image_io import read_image

    ex = _explorer(request)
    entry = ex.store.get(request.path_params["image"])
    from starlette.concurrency import run_in_threadpool

    data = await run_in_threadpool(lambda: explorer.png_bytes(read_image(entry.path)))
    return _png(data)


async def top(request: Request) -> Response:
    ex = _explorer(request)
    entry = ex.store.get(request.path_params["image"])
    k = _int(request.query_params.get("k", 5), "k", minimum=1)
    k = min(k, int(ex.model.num_classes))
    classes = await ex.compute("top", lambda: explorer.top_classes(ex.model, entry.path, k), ("top", entry.id, k))
    return _json({"image": entry.id, "classes": classes})


async def folder(request: Request) -> Response:
    ex = _explorer(request)
    from starlette.concurrency import run_in_threadpool

    files = await run_in_threadpool(ex.folder_files, request.query_params.get("refresh") == "1")
    return _json({"folder": ex.store.folder is not None, "files": files})


async def folder_file(request: Request) -> Response:
    path = _explorer(request).store.folder_file(request.path_params["path"])
    return FileResponse(path, headers=HEADERS)


async def folder_open(request: Request) -> Response:
    ex = _explorer(request)
    data = await _body_json(request)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise UploadError(400, "say which folder picture to open: {\"name\": \"relative/path.png\"}")
    from starlette.concurrency import run_in_threadpool

    entry = await run_in_threadpool(ex.store.open_folder_file, name)
    return _json(entry.to_dict())


# ------------------------------------------------------------------ routes: explanations and jobs

async def explain(request: Request) -> Response:
    from ..api import check_request

    ex = _explorer(request)
    data = await _body_json(request)
    entry = ex.store.get(data.get("image", ""))
    method = data.get("method") or ex.default_method()
    if not isinstance(method, str):
        raise UploadError(400, f"method must be a method name, got {method!r}")
    score = data.get("score")
    spec, score = check_request(ex.model, method, score)
    target = data.get("target")
    target = None if target is None or target == "" else ex.model.class_index(target)
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise UploadError(400, "params must be a JSON object of method parameters")
    image = ex.model.image
    shape = (image.channels, image.height, image.width)
    spec.check_params(params, shape=shape if all(isinstance(s, int) for s in shape) else None,
                      layout=ex.model.layout)
    seed = _int(data.get("seed", 0), "seed")
    key = ("explain", entry.id, method, target, score, json.dumps(params, sort_keys=True), seed)

    def run(job: Job) -> explorer.Rendered:
        chosen = target
        if chosen is None:
            chosen = explorer.top_classes(ex.model, entry.path, 1)[0]["index"]
        return explorer.explanation(ex.model, entry.path, method, chosen, score, params, seed)

    job = ex.jobs.submit("explanation", run, key)
    return _json(_job_json(job), 202)


async def job_status(request: Request) -> Response:
    job = _explorer(request).jobs.get(request.path_params["job"])
    if job is None:
        raise UploadError(404, f"no job {request.path_params['job']!r}")
    return _json(_job_json(job))


async def job_cancel(request: Request) -> Response:
    job = _explorer(request).jobs.cancel(request.path_params["job"])
    if job is None:
        raise UploadError(404, f"no job {request.path_params['job']!r}")
    return _json(_job_json(job))


async def job_png(request: Request) -> Response:
    job = _explorer(request).jobs.get(request.path_params["job"])
    if job is None:
        raise UploadError(404, f"no job {request.path_params['job']!r}")
    if job.status != DONE or not isinstance(job.result, explorer.Rendered):
        raise UploadError(409, f"job {job.id} is {job.status}; its picture is there once it is done")
    return _png(job.result.png)


# ------------------------------------------------------------------ routes: layers and units

async def layers(request: Request) -> Response:
    ex = _explorer(request)
    found = await ex.compute("layers", lambda: explorer.layer_list(ex.model), ("layers",))
    return _json({"layers": found})


async def _grid(request: Request) -> explorer.Rendered:
    ex = _explorer(request)
    entry = ex.store.get(request.path_params["image"])
    layer = request.query_params.get("layer")
    if not layer:
        raise UploadError(400, "say which layer: ?layer=NAME (see /api/layers)")
    return await ex.compute("activations", lambda: explorer.activation_grid(ex.model, entry.path, layer),
                            ("grid", entry.id, layer))


async def grid_json(request: Request) -> Response:
    rendered = await _grid(request)
    image, layer = request.path_params["image"], request.query_params["layer"]
    from urllib.parse import quote

    return _json(rendered.summary | {"png": f"/api/images/{image}/activations.png?layer={quote(layer, safe='')}"})


async def grid_png(request: Request) -> Response:
    return _png((await _grid(request)).png)


async def _unit(data: dict[str, Any]) -> tuple[str, int]:
    layer = data.get("layer")
    if not isinstance(layer, str) or not layer:
        raise UploadError(400, "say which layer: {\"layer\": NAME, \"channel\": N}")
    return layer, _int(data.get("channel"), "channel")


async def unit_top(request: Request) -> Response:
    ex = _explorer(request)
    data = await _body_json(request)
    layer, channel = await _unit(data)
    k = min(_int(data.get("k", explorer.TOP_K), "k", minimum=1), 32)
    ex.model.layer(layer)  # an unknown layer is a 400 now, not a failed job later
    if ex.store.folder is None:
        raise UploadError(400, "no --images folder: start 'blackbox serve MODEL --images DIR' to rank a folder's "
                               "pictures for a unit")
    from starlette.concurrency import run_in_threadpool

    files = await run_in_threadpool(ex.folder_files)
    folder_path = ex.store.folder
    job = ex.jobs.submit("top images", lambda _job: explorer.unit_top_images(ex.model, folder_path, files, layer,
                                                                            channel, k),
                         ("top-images", layer, channel, k, tuple(files)))
    return _json(_job_json(job), 202)


async def unit_maximize(request: Request) -> Response:
    ex = _explorer(request)
    data = await _body_json(request)
    layer, channel = await _unit(data)
    steps = _int(data.get("steps", ex.am_steps), "steps", minimum=1)
    ex.model.layer(layer)
    job = ex.jobs.submit("activation maximization",
                         lambda _job: explorer.unit_maximization(ex.model, layer, channel, steps),
                         ("am", layer, channel, steps))
    return _json(_job_json(job), 202)


# ------------------------------------------------------------------ errors

async def _upload_error(request: Request, error: UploadError) -> Response:
    return _error(error.status, str(error))


async def _blackbox_error(request: Request, error: BlackboxError) -> Response:
    return _error(400, str(error))


async def _http_error(request: Request, error: HTTPException) -> Response:
    return _error(error.status_code, str(error.detail))


async def _unexpected(request: Request, error: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _error(500, f"internal error ({type(error).__name__}); the server is still running")


def create_app(model, images: str | None = None, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               am_steps: int = explorer.AM_STEPS, allowed_hosts: list[str] | None = None) -> Starlette:
    """The explorer for a loaded ``model``; ``images``: a folder of pictures to pick from and to rank units
    on. ``allowed_hosts``: Host header values accepted (None: any; the CLI passes the loopback names)."""
    routes = [
        Route("/", index), Route("/static/{path:path}", static),
        Route("/api/info", info), Route("/api/images", upload, methods=["POST"]),
        Route("/api/images/{image}/picture", picture), Route("/api/images/{image}/top", top),
        Route("/api/images/{image}/activations", grid_json), Route("/api/images/{image}/activations.png", grid_png),
        Route("/api/folder", folder), Route("/api/folder/file/{path:path}", folder_file),
        Route("/api/folder/open", folder_open, methods=["POST"]),
        Route("/api/explanations", explain, methods=["POST"]),
        Route("/api/jobs/{job}", job_status), Route("/api/jobs/{job}/cancel", job_cancel, methods=["POST"]),
        Route("/api/jobs/{job}/png", job_png), Route("/api/layers", layers),
        Route("/api/units/top", unit_top, methods=["POST"]),
        Route("/api/units/maximize", unit_maximize, methods=["POST"]),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={
        UploadError: _upload_error, BlackboxError: _blackbox_error, HTTPException: _http_error,
        Exception: _unexpected})
    app.state.explorer = Explorer(model, images, max_upload_bytes=max_upload_bytes, am_steps=am_steps)
    return app
