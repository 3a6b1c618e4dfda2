"""Request and response bodies of the HTTP API (unknown fields are rejected everywhere)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SkipValidation,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    field_validator,
    model_serializer,
)

Number = StrictInt | StrictFloat
MAX_LISTING_ID_CHARS = 512  # a listing id in a path or like_id


class PriceFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: Annotated[Number | None, Field(ge=0, allow_inf_nan=False)] = None
    max: Annotated[Number | None, Field(ge=0, allow_inf_nan=False)] = None


class SearchFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: list[StrictStr] | None = Field(None, description="any of these categories")
    attributes: dict[StrictStr, StrictStr | list[StrictStr]] | None = Field(
        None, description="attribute key -> required value (or any of a list of values)")
    price: PriceFilter | None = None

    @field_validator("category", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


class FusionWeights(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dense: Annotated[Number | None, Field(ge=0, le=1000, allow_inf_nan=False)] = None
    lexical: Annotated[Number | None, Field(ge=0, le=1000, allow_inf_nan=False)] = None


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: StrictStr | None = Field(None, description="the shopper's query (required unless like_id is given; "
                                    "with like_id, only the lexical side of a hybrid search)")
    like_id: StrictStr | None = Field(None, min_length=1, max_length=MAX_LISTING_ID_CHARS,
                                      description="more like this listing: its stored vector replaces the "
                                      "query's (the listing itself is never a result; 404 when unknown)")
    fields: list[StrictStr] | None = Field(None, description="more of each hit: price, category, images, "
                                           "attributes, attr.KEY (default: id, score, title, image)")
    k: StrictInt = Field(10, description="number of results (1..max_k)")
    offset: StrictInt = Field(0, description="results to skip, for pagination (0..max_offset)")
    filters: SearchFilters | None = None
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(
        None, description="dense (embeddings), lexical (BM25) or hybrid (both, fused); default: the setting")
    fusion: Literal["rrf", "weighted"] | None = Field(None, description="how hybrid fuses; default: the setting")
    rrf_k: StrictInt | None = Field(None, ge=0, le=10_000, description="the RRF constant (fusion rrf)")
    weights: FusionWeights | None = Field(None, description="weight of each list in the fusion")
    explain: StrictBool = Field(False, description="add per hit its scores, ranks and per-view cosines "
                                "(computed after the search, for this request only)")


class SearchQuery(BaseModel):
    """GET /search's query string: validated in one call (FastAPI's per-parameter parsing cost more
    than the rest of the request; docs/RELIABILITY.md "Overload"). Lax types, as query strings are
    text: `k=5` is the integer 5. Filters are checked again as `SearchFilters`."""
    model_config = ConfigDict(extra="forbid")
    q: str = Field(description="the shopper's query")
    k: int = Field(10, description="number of results (1..max_k)")
    offset: int = Field(0, description="results to skip, for pagination (0..max_offset)")
    category: list[str] | None = Field(None, description="any of these categories: repeat the parameter or "
                                       "separate with commas; attribute filters: attr.KEY=v1,v2")
    price_min: float | None = None
    price_max: float | None = None
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(None, description="as in POST /search")
    fusion: Literal["rrf", "weighted"] | None = Field(None, description="as in POST /search")
    rrf_k: int | None = Field(None, ge=0, le=10_000)
    dense_weight: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False)
    lexical_weight: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False)
    fields: str | None = Field(None, description="more of each hit, comma-separated: price, category, images, "
                               "attributes, attr.KEY (as in POST /search)")
    explain: bool = Field(False, description="explain=1: as in POST /search")


PhotoHead = Literal["primary", "other"]
IMAGE_FIELD = ("the photo, base64 (standard or URL-safe alphabet, padding optional, line breaks ignored) or a "
               "data: URL (data:image/jpeg;base64,...); JPEG, PNG, WebP, GIF or BMP, at most max_image_bytes "
               "decoded and max_image_pixels")
HEAD_FIELD = ("the photo head the photo goes through: primary (the primary-photo projection: catalogue shots) or "
              "other (the other-photo projection: angles, the item in use, rooms); default: the image_head setting")


class ImageSearchBody(BaseModel):
    """POST /search/image as JSON: the photo base64 in `image`, and POST /search's options."""
    model_config = ConfigDict(extra="forbid")
    image: StrictStr = Field(description=IMAGE_FIELD)
    head: PhotoHead | None = Field(None, description=HEAD_FIELD)
    query: StrictStr | None = Field(None, description="optional words beside the photo: the lexical side of a "
                                    "hybrid search (without it the search is dense)")
    fields: list[StrictStr] | None = Field(None, description="as in POST /search")
    k: StrictInt = Field(10, description="number of results (1..max_k)")
    offset: StrictInt = Field(0, description="results to skip, for pagination (0..max_offset)")
    filters: SearchFilters | None = None
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(
        None, description="dense (a photo alone; the default) or hybrid (with a query); lexical is a 422")
    fusion: Literal["rrf", "weighted"] | None = Field(None, description="as in POST /search (hybrid only)")
    rrf_k: StrictInt | None = Field(None, ge=0, le=10_000, description="the RRF constant (fusion rrf)")
    weights: FusionWeights | None = Field(None, description="weight of each list in the fusion")
    explain: StrictBool = Field(False, description="as in POST /search")


