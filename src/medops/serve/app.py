"""The FastAPI application of `medops serve`: routes, auth, metrics and the request path.

Request path of a prediction: check the model name and auth, read the body (size-limited),
split it into image files, decode + preprocess each in a thread pool with the live
deployment's profile, queue the arrays for the micro-batcher, answer, and hand the capture
records to the background writer.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from medops.config.schema import ServeConfig
from medops.data.labels import format_findings
from medops.errors import (
    AuthenticationError,
    LabelError,
    MedopsError,
    NotFoundError,
    UnavailableError,
)
from medops.monitor import CaptureRecord, CaptureStore, CaptureWriter, Feedback
from medops.registry import ModelRegistry
from medops.serve.answers import AnswerType, negotiate, predictions_csv
from medops.serve.batcher import MicroBatcher, Result
from medops.serve.host import Deployment, ModelHost, ModelRef
from medops.serve.http_errors import install_handlers
from medops.serve.inputs import ACCEPTED, PreparedImage, prepare, split_images
from medops.serve.metrics import ServeMetrics
from medops.serve.outputs import predictions as answers
from medops.serve.server import forward_workers
from medops.serve.stats import COUNTED_ROUTES, ServingStatsCollector
from medops.storage.serving import ServingStats

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]

_IMAGE_BODY = {"content": {t: {"schema": {"type": "string", "format": "binary"}}
                           for t in ("application/dicom", "image/png", "image/jpeg")}
               | {"multipart/form-data": {"schema": {"type": "object", "properties": {
                   "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}},
               "required": True}


class Prediction(BaseModel):
    """One image's answer (see medops.serve.outputs): ``label`` is the predicted class, or for
    a multi-label model its positive findings as one text (``A|B``, ``No Finding`` for none),
    listed in ``findings``."""

    label: str
    findings: list[str] | None = Field(None, description="multi-label models only")
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    request_id: str
    model: str
    version: str
    predictions: list[Prediction]


#: The answers of the predict routes: JSON (PredictResponse), or CSV for ``Accept: text/csv``.
_ANSWERS: dict[int | str, dict[str, Any]] = {200: {"model": PredictResponse, "content": {
    AnswerType.CSV.value: {"schema": {"type": "string"}}}}}


_LabelText = Annotated[str, Field(min_length=1, max_length=256)]


class FeedbackIn(BaseModel):
    """The ground truth of one served image, identified by the request id of its answer."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=128)
    label: _LabelText | list[_LabelText] = Field(
        description="the class; for a multi-label model its findings as 'A|B', 'No Finding' "
                    "or a list (an empty list: no finding)")
    image: int = Field(0, ge=0, description="position of the image in a multi-image request")


@dataclass
class _Server:
    cfg: ServeConfig
    host: ModelHost
    batcher: MicroBatcher
    metrics: ServeMetrics
    writer: CaptureWriter | None
    token: str | None
    pool: ThreadPoolExecutor
    stats: ServingStatsCollector | None = None


