"""POST and GET /search, and what every search route shares: limits, options, filters, `run_search`
(the cache, the micro-batcher, the query log), `answer_body`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import QueryParams

from index.filters import Filter, norm
from index.rank_fusion import FusionSpec
from service.api.details import ATTR_PREFIX, find_listing, like_mode, parse_fields, with_fields
from service.api.explain import with_explain
from service.api.schemas import (
    ErrorResponse,
    FusionWeights,
    SearchBody,
    SearchFilters,
    SearchHit,
    SearchQuery,
    SearchResponse,
    query_parameters,
)
from service.api.state import ServiceState, State
from service.serving.cache import search_cached
from service.serving.engine import SearchRequest
from service.serving.errors import (
    InvalidRequest,
    NotReady,
)
from service.serving.logctx import request_id_var

router = APIRouter()
QueryModel = TypeVar("QueryModel", bound=BaseModel)
ERRORS = {code: {"model": ErrorResponse} for code in (413, 422, 429, 503, 504)}
GET_PARAMS = frozenset(SearchQuery.model_fields)
FALLBACK = "this index version has no lexical index: answered by the dense index"


def search_options(state: ServiceState, mode: str | None, fusion: str | None, rrf_k: int | None,
                   weights: FusionWeights | None) -> tuple[str, FusionSpec | None]:
    """The request's mode and fusion, defaults applied by the engine (422 on a bad combination)."""
    changes: dict = {}
    if fusion is not None:
        changes["method"] = fusion
    if rrf_k is not None:
        changes["rrf_k"] = rrf_k
    if weights is not None and weights.dense is not None:
        changes["dense_weight"] = float(weights.dense)
    if weights is not None and weights.lexical is not None:
        changes["lexical_weight"] = float(weights.lexical)
    try:
        return state.engine.request_options(mode, **changes)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None


def check_query(query: str, max_chars: int, name: str = "query") -> str:
    """The query with its whitespace collapsed, or InvalidRequest naming `name` (422)."""
    text = " ".join(query.split())
    if not any(ch.isprintable() and not ch.isspace() for ch in text):  # "", "   ", "\x00", "\u200b"
        raise InvalidRequest(f"{name}: must not be empty (it has no visible character)")
    if len(query) > max_chars:
        raise InvalidRequest(f"{name}: {len(query)} characters, the limit is {max_chars}")
    if not text.isascii() and any("\ud800" <= ch <= "\udfff" for ch in text):  # JSON "\ud800": not Unicode text
        raise InvalidRequest(f"{name}: contains an unpaired surrogate (not valid Unicode)")
    return text


def to_request(state: ServiceState, query: str | None, k: int, offset: int, filters: SearchFilters | None,
               mode: str | None = None, fusion: FusionSpec | None = None, like_id: str | None = None,
               photo: bool = False) -> SearchRequest:
    """Validate against the configured limits (422 with a message naming the field). A query text
    is required unless `like_id` names the listing whose vector replaces it, or a photo's vector
    will (`photo`: POST /search/image sets the vector after encoding)."""
    s = state.settings
    if query is None and like_id is None and not photo:
        raise InvalidRequest("query: Field required (or like_id, for listings like that one)")
    text = "" if query is None else check_query(query, s.max_query_chars)
    if not 1 <= k <= s.max_k:
        raise InvalidRequest(f"k: {k} is outside 1..{s.max_k}")
    if not 0 <= offset <= s.max_offset:
        raise InvalidRequest(f"offset: {offset} is outside 0..{s.max_offset}")
    flt = Filter()
    if filters is not None:
        n_values = len(filters.category or []) + sum(
            1 if isinstance(v, str) else len(v) for v in (filters.attributes or {}).values())
        if n_values > s.max_filter_values:
            raise InvalidRequest(f"filters: {n_values} values, the limit is {s.max_filter_values}")
        price = filters.price
        try:
            flt = Filter.build(filters.category, filters.attributes,
                               price.min if price else None, price.max if price else None)
        except ValueError as e:
            raise InvalidRequest(f"filters.{e}") from None
    return SearchRequest(text, k, offset, flt, mode, fusion, like_id)


async def run_search(state: ServiceState, req: SearchRequest) -> SearchResponse:
    if not state.life.accepting:
        raise NotReady("the service is not ready")
    start = time.perf_counter()
    if req.vector is not None:  # a photo's vector (POST /search/image): never the same key twice, no cache
        answer, cached = await state.batcher.submit(req), False
    else:
        answer, cached = await search_cached(state.cache, state.engine, state.batcher.submit, req)
    hits, model_version, index_version, mode = answer.hits, answer.model_version, answer.index_version, answer.mode
    took_ms = (time.perf_counter() - start) * 1000
    # an enqueue (written by the log's thread); like_id alone has no text; a photo search is not a text search
    if state.query_log is not None and req.query and req.vector is None:
        state.query_log.record(request_id_var.get(), req.query, req.k, req.offset, req.filter, [h.id for h in hits],
                               model_version, index_version, took_ms, cached, mode)
    # The engine's hits are already str/float (engine.Hit): built without re-validating each one.
    return SearchResponse(
        results=[SearchHit.model_construct(id=h.id, score=h.score, title=h.title, image=h.image) for h in hits],
        model_version=model_version, index_version=index_version, took_ms=round(took_ms, 3),
        mode=mode, fallback=FALLBACK if mode is not None and req.mode not in (None, mode) else None,
    )


