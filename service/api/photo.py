"""POST /search/image: search by photo (issue 18 item 3).

The shopper's photo is encoded by the version's photo encoder (model/runtime/image_query.py: the frozen
EfficientNet-Lite0 backbone, then one of the trained photo heads) and its unit vector searches the
same fused index as a text query, through the same path as `/search` and more like this
(service/api/search.py `run_search` -> the micro-batcher -> `Engine.search_batch`): filters, pages,
the deny-list, `fields`, `explain`, the error body, the request id and the per-route metrics are
those of `/search`. The photo's vector replaces the query's as `like_id`'s does (details.py
`like_mode`): a photo alone is a **dense** search (`"mode": "dense"`; lexical or hybrid asked for
is a 422); a photo with a `query` is a hybrid search whose lexical side is that text.

Two bodies, one route:
- `multipart/form-data`: the photo is the part named `image` (a file part); the options are
  GET /search's parameters (`k`, `offset`, `category`, `attr.KEY`, `price_min`, `fields`, `explain`,
  `q`, `head`, ...), in the query string or as text parts of the form;
- `application/json`: `{"image": "<base64 or data: URL>", ...POST /search's options, "head"}`.
Anything else is a 415. The multipart body is parsed here, in memory, from the body that
RequestMiddleware has already read (Starlette's form parser would need python-multipart and
spools parts over 1 MB to a temporary file): no byte of the photo touches the disk.

Limits: the body of this route may be the base64 size of `max_image_bytes` plus `max_body_bytes`
(413 above, before anything is parsed); the photo itself at most `max_image_bytes` (413) and
`max_image_pixels` (413, read from the image header before any pixel is decoded; the fix is the
same as for too many bytes: send a smaller photo); bytes that are not a JPEG / PNG / WebP / GIF /
BMP image, or are truncated or corrupt, and bad base64 are 422s. Everything is validated before
the photo is queued for the encoder.

Concurrency: photos are encoded in their own micro-batcher (bounded queue `image_max_queue` ->
429, `request_timeout_ms` deadline -> 504, batches of up to `image_max_batch`), in its own worker
thread, so the event loop never runs the CNN and the text encoder's batches never wait behind it;
the vector then joins the search queue like any query (no text encoding). A version swap between
the encode and the search is detected (the vector names the version whose heads made it) and the
photo is encoded again for the version that answered.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Sequence
from dataclasses import replace
from email.message import Message
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import QueryParams

from model.encoders.photos import ImageError, ImageTooLarge
from service.api.details import like_mode, parse_fields, with_fields
from service.api.explain import with_explain
from service.api.schemas import (
    ErrorResponse,
    FusionWeights,
    ImageQuery,
    ImageSearchBody,
    SearchFilters,
    SearchResponse,
    query_parameters,
)
from service.api.search import (
    ERRORS,
    json_response,
    parse_search_query,
    query_filters,
    run_search,
    search_options,
    to_request,
)
from service.api.state import ServiceState
from service.serving.engine import SearchRequest
from service.serving.errors import (
    InvalidRequest,
    NotFound,
    NotReady,
    PayloadTooLarge,
    UnsupportedMediaType,
)

router = APIRouter()
PATH = "/search/image"
IMAGE_PART = "image"
MAX_PARTS = 64  # parts of one multipart body (the photo and the options)
MAX_PART_HEADER_BYTES = 4096
JSON_TYPES = ("application/json",)


def body_limit(max_image_bytes: int, max_body_bytes: int) -> int:
    """The largest body this route reads: the photo's base64 (4/3 of its bytes) + the options."""
    return 4 * -(-max_image_bytes // 3) + max_body_bytes


# ------------------------------------------------------------------------------------------ bodies

def _params(header_value: str, header: str) -> Message:
    msg = Message()
    msg[header] = header_value
    return msg


def parse_multipart(body: bytes, content_type: str) -> tuple[bytes | None, list[tuple[str, str]]]:
    """A multipart/form-data body (RFC 7578) -> (the `image` part's bytes or None, the text parts as
    (name, value) pairs), in memory. InvalidRequest on a malformed body."""
    boundary = _params(content_type, "content-type").get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 200:
        raise InvalidRequest("content-type: multipart/form-data needs a boundary parameter (1-200 characters)")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)  # [preamble, part, part, ..., "--" + epilogue]
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise InvalidRequest("body: not a complete multipart/form-data body (no closing boundary)")
    parts = chunks[1:-1]
    if len(parts) > MAX_PARTS:
        raise InvalidRequest(f"body: {len(parts)} form parts, the limit is {MAX_PARTS}")
    image: bytes | None = None
    fields: list[tuple[str, str]] = []
    for raw in parts:
        lead = raw.lstrip(b" \t")  # transport padding after a boundary, then its line end
        head, sep, content = lead[2:].partition(b"\r\n\r\n")
        if not lead.startswith(b"\r\n") or not sep:
            raise InvalidRequest("body: a multipart part without its headers")
        if len(head) > MAX_PART_HEADER_BYTES:
            raise InvalidRequest(f"body: a multipart part's headers exceed {MAX_PART_HEADER_BYTES} bytes")
        disposition = None
        for line in head.decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon and name.strip().lower() == "content-disposition":
                disposition = _params(value.strip(), "content-disposition")
        if disposition is None or disposition.get_content_disposition() != "form-data":
            raise InvalidRequest("body: every multipart part needs Content-Disposition: form-data")
        name = disposition.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("body: a multipart part without a name")
        if name == IMAGE_PART:
            if image is not None:
                raise InvalidRequest("image: more than one photo in the form; send one")
            image = content
            continue
        if disposition.get_param("filename", header="content-disposition") is not None:
            raise InvalidRequest(f"{name[:64]}: a file part; the photo goes in the part named {IMAGE_PART!r}, "
                                 "the other parts are options (text)")
        try:
            fields.append((name, content.decode("utf-8")))
        except UnicodeDecodeError:
            raise InvalidRequest(f"{name[:64]}: a form field that is not UTF-8 text (only the part named "
                                 f"{IMAGE_PART!r} is a file)") from None
    return image, fields


