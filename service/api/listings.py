"""GET /listings/{id} (the stored record) and GET /listings/{id}/similar (more like this).

Similar listings are a /search whose query vector is the listing's stored fused vector (the
version's vectors.npy row) instead of an encoded text: the same request type, result cache,
micro-batcher, filters, pages and deny-list (service/api/search.py `run_search`), the listing itself
left out. An id the served version does not hold, or one on the deny-list, is 404.
POST /search takes the same as `like_id` (service/api/details.py `like_mode`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.details import find_listing, listing_response, parse_fields, with_fields
from service.api.schemas import ErrorResponse, ListingResponse, SearchResponse, SimilarQuery, query_parameters
from service.api.search import (
    ERRORS,
    json_response,
    parse_search_query,
    query_filters,
    run_search,
    to_request,
)
from service.api.state import ServiceState
from service.serving.errors import NotReady

router = APIRouter()
LISTING_ERRORS = {code: {"model": ErrorResponse} for code in (404, 503)}


def served(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.svc
    if not state.life.accepting:
        raise NotReady("the service is not ready")
    return state


@router.get("/listings/{listing_id}", response_model=ListingResponse, responses=LISTING_ERRORS)
async def get_listing(listing_id: str, request: Request) -> Response:
    """The stored record of a listing in the served version: id, title, photos, category, price,
    attributes."""
    state = served(request)
    lv, rec = find_listing(state, listing_id)
    return Response(listing_response(state, lv, rec).model_dump_json(), media_type="application/json")


@router.get("/listings/{listing_id}/similar", response_model=SearchResponse, response_model_exclude_none=True,
            responses={**ERRORS, 404: {"model": ErrorResponse}},
            openapi_extra={"parameters": query_parameters(SimilarQuery)})
async def similar(listing_id: str, request: Request) -> Response:
    """Listings like this one (dense search from its stored vector), with filters, pages and
    fields as GET /search; never the listing itself."""
    state = served(request)
    p = parse_search_query(request, SimilarQuery)
    find_listing(state, listing_id)
    filters = query_filters(state, request, p.category, p.price_min, p.price_max)
    fields = parse_fields(state, p.fields)
    answer = await run_search(state, to_request(state, None, p.k, p.offset, filters, "dense", None, listing_id))
    return json_response(answer if fields.empty else await with_fields(state, answer, fields))