class ImageQuery(BaseModel):
    """POST /search/image as multipart/form-data: the options, as GET /search's parameters, in the
    query string or as text parts of the form (the photo is the part named `image`)."""
    model_config = ConfigDict(extra="forbid")
    q: str | None = Field(None, description="optional words beside the photo: the lexical side of a hybrid search")
    head: PhotoHead | None = Field(None, description=HEAD_FIELD)
    k: int = Field(10, description="number of results (1..max_k)")
    offset: int = Field(0, description="results to skip, for pagination (0..max_offset)")
    category: list[str] | None = Field(None, description="as in GET /search; attribute filters: attr.KEY=v1,v2")
    price_min: float | None = None
    price_max: float | None = None
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(None, description="as in the JSON body")
    fusion: Literal["rrf", "weighted"] | None = Field(None, description="as in POST /search")
    rrf_k: int | None = Field(None, ge=0, le=10_000)
    dense_weight: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False)
    lexical_weight: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False)
    fields: str | None = Field(None, description="as in GET /search")
    explain: bool = Field(False, description="explain=1: as in POST /search")


class SimilarQuery(BaseModel):
    """GET /listings/{id}/similar's query string: pages, filters and fields as GET /search's."""
    model_config = ConfigDict(extra="forbid")
    k: int = Field(10, description="number of results (1..max_k)")
    offset: int = Field(0, description="results to skip, for pagination (0..max_offset)")
    category: list[str] | None = Field(None, description="as in GET /search; attribute filters: attr.KEY=v1,v2")
    price_min: float | None = None
    price_max: float | None = None
    fields: str | None = Field(None, description="as in GET /search")