def decode_base64(text: str) -> bytes:
    """`image` of the JSON body: base64 (either alphabet, padding optional, whitespace ignored) or a
    data: URL -> bytes; InvalidRequest otherwise."""
    s = text.strip()
    if s[:5].lower() == "data:":
        header, sep, s = s.partition(",")
        if not sep or not header.lower().endswith(";base64"):
            raise InvalidRequest("image: a data: URL must be base64-encoded (data:image/jpeg;base64,...)")
    s = "".join(s.split()).replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("image: not valid base64 (send the photo's bytes base64-encoded, or as multipart/"
                             "form-data)") from None


def check_photo(state: ServiceState, image: bytes | None) -> bytes:
    limit = state.settings.max_image_bytes
    if image is None:
        raise InvalidRequest(f"{IMAGE_PART}: Field required (a multipart part named {IMAGE_PART!r}, or "
                             '{"image": base64} as JSON)')
    if not image:
        raise InvalidRequest(f"{IMAGE_PART}: empty (0 bytes)")
    if len(image) > limit:
        raise PayloadTooLarge(f"{IMAGE_PART}: {len(image)} bytes, the limit is {limit} (max_image_bytes); "
                              "send a smaller photo")
    return image


# ------------------------------------------------------------------------------------- the request

class PhotoRequest:
    """Everything the route validated, before the photo is encoded."""

    def __init__(self, image: bytes, head: str, req: SearchRequest, fields: Any, explain: bool):
        self.image, self.head, self.req, self.fields, self.explain = image, head, req, fields, explain


def _request(state: ServiceState, image: bytes | None, head: str | None, query: str | None, k: int, offset: int,
             filters: SearchFilters | None, mode: str | None, fusion: str | None, rrf_k: int | None,
             weights: FusionWeights | None, fields: Sequence[str] | str | None, explain: bool) -> PhotoRequest:
    photo = check_photo(state, image)
    parsed_fields = parse_fields(state, fields)
    mode = like_mode(state, query, mode, source="image")
    mode, spec = search_options(state, mode, fusion, rrf_k, weights)
    req = to_request(state, query, k, offset, filters, mode, spec, photo=True)
    return PhotoRequest(photo, head or state.settings.image_head, req, parsed_fields, explain)


def from_multipart(state: ServiceState, request: Request, body: bytes, content_type: str) -> PhotoRequest:
    image, pairs = parse_multipart(body, content_type)
    names = {n for n, _ in pairs}
    both = sorted(names & set(request.query_params))
    if both:
        raise InvalidRequest(f"{', '.join(both[:10])}: given both in the query string and in the form; give once")
    params = QueryParams([*request.query_params.multi_items(), *pairs])
    p = parse_search_query(request, ImageQuery, params)
    filters = query_filters(state, request, p.category, p.price_min, p.price_max, params)
    weights = FusionWeights(dense=p.dense_weight, lexical=p.lexical_weight)
    return _request(state, image, p.head, p.q, p.k, p.offset, filters, p.mode, p.fusion, p.rrf_k, weights,
                    p.fields, p.explain)


