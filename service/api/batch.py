"""POST /search/batch: several searches in one request, answered in order, each on its own.

`{"searches": [<POST /search body>, ...]}`, at most `max_batch_queries` (413 above; the body is
also under `max_body_bytes`). Each search is validated and answered exactly as POST /search
answers it (service/api/search.py `answer_body`: limits, like_id, fields, the result cache), and
carries the status that request would have had: 200 with its results, or its error body (422,
404, 429, 504, ...) with that status, so one bad search never fails the others. All of them are
submitted to the micro-batcher at once and gathered, so they share one encoder call (up to
`max_batch` per batch). The response is 200 whenever the batch itself was valid; a service that
is not ready answers 503 for the whole batch, as /search does. Each search's status is counted
in /metrics (`search_batch_queries_total{status}`); the request id is the batch's, in every
query log line of its searches.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import ValidationError

from service.api.errors import error_item, status_of, validation_message
from service.api.schemas import ErrorResponse, SearchBatchBody, SearchBatchResponse, SearchBody
from service.api.search import ERRORS, answer_body
from service.api.state import ServiceState, State
from service.serving.errors import NotReady, PayloadTooLarge, ServiceError, public_message

router = APIRouter()


async def answer_one(state: ServiceState, raw: Any) -> dict[str, Any]:
    """One search of the batch as a response item (never raises a ServiceError)."""
    try:
        body = SearchBody.model_validate(raw)
        answer = await answer_body(state, body)
    except ValidationError as e:
        return error_item(422, "InvalidRequest", validation_message(e.errors()))
    except ServiceError as e:
        return error_item(status_of(e), type(e).__name__, public_message(str(e), state.settings.artifacts))
    return {"status": 200, **answer.model_dump(exclude_none=True)}


@router.post("/search/batch", response_model=SearchBatchResponse, response_model_exclude_none=True,
             responses={**ERRORS, 404: {"model": ErrorResponse}})
async def search_batch(body: SearchBatchBody, state: State) -> Response:
    """Up to max_batch_queries searches; `responses` in order, each with its own status."""
    limit = state.settings.max_batch_queries
    if len(body.searches) > limit:
        raise PayloadTooLarge(f"searches: {len(body.searches)} in one body, the limit is {limit} "
                              "(max_batch_queries); send them in several requests")
    if not state.life.accepting:
        raise NotReady("the service is not ready")
    start = time.perf_counter()
    items = await asyncio.gather(*(answer_one(state, raw) for raw in body.searches))
    counter = state.metrics.batch_queries
    for item in items:
        counter.labels(str(item["status"])).inc()
    took_ms = round((time.perf_counter() - start) * 1000, 3)
    return Response(json.dumps({"responses": items, "took_ms": took_ms}, ensure_ascii=False),
                    media_type="application/json")
