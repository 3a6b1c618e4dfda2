"""The FastAPI app factory: `create_app(settings)`; the model and index load in `lifespan`.

The app wires the serving objects (engine, batchers, cache, logs, metrics, and the Lifecycle that
loads, reloads and follows versions: service/serving/lifecycle.py) to the routes, middleware and
exception handlers. Startup starts the batchers and the followers; shutdown turns /readyz red
(`Lifecycle.stop`), drains in-flight requests, then stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.admin import router as admin_router
from service.api.batch import router as batch_router
from service.api.disconnect import CancelOnDisconnect
from service.api.docs_ui import add_offline_docs
from service.api.errors import error_response, http_error_code, status_of, validation_message
from service.api.events import router as events_router
from service.api.health import router as health_router
from service.api.images import ImageRefs
from service.api.images import router as images_router
from service.api.listings import router as listings_router
from service.api.middleware import RequestMiddleware
from service.api.photo import PATH as PHOTO_PATH
from service.api.photo import body_limit as photo_body_limit
from service.api.photo import make_photo_runner
from service.api.photo import router as photo_router
from service.api.search import router as search_router
from service.api.state import ServiceState
from service.api.ui import router as ui_router
from service.serving.batcher import MicroBatcher
from service.serving.cache import ResultCache
from service.serving.engine import Answer, Engine, SearchRequest
from service.serving.errors import ServiceError, public_message
from service.serving.lifecycle import Lifecycle
from service.serving.metrics import Metrics
from service.serving.querylog import EventLog, QueryLog
from service.serving.settings import Settings

log = logging.getLogger("service.api.app")


def observe_batch(metrics: Metrics, size: int, waits: Sequence[float]) -> None:
    """Batch size once per batch; queue wait once per request in it."""
    metrics.batch_size.observe(size)
    stage = metrics.stage.labels("queue_wait")
    for w in waits:
        stage.observe(w)


def query_log_path(path: Path) -> Path:
    """`{pid}` in the configured path becomes this process's id (one file per worker)."""
    return Path(str(path).replace("{pid}", str(os.getpid())))