def from_json(state: ServiceState, request: Request, body: bytes) -> PhotoRequest:
    if request.query_params:
        names = sorted(request.query_params)
        raise InvalidRequest(f"query parameters ({', '.join(names[:10])}): with a JSON body, every option goes in "
                             "the body")
    try:
        b = ImageSearchBody.model_validate_json(body)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None
    image = decode_base64(b.image)
    return _request(state, image, b.head, b.query, b.k, b.offset, b.filters, b.mode, b.fusion, b.rrf_k, b.weights,
                    b.fields, b.explain)


# ------------------------------------------------------------------------------------ the encoder

def make_photo_runner(state: ServiceState) -> Any:
    """The photo batcher's batch function: in its worker thread, decode + backbone + head for each
    photo of the batch on the version served now. -> per photo (vector, version) or the error."""

    def run(items: Sequence[tuple[bytes, str]]) -> list[Any]:
        t0 = time.perf_counter()
        lv = state.engine.current
        if lv.photo is None:
            return [NotFound(f"photo search: {lv.photo_error}")] * len(items)
        out = lv.photo.encode([image for image, _ in items], [head for _, head in items])
        state.metrics.stage.labels("photo_encode").observe(time.perf_counter() - t0)
        return [v if isinstance(v, Exception) else (v, lv.version) for v in out]

    return run


async def encode_photo(state: ServiceState, image: bytes, head: str) -> tuple[np.ndarray, str]:
    """-> (the photo's (d,) unit vector, the version whose heads made it), via the photo batcher."""
    if state.photos is None:
        raise NotFound("photo search is off on this deployment (SERVICE_IMAGE_SEARCH=false)")
    result = await state.photos.submit((image, head))
    if isinstance(result, ImageTooLarge):
        raise PayloadTooLarge(f"{result}; send a smaller photo (max_image_pixels={state.settings.max_image_pixels})")
    if isinstance(result, ImageError):
        raise InvalidRequest(str(result))
    if isinstance(result, Exception):
        raise result
    return result


OPENAPI = {
    "parameters": query_parameters(ImageQuery),
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": [IMAGE_PART],
            "properties": {IMAGE_PART: {"type": "string", "format": "binary",
                                        "description": "the photo (JPEG, PNG, WebP, GIF or BMP; at most "
                                        "max_image_bytes and max_image_pixels)"}},
            "additionalProperties": {"type": "string", "description": "an option, as in the query string"}}},
        "application/json": {"schema": {
            k: v for k, v in ImageSearchBody.model_json_schema(ref_template="#/components/schemas/{model}").items()
            if k != "$defs"}},  # SearchFilters, PriceFilter, FusionWeights: components already (POST /search)
    }},
}


@router.post(PATH, response_model=SearchResponse, response_model_exclude_none=True,
             responses={**ERRORS, 404: {"model": ErrorResponse}, 415: {"model": ErrorResponse}},
             openapi_extra=OPENAPI)
async def search_image(request: Request) -> Response:
    """Search by photo: the listings whose fused vectors are nearest the photo's (dense), with
    /search's filters, pages, fields and explain; a `query` beside the photo makes it hybrid."""
    start = time.perf_counter()
    state: ServiceState = request.app.state.svc
    if not state.settings.image_search:
        raise NotFound("photo search is off on this deployment (SERVICE_IMAGE_SEARCH=false)")
    if not state.life.accepting:
        raise NotReady("the service is not ready")
    lv = state.engine.current
    if lv.photo is None:
        raise NotFound(f"photo search: {lv.photo_error}")
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    body = await request.body()  # already read and size-checked by RequestMiddleware
    if media == "multipart/form-data":
        photo = from_multipart(state, request, body, content_type)
    elif media in JSON_TYPES or media.endswith("+json"):
        photo = from_json(state, request, body)
    else:
        raise UnsupportedMediaType(f"content-type: {media[:64] or 'none'}; send multipart/form-data (the photo in a "
                                   f"part named {IMAGE_PART!r}) or application/json ({{\"image\": base64}})")
    for _ in range(2):  # a second time only if a version swap fell between the encode and the search
        vector, version = await encode_photo(state, photo.image, photo.head)
        req = replace(photo.req, vector=vector, vector_version=version)
        answer = await run_search(state, req)
        if answer.index_version == version:
            break
    if not photo.fields.empty:
        answer = await with_fields(state, answer, photo.fields)
    if photo.explain:
        answer = await with_explain(state, answer, req)
    took_ms = round((time.perf_counter() - start) * 1000, 3)  # the photo's decode and encode included
    return json_response(answer.model_copy(update={"took_ms": took_ms, "photo_head": photo.head}))