def body_request(state: ServiceState, body: SearchBody) -> SearchRequest:
    """A POST /search body -> the engine's request (422 / 404 as the route answers them)."""
    mode = body.mode
    if body.like_id is not None:
        find_listing(state, body.like_id, "like_id")
        mode = like_mode(state, body.query, body.mode)
    mode, fusion = search_options(state, mode, body.fusion, body.rrf_k, body.weights)
    return to_request(state, body.query, body.k, body.offset, body.filters, mode, fusion, body.like_id)


async def answer_body(state: ServiceState, body: SearchBody) -> SearchResponse:
    """Validate, search, add the asked-for fields: POST /search and each search of /search/batch."""
    if body.like_id is not None and not state.engine.ready:
        raise NotReady("the service is not ready")
    fields = parse_fields(state, body.fields)
    req = body_request(state, body)
    answer = await run_search(state, req)
    if not fields.empty:
        answer = await with_fields(state, answer, fields)
    return await with_explain(state, answer, req) if body.explain else answer


@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True,
             responses={**ERRORS, 404: {"model": ErrorResponse}})
async def search_post(body: SearchBody, state: State) -> Response:
    return json_response(await answer_body(state, body))


def split_values(raw: list[str], known: Callable[[str], bool] | None = None) -> list[str]:
    """GET filter values: repeated (`category=a&category=b`) or comma-separated (`category=a,b`).
    A value that is itself a name the served version holds (`known`: a category, or a value of that
    attribute, compared as filters compare) stays whole, so "Tables, desks" still matches."""
    out: list[str] = []
    for value in raw:
        if known is not None and known(norm(value)):
            out.append(value)
        else:
            out.extend(part for part in (p.strip() for p in value.split(",")) if part)
    return out


def parse_search_query(request: Request, model: type[QueryModel], params: QueryParams | None = None) -> QueryModel:
    """GET /search's query string -> SearchQuery (or another query `model`): unknown names and invalid
    values are 422s worded as FastAPI words them (`query.k: ...`). A repeated name keeps its last
    value, except category. `params`: other name/value pairs instead (a form's, POST /search/image)."""
    params = request.query_params if params is None else params
    known = GET_PARAMS if model is SearchQuery else frozenset(model.model_fields)
    unknown = sorted(n for n in set(params) - known if not (n.startswith(ATTR_PREFIX) and len(n) > len(ATTR_PREFIX)))
    if unknown:
        more = f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else ""  # bounded: never echo 2,000 names
        raise InvalidRequest(f"unknown query parameter(s): {', '.join(unknown[:10])}{more}")
    values: dict[str, object] = {n: v for n, v in params.items() if not n.startswith(ATTR_PREFIX)}
    if "category" in values:
        values["category"] = params.getlist("category")
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("query", *err["loc"])} for err in e.errors()]) from None


@router.get("/search", response_model=SearchResponse, response_model_exclude_none=True, responses=ERRORS,
            openapi_extra={"parameters": query_parameters(SearchQuery)})
async def search_get(request: Request) -> Response:
    # No FastAPI parameters on purpose: the query string is validated in one call (parse_search_query)
    # and the state read directly; the OpenAPI parameters come from SearchQuery.
    state: ServiceState = request.app.state.svc
    p = parse_search_query(request, SearchQuery)
    filters = query_filters(state, request, p.category, p.price_min, p.price_max)
    fields = parse_fields(state, p.fields)
    weights = FusionWeights(dense=p.dense_weight, lexical=p.lexical_weight)
    mode, fusion = search_options(state, p.mode, p.fusion, p.rrf_k, weights)
    req = to_request(state, p.q, p.k, p.offset, filters, mode, fusion)
    answer = await run_search(state, req)
    if not fields.empty:
        answer = await with_fields(state, answer, fields)
    return json_response(await with_explain(state, answer, req) if p.explain else answer)


def query_filters(state: ServiceState, request: Request, category: list[str] | None, price_min: float | None,
                  price_max: float | None, params: QueryParams | None = None) -> SearchFilters | None:
    """A GET query string's filters (category=, attr.KEY=, price_min=, price_max=) as SearchFilters
    (`params`: other name/value pairs instead of the request's query string)."""
    params = request.query_params if params is None else params
    price = {"min": price_min, "max": price_max} if price_min is not None or price_max is not None else None
    cols = state.engine.current.filters if state.engine.ready else None
    categories = split_values(category or [], cols and cols.category_vocab.__contains__)
    attributes = {}
    for name in params:
        if name.startswith(ATTR_PREFIX):
            key = norm(name[len(ATTR_PREFIX):])
            held = cols and (lambda v, key=key: (key, v) in cols.attribute_rows)
            attributes[name[len(ATTR_PREFIX):]] = split_values(params.getlist(name), held)
    try:
        return (SearchFilters(category=categories, attributes=attributes or None, price=price)
                if categories or attributes or price else None)
    except ValueError as e:
        raise InvalidRequest(f"filters: {str(e).splitlines()[-1].strip()}") from None


def json_response(answer: SearchResponse) -> Response:
    """Serialised once here: a returned Response skips FastAPI's second validation of the model
    (`response_model` stays on the routes for the OpenAPI schema)."""
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")