def create_app(registry: ModelRegistry, cfg: ServeConfig, *, ref: ModelRef | None = None,
               capture: CaptureStore | None = None, token: str | None = None,
               stats: ServingStats | None = None) -> FastAPI:
    """The app serving ``ref`` (default ``cfg.model``, else ``NAME@champion``) from
    ``registry``. ``capture`` stores predictions (when ``cfg.capture``) and feedback;
    ``token``, when set, is required as ``Authorization: Bearer <token>``; ``stats`` gets
    the per-minute request, error and latency figures (medops.serve.stats)."""
    ref = ref or ModelRef.parse(cfg.model, registry.name)
    metrics = ServeMetrics()
    collector = ServingStatsCollector(stats, ref.name) if stats is not None else None

    def on_swap(d: Deployment) -> None:
        metrics.set_live(d.name, d.version)
        if collector is not None:
            collector.set_version(d.version)

    srv = _Server(
        cfg=cfg, host=ModelHost(registry, ref, cfg.poll_seconds, on_swap=on_swap),
        batcher=MicroBatcher(cfg.max_batch, cfg.max_wait_ms, forward_workers(cfg.workers),
                             on_batch=metrics.observe_batch),
        metrics=metrics, writer=CaptureWriter(capture) if capture is not None else None,
        token=token, pool=ThreadPoolExecutor(min(8, os.cpu_count() or 1),
                                             thread_name_prefix="medops-prep"),
        stats=collector)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        srv.batcher.start()
        srv.host.start()  # loads in the background: /ping answers at once
        if srv.stats is not None:
            srv.stats.start()
        try:
            yield
        finally:
            await srv.host.stop()
            await srv.batcher.stop()
            srv.pool.shutdown(wait=True)
            if srv.writer is not None:
                await asyncio.to_thread(srv.writer.close)
            if srv.stats is not None:
                await asyncio.to_thread(srv.stats.close)  # the last minute too

    app = FastAPI(title="medops serve", version="1", lifespan=lifespan,
                  description=f"Real-time predictions of {ref}. Send DICOM, PNG or JPEG.")
    app.state.medops = srv
    install_handlers(app)
    _add_routes(app, srv)
    app.add_middleware(_Observe, metrics=metrics, stats=collector)
    return app


def _add_routes(app: FastAPI, srv: _Server) -> None:
    async def authorize(request: Request) -> None:  # async: no thread hop per request
        if srv.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise AuthenticationError("missing bearer token; send 'Authorization: Bearer "
                                      "<token>' (the server reads it from serve.token_env)")
        if not hmac.compare_digest(given.strip().encode(), srv.token.encode()):
            raise AuthenticationError("invalid bearer token")

    auth = [Depends(authorize)]

    @app.get("/ping", tags=["health"], summary="SageMaker health check: 200 once a model is live")
    async def ping() -> JSONResponse:
        return _readiness(srv)

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", tags=["health"], summary="Readiness: 200 once a model is loaded")
    async def readyz() -> JSONResponse:
        return _readiness(srv)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(srv.metrics.render(), media_type=srv.metrics.content_type)

    @app.post("/invocations", tags=["predict"], dependencies=auth,
              summary="SageMaker inference: the same bodies as /v1/models/{name}/predict",
              responses=_ANSWERS, openapi_extra={"requestBody": _IMAGE_BODY})
    async def invocations(request: Request) -> Response:
        return await _predict(srv, request, None)

    @app.post("/v1/models/{name}/predict", tags=["predict"], dependencies=auth,
              summary=f"Class probabilities for one image or several; accepts {ACCEPTED}",
              responses=_ANSWERS, openapi_extra={"requestBody": _IMAGE_BODY})
    async def predict(name: str, request: Request) -> Response:
        return await _predict(srv, request, name)

    @app.post("/v1/feedback", tags=["feedback"], dependencies=auth, status_code=202,
              summary="Ground truth for a served image (stored asynchronously)")
    async def feedback(body: FeedbackIn | list[FeedbackIn]) -> dict[str, int]:
        items = body if isinstance(body, list) else [body]
        if srv.writer is None:
            raise UnavailableError("this server has no capture store, so feedback cannot be "
                                   "stored; use `medops feedback import CSV` instead")
        labels = [_feedback_label(srv, item.label, i, len(items))
                  for i, item in enumerate(items)]
        now = datetime.now(timezone.utc)
        srv.writer.submit_feedback([Feedback(i.request_id, label, i.image, now)
                                    for i, label in zip(items, labels, strict=True)])
        return {"accepted": len(items)}


def _feedback_label(srv: _Server, label: str | list[str], i: int, n: int) -> str:
    """The stored text of a feedback label, checked against the live model's classes or
    findings (unchecked while no model is loaded); a LabelError names the item of a list."""
    live = srv.host.current
    try:
        if live is None:
            return label if isinstance(label, str) else format_findings(label)
        return live.loaded.labels.canonical(label, live.classes)
    except LabelError as exc:
        if n == 1:
            raise
        raise LabelError(f"feedback item {i + 1} of {n}: {exc}") from exc