def query_parameters(model: type[BaseModel]) -> list[dict]:
    """The model's fields as OpenAPI query parameters (for a route that parses its query itself)."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", None)
        out.append({"name": name, "in": "query", "required": name in required, "schema": prop,
                    **({"description": description} if description else {})})
    return out


class ViewExplain(BaseModel):
    view: str  # the slot: title, image, description, tags, image_other.1, ...
    weight: float  # the per-slot weight w_s the fused vector used (0: a view type not indexed)
    cosine: float  # query vector · this view's unit embedding


class HitExplain(BaseModel):
    """Why a hit is where it is (explain: true; service/api/explain.py)."""
    dense_cosine: float | None = None
    lexical_bm25: float | None = None
    lexical_normalized: float | None = None
    fused: float
    dense_rank: int | None = None
    lexical_rank: int | None = None
    identifier_boost: bool = False
    views: list[ViewExplain] | None = None
    missing: list[str] = []

    @model_serializer
    def _all_keys(self) -> dict[str, Any]:
        """Every key, nulls included (the responses are dumped with exclude_none)."""
        return {"dense_cosine": self.dense_cosine, "lexical_bm25": self.lexical_bm25,
                "lexical_normalized": self.lexical_normalized, "fused": self.fused, "dense_rank": self.dense_rank,
                "lexical_rank": self.lexical_rank, "identifier_boost": self.identifier_boost,
                "views": None if self.views is None else [v.model_dump() for v in self.views],
                "missing": list(self.missing)}


class SearchHit(BaseModel):
    id: str
    score: float
    title: str
    image: str | None = None
    # Only with fields= (service/api/details.py); absent when not asked for or the listing has none.
    price: float | None = None
    category: str | None = None
    images: list[str] | None = Field(None, description="every photo URL, the primary first")
    attributes: dict[str, str] | None = Field(None, description="the stored attributes (all, or those attr.KEY names)")
    explain: HitExplain | None = Field(None, description="only with explain: scores, ranks and views behind the hit")


class ListingResponse(BaseModel):
    """GET /listings/{id}: the stored record of the served version."""
    id: str
    title: str
    image: str | None = None
    images: list[str] = Field(description="every photo URL, the primary first")
    category: str | None = None
    price: float | None = None
    attributes: dict[str, str]
    index_version: str


class SearchResponse(BaseModel):
    results: list[SearchHit]
    model_version: str
    index_version: str
    took_ms: float
    mode: str | None = Field(None, description="the mode that answered: dense, lexical or hybrid")
    fallback: str | None = Field(None, description="why the mode differs from the one asked for")
    photo_head: str | None = Field(None, description="POST /search/image: the photo head that encoded the photo")


class ErrorResponse(BaseModel):
    error: str
    message: str


class SearchBatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Items are validated one by one (service/api/batch.py), so one bad search is its own 422, not the batch's.
    searches: list[SkipValidation[SearchBody]] = Field(min_length=1, description="up to max_batch_queries "
                                                       "searches, each a POST /search body")


class BatchItem(BaseModel):
    """One search's answer: a SearchResponse, or an error body, with the status it would have had."""
    status: int = Field(description="200, or the 4xx/5xx POST /search would have answered")
    results: list[SearchHit] | None = None
    model_version: str | None = None
    index_version: str | None = None
    took_ms: float | None = None
    mode: str | None = None
    fallback: str | None = None
    error: str | None = Field(None, description="the error code, when status is not 200")
    message: str | None = None


class SearchBatchResponse(BaseModel):
    responses: list[BatchItem] = Field(description="one per search, in order")
    took_ms: float


class ReloadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: StrictStr | None = Field(None, description="version to load (default: DIR/current)")
    force: StrictBool = Field(False, description="load a version whose publish gate failed (logged, recorded "
                              "in its manifest)")


class DenyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[StrictStr] = Field(min_length=1, max_length=10_000, description="listing ids to hide (or show again)")
    remove: bool = Field(False, description="take the ids off the deny-list instead")


# The actions POST /events takes; their training weights are model.data.interactions.ACTION_WEIGHTS.
Action = Literal["click", "add_to_cart", "purchase"]
MAX_EVENT_ID_CHARS = 128  # item_id, request_id, session_id (X-Request-ID is at most 128 too)


class EventBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: StrictStr = Field(description="the query of the search that showed the listing (max_query_chars)")
    item_id: StrictStr = Field(min_length=1, max_length=MAX_EVENT_ID_CHARS, description="the listing acted on")
    action: Action = Field(description="click | add_to_cart | purchase")
    request_id: StrictStr = Field(min_length=1, max_length=MAX_EVENT_ID_CHARS,
                                  description="the X-Request-ID of the search that showed the listing")
    session_id: StrictStr | None = Field(None, min_length=1, max_length=MAX_EVENT_ID_CHARS,
                                         description="the shopper's session, when the storefront has one")


def _one_or_many(v: object) -> str:
    return "events" if isinstance(v, list) else "event"


# One event, or a list of them (at most events_max_batch). Discriminated by shape, so a bad field
# is reported once, at its place (`event.action`, `events.3.query`), not once per union member.
EventsBody = Annotated[
    Annotated[EventBody, Tag("event")] | Annotated[list[EventBody], Field(min_length=1), Tag("events")],
    Discriminator(_one_or_many),
]


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events queued for the events log")
