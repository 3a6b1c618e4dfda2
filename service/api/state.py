"""The per-app state object and its dependency alias (overridable in tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.serving.batcher import MicroBatcher
from service.serving.cache import ResultCache
from service.serving.engine import Engine
from service.serving.lifecycle import Lifecycle
from service.serving.metrics import Metrics
from service.serving.querylog import EventLog, QueryLog
from service.serving.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    engine: Engine
    metrics: Metrics
    batcher: MicroBatcher
    life: Lifecycle  # which version is served, readiness, reloads (service/serving/lifecycle.py)
    cache: ResultCache = field(default_factory=lambda: ResultCache(0))  # off unless create_app sets one
    query_log: QueryLog | None = None
    events_log: EventLog | None = None  # POST /events writes here (settings.events_log)
    photos: MicroBatcher | None = None  # POST /search/image: the photo encoder's batcher (service/api/photo.py)


async def get_state(request: Request) -> ServiceState:
    # async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
    # request that competed with the search worker for the GIL and the CPU (docs/RELIABILITY.md)
    return request.app.state.svc


State = Annotated[ServiceState, Depends(get_state)]