def make_batch_runner(state: ServiceState) -> Callable[[Sequence[SearchRequest]], list[Answer]]:
    search_threads = state.settings.search_threads
    import faiss

    faiss.cvar.distance_compute_blas_threshold = state.settings.search_blas_threshold  # process-wide

    def run(requests: Sequence[SearchRequest]) -> list[Answer]:
        if search_threads:  # per calling thread (and torch may reset it): set it in the worker, every batch
            faiss.omp_set_num_threads(search_threads)
        t0 = time.perf_counter()
        result = state.engine.search_batch(requests)
        for stage, seconds in result.stages.items():
            state.metrics.stage.labels(stage).observe(seconds)
        state.metrics.stage.labels("total").observe(time.perf_counter() - t0)
        return result.answers()

    return run


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    engine = Engine(settings)
    batcher = MicroBatcher(
        lambda reqs: [], max_batch=settings.max_batch, max_wait_us=settings.max_wait_us,
        max_queue=settings.max_queue, timeout_s=settings.request_timeout_ms / 1000,
        on_batch=lambda n, waits: observe_batch(metrics, n, waits),
        on_depth=metrics.queue_depth.set,
    )
    state = ServiceState(settings, engine, metrics, batcher, Lifecycle(settings, engine, metrics))
    state.cache = ResultCache(settings.cache_size, on_lookup=lambda hit: metrics.cache.labels("hit" if hit else "miss").inc(),
                              on_size=metrics.cache_entries.set)
    batcher.run_batch = make_batch_runner(state)
    if settings.image_search:  # POST /search/image: photos are encoded in their own batcher and thread
        photo_wait = metrics.stage.labels("photo_queue_wait")
        state.photos = MicroBatcher(
            lambda items: [], max_batch=settings.image_max_batch, max_wait_us=settings.max_wait_us,
            max_queue=settings.image_max_queue, timeout_s=settings.request_timeout_ms / 1000,
            on_batch=lambda n, waits: [photo_wait.observe(w) for w in waits],
        )
        state.photos.run_batch = make_photo_runner(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        await batcher.start()
        if state.photos is not None:
            await state.photos.start()
        if settings.query_log is not None:  # opened per process: each worker writes its own file
            state.query_log = QueryLog(query_log_path(settings.query_log), redact=settings.query_log_redact,
                                       max_bytes=settings.query_log_max_bytes, backups=settings.query_log_backups,
                                       on_drop=metrics.querylog_dropped.inc)
        if settings.events_log is not None:  # POST /events (service/api/events.py); per process as the query log
            state.events_log = EventLog(query_log_path(settings.events_log), max_bytes=settings.events_log_max_bytes,
                                        backups=settings.events_log_backups)
        wake = asyncio.Event()
        app.state.wake = wake
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, wake.set)  # main thread only
        follower = asyncio.create_task(state.life.follow_current(wake), name="follow-current")
        deny_follower = asyncio.create_task(state.life.follow_denylist(), name="follow-denylist")
        try:
            yield
        finally:
            state.life.stop()
            wake.set()
            await batcher.drain()
            if state.photos is not None:
                await state.photos.drain()
            follower.cancel()
            deny_follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await deny_follower
            await batcher.stop()
            if state.photos is not None:
                await state.photos.stop()
            for writer in (state.query_log, state.events_log):
                if writer is not None:
                    await asyncio.to_thread(writer.close)
            metrics.process_exit()
            with contextlib.suppress(ValueError, NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)

    app = FastAPI(
        title="Marketplace retrieval service",
        version="0.1.0",
        description="Multi-view two-tower retrieval over a FAISS index of fused listing embeddings.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    add_offline_docs(app)  # /docs and /redoc with local assets (FastAPI's default loads them from a CDN)
    app.state.svc = state
    app.include_router(search_router)  # /search
    app.include_router(health_router)  # /healthz, /readyz, /metrics
    app.include_router(admin_router)  # /admin/reload, /admin/deny
    app.include_router(batch_router)  # POST /search/batch
    app.include_router(photo_router)  # POST /search/image: search by photo (service/api/photo.py)
    app.include_router(listings_router)  # GET /listings/{id}, /listings/{id}/similar
    app.include_router(events_router)
    app.include_router(ui_router)  # GET /ui: the try-it page (service/api/static/ui/)

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> Response:
        code = status_of(exc)
        headers = {"Retry-After": "1"} if code in (429, 503) else None
        # no server paths in any message (a reload error names files)
        return error_response(code, type(exc).__name__, public_message(str(exc), settings.artifacts), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return error_response(422, "InvalidRequest", validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)  # the router's own 404 / 405, and any HTTPException
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no route {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {exc.headers.get('allow', '?') if exc.headers else '?'}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, http_error_code(exc.status_code), message, exc.headers)

    @app.exception_handler(Exception)  # a fallback: RequestMiddleware answers a handler's error first (with its id)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "InternalError", "internal error")

    if settings.image_root is not None:  # only the photos the served version's listings name
        app.state.image_refs = ImageRefs()
        app.include_router(images_router)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "Authorization", "X-Request-ID"])
    # inside RequestMiddleware: a client gone while queued is skipped
    app.add_middleware(CancelOnDisconnect, paths=("/search", PHOTO_PATH))
    def shed(path: str) -> str | None:  # the batcher's own 429, decided before any routing (overload)
        queued = path in ("/search", "/search/batch", PHOTO_PATH) or (
            path.startswith("/listings/") and path.endswith("/similar"))
        if queued and batcher.depth >= settings.max_queue:
            return f"too many queued requests (max_queue={settings.max_queue}); retry later"
        return None

    body_limits = {PHOTO_PATH: photo_body_limit(settings.max_image_bytes, settings.max_body_bytes)}
    app.add_middleware(RequestMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes, shed=shed,
                       body_limits=body_limits if settings.image_search else None)
    return app
