"""Probes and metrics: GET /healthz (liveness), /readyz (readiness, and what is served), /metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from service.api.schemas import ErrorResponse
from service.api.search import FALLBACK
from service.api.state import State
from service.serving.errors import public_message

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process and its event loop answer."""
    return {"status": "alive"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(state: State) -> JSONResponse:
    """Readiness: model and index loaded and warmed, not shutting down."""
    engine = state.engine
    if not state.life.accepting:
        reason = public_message(state.life.not_ready_reason(), state.settings.artifacts)
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
    lv = engine.current
    return JSONResponse({
        "status": "ready",
        "model_version": lv.model_version,
        "index_version": lv.version,
        "items": lv.n_items,
        "placement": {"encoder": str(lv.encoder.device), "index": lv.searcher.placement},
        "encoder_runtime": lv.encoder.describe,  # e.g. cpu/int8, cuda/torch+graphs
        "index_key": lv.manifest.get("index_key"),
        # ANN recall tuned at build (CPU index) and measured at load on the index as placed
        "ann_recall": lv.ann_recall,
        "search_modes": {"default": state.settings.search_mode,
                         "available": ["dense", "lexical", "hybrid"] if lv.lexical is not None else ["dense"],
                         "lexical_index": lv.lexical is not None,
                         **({} if lv.lexical is not None else {"fallback": FALLBACK})},
        # POST /search/image: whether this version can encode a photo, on what, and its default head
        "photo_search": ({"available": True, "runtime": lv.photo.describe, "default_head": state.settings.image_head}
                         if lv.photo is not None else {"available": False, "reason": lv.photo_error}),
        "last_reload_error": engine.last_reload_error and public_message(engine.last_reload_error,
                                                                          state.settings.artifacts),
        # following DIR/current: null, or why its last poll did not reach the version it names
        "follow_error": state.life.follow_error and public_message(state.life.follow_error, state.settings.artifacts),
    })


@router.get("/metrics", response_class=PlainTextResponse)  # documents text/plain in the OpenAPI schema
async def metrics(state: State) -> Response:
    state.metrics.queue_depth.set(state.batcher.depth)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
