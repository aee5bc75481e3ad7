"""The HTTP app: ``GET /`` (the web page), ``GET /health``, ``GET /info``, ``POST /predict``.

Every error answer is JSON ``{"error": "what went wrong and the fix"}``: 4xx for the client's
mistakes (:mod:`.payload`, undecodable images), 503 when the queue is full, 504 past the request
timeout, and 500 (``"internal error"``, the traceback only in the server log) for anything else.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, AsyncIterator

import cv2
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..classifier.checkpoint import ClassifierInfo
from ..data.images import ImageLimits, UnreadableImageError, decode_image
from .answers import answers, model_description
from .batcher import BatchQueue, QueueFullError
from .payload import Upload, read_uploads
from .settings import ServeSettings

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """What the app serves: the classifier's description, the batch queue over its runtimes, and
    the name of the runtime (for /info)."""

    info: ClassifierInfo
    batcher: BatchQueue
    runtime_name: str


def create_app(served: ServedModel, settings: ServeSettings) -> FastAPI:
    """The FastAPI app over ``served``; its lifespan starts and stops the batch workers."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        served.batcher.start()
        try:
            yield
        finally:
            served.batcher.stop()

    # No /docs: Swagger UI loads from a CDN, and the page at / is the documentation that works offline.
    app = FastAPI(title="tresnet-ft", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    predictor = _Predictor(served, settings)
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> JSONResponse:
        stats = served.batcher.stats
        body = {"status": "ok" if served.batcher.alive else "down", "waiting": served.batcher.waiting,
                "batches": stats.batches, "images": stats.images, "refused": stats.refused}
        return JSONResponse(body, status_code=200 if served.batcher.alive else 503)

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return model_description(served.info, predictor.thresholds, served.runtime_name, settings.top_k)

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        return await predictor(request)

    return app


class _Predictor:
    """``POST /predict``: read the uploads, decode and resize them in a thread, queue them, answer."""

    def __init__(self, served: ServedModel, settings: ServeSettings) -> None:
        self.served, self.settings = served, settings
        self.info = served.info
        self.transform = served.info.eval_transform(output="uint8")
        self.thresholds = served.info.decision_thresholds()
        # the decoder's pixel limit as configured (env), its byte limit the upload cap
        self.limits = ImageLimits.resolve(max_bytes=settings.max_upload_bytes)

    async def __call__(self, request: Request) -> dict[str, Any]:
        top_k = _top_k(request, self.settings.top_k)
        try:
            uploads = await read_uploads(request, self.settings.max_upload_bytes, self.settings.max_images)
        except ClientDisconnect:  # nobody will read the answer; the log says what happened
            log.info("A client disconnected while sending its request")
            raise HTTPException(400, "The client disconnected before the request body was complete.") from None
        images = await run_in_threadpool(self._preprocess, uploads)  # OpenCV releases the GIL
        try:
            futures = self.served.batcher.submit(images)
        except QueueFullError as error:
            raise HTTPException(503, f"The server is busy: {error}. Fix: retry in a moment, or start it with a "
                                     "larger --max-queue (or more --workers on a bigger machine).") from None
        try:
            rows = await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)),
                                          self.settings.request_timeout)
        except asyncio.TimeoutError:  # gather's cancellation cancels the images not yet started
            raise HTTPException(504, f"No answer within {self.settings.request_timeout:g} s (the server is "
                                     "overloaded). Fix: retry later, or start it with a larger --request-timeout."
                                ) from None
        names = [upload.name for upload in uploads]
        return {"task": self.info.task,
                "predictions": answers(self.info, names, torch.stack(rows), top_k, self.thresholds)}

    def _preprocess(self, uploads: list[Upload]) -> list[torch.Tensor]:
        """Each upload decoded (with the project's limits) and eval-resized to ``uint8 [3, S, S]``."""
        images = []
        for upload in uploads:
            try:
                rgb = decode_image(upload.data, self.info.preprocessing.decode_size, upload.name, self.limits)
                images.append(self.transform(rgb))
            except UnreadableImageError as error:
                raise HTTPException(400, f"{error} Fix: send a JPEG, PNG, BMP, WebP, TIFF or GIF file.") from None
            except cv2.error:  # decodable but degenerate for the resize (e.g. a 0-pixel side)
                raise HTTPException(400, f"Cannot resize image {upload.name}: its size is degenerate. "
                                         "Fix: send an image at least a few pixels on each side.") from None
        return images


def _top_k(request: Request, default: int) -> int:
    text = request.query_params.get("top_k")
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise HTTPException(400, f"Expected top_k to be an integer of at least 1, but got {text!r}. "
                                 "Fix: /predict?top_k=3")
    return int(text)


async def _http_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    # Starlette logs the traceback after this handler answers; the client sees none of it.
    log.error("Internal error answering %s %s: %s", request.method, request.url.path, type(error).__name__)
    return JSONResponse({"error": "internal error (the server log has the details)"}, status_code=500)
