"""POST /events: what shoppers did with the results (click, add_to_cart, purchase), the training
signal of the next build.

Off unless `events_log` (SERVICE_EVENTS_LOG) names a file: then 404 with a message saying so (the
endpoint does not exist on this deployment, as /admin/* without a token). On, a body of one event
or a list of at most `events_max_batch` is validated (422: unknown action, empty or too long
query, too long ids; 413: too many events), counted per action in /metrics
(`events_recorded_total`), and enqueued for the events log's writer thread (service/serving/querylog.py
`EventLog`: same bounded queue and size rotation as the query log), so the request never waits for
the disk and never slows /search. A full queue refuses the whole body with 429 (retry it).
`service build-index --interactions EVENTS_LOG` reads the file directly (model/data/interactions.py).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.schemas import ErrorResponse, EventBody, EventsAccepted, EventsBody
from service.api.search import check_query
from service.api.state import ServiceState, State
from service.serving.errors import InvalidRequest, NotFound, Overloaded, PayloadTooLarge

router = APIRouter()
ERRORS = {code: {"model": ErrorResponse} for code in (404, 413, 422, 429)}


def validate_events(state: ServiceState, body: EventBody | list[EventBody]) -> list[tuple[str, str, str, str, str | None]]:
    """The body as (query, item_id, action, request_id, session_id) rows, or the first problem."""
    s = state.settings
    events = body if isinstance(body, list) else [body]
    if len(events) > s.events_max_batch:
        raise PayloadTooLarge(f"events: {len(events)} in one body, the limit is {s.events_max_batch} "
                              "(events_max_batch); send them in several requests")
    rows = []
    for i, ev in enumerate(events):
        where = f"events.{i}" if isinstance(body, list) else "event"
        query = check_query(ev.query, s.max_query_chars, f"{where}.query")
        if not ev.item_id.strip():
            raise InvalidRequest(f"{where}.item_id: must not be empty")
        rows.append((query, ev.item_id.strip(), ev.action, ev.request_id, ev.session_id))
    return rows


@router.post("/events", status_code=202, response_model=EventsAccepted, responses=ERRORS)
async def post_events(body: EventsBody, state: State) -> JSONResponse:
    """Record shoppers' events: `{query, item_id, action, request_id[, session_id]}` or a list of them."""
    if state.events_log is None:
        raise NotFound("POST /events is off on this service: set SERVICE_EVENTS_LOG to the file that should "
                       "record shoppers' events")
    rows = validate_events(state, body)
    if not state.events_log.record(rows):
        state.metrics.events_refused.inc()
        raise Overloaded("the events log writer is behind; retry later")
    for _, _, action, _, _ in rows:
        state.metrics.events.labels(action).inc()
    return JSONResponse({"accepted": len(rows)}, status_code=202)