def _readiness(srv: _Server) -> JSONResponse:
    live = srv.host.current
    if live is None:
        return JSONResponse({"status": "loading", "detail": srv.host.status}, status_code=503)
    return JSONResponse({"status": "ready", "model": live.name, "version": live.version})


async def _predict(srv: _Server, request: Request, name: str | None) -> Response:
    answer = negotiate(request.headers.get("accept"))  # a 406 costs no decoding
    if name is not None and name != srv.host.ref.name:
        raise NotFoundError(f"no model {name!r} on this server; it serves "
                            f"{srv.host.ref.name!r} (POST /v1/models/{srv.host.ref.name}/predict)")
    live = srv.host.current
    if live is None:
        raise UnavailableError(f"no model is loaded yet ({srv.host.status}); retry shortly")
    blobs = await split_images(request, int(srv.cfg.max_body_mb * 2**20))
    results: list[Result]
    if len(blobs) == 1 and srv.batcher.idle:
        results = [await srv.batcher.submit(
            functools.partial(prepare, blobs[0], live.loaded.profile, srv.cfg.max_image_pixels),
            live)]
    else:
        loop = asyncio.get_running_loop()
        srv.batcher.preparing(+1)
        try:
            prepared = await asyncio.gather(*(
                loop.run_in_executor(srv.pool, _prepare_one, i, len(blobs), blob, live,
                                     srv.cfg.max_image_pixels)
                for i, blob in enumerate(blobs)))
        finally:
            srv.batcher.preparing(-1)
        results = await asyncio.gather(*(srv.batcher.submit(p, live) for p in prepared))
    request_id: str = request.state.request_id
    predictions = answers(live.loaded, np.stack([r.probabilities for r in results]))
    if srv.writer is not None and srv.cfg.capture:
        srv.writer.submit(_records(request_id, results, predictions))
    if answer is AnswerType.CSV:
        return Response(predictions_csv(predictions), media_type=AnswerType.CSV.value)
    return JSONResponse({"request_id": request_id, "model": live.name, "version": live.version,
                         "predictions": predictions})


def _prepare_one(i: int, n: int, blob: bytes, live: Deployment, max_pixels: int) -> PreparedImage:
    try:
        return prepare(blob, live.loaded.profile, max_pixels)
    except MedopsError as exc:
        if n == 1:
            raise
        raise type(exc)(f"image {i + 1} of {n}: {exc}") from exc


def _records(request_id: str, results: list[Result],
             predictions: list[dict[str, Any]]) -> list[CaptureRecord]:
    now = datetime.now(timezone.utc)
    return [CaptureRecord(
        request_id=request_id, image=i, time=now, model_name=r.deployment.name,
        model_version=r.deployment.version, predicted=pred["label"],
        classes=r.deployment.classes, probabilities=r.probabilities.astype(float).tolist(),
        input_format=r.prepared.input_format, height=r.prepared.height,
        width=r.prepared.width, stats=r.prepared.stats, embedding=r.embedding.tolist(),
        task=r.deployment.loaded.task.value)
        for i, (r, pred) in enumerate(zip(results, predictions, strict=True))]


class _Observe:
    """Pure ASGI middleware: a request id per request, and the request/error/latency metrics."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics,
                 stats: ServingStatsCollector | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # FastAPI puts the matched APIRoute in the scope; its template keeps the label
            # set small (no per-model or per-id series). Docs and 404s count as "other".
            label = getattr(route, "path", None) or "other"
            m = self.metrics
            elapsed = time.perf_counter() - started
            m.requests.labels(route=label, status=str(status)).inc()
            m.latency.labels(route=label).observe(elapsed)
            if self.stats is not None and label in COUNTED_ROUTES:
                self.stats.observe(status, elapsed)
            if status >= 400:
                kind = scope["state"].get("error_type", "HTTPError")
                m.errors.labels(route=label, type=kind).inc()
