"""A Python client of the HTTP API: `SearchClient` (sync) and `AsyncSearchClient` (asyncio), on httpx.

    from service.client import SearchClient
    with SearchClient("http://localhost:8000") as client:
        page = client.search("red ceramic mug", k=5, fields=["price"])
        for hit in page.results:
            print(hit.id, hit.score, hit.title, hit.price)
        by_photo = client.search_image("mug.jpg", k=5)  # POST /search/image (bytes or a path)

Results are the service's own pydantic models (service/api/schemas.py), so a field the server adds is
typed here too. Every call carries an X-Request-ID (given, or a fresh one per call, the same over
its retries) and returns it on the result (`request_id`: what POST /events wants). 429 and 503
(overload, not ready, a reload) and transport errors are retried with exponential backoff
(`backoff_s` doubling up to `max_backoff_s`), waiting what the server's Retry-After says when it
says it; any other error is raised at once as `SearchError` with the service's error code and
message. Needs only httpx and pydantic (`pip install '.[client]'`), not the server's dependencies.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from service.api.schemas import BatchItem, ImageSearchBody, ListingResponse, SearchBody, SearchResponse

RETRY_STATUSES = frozenset({429, 503})
Model = TypeVar("Model", bound=BaseModel)


class SearchResult(SearchResponse):
    """A SearchResponse with the request id it was answered under."""
    request_id: str | None = None


class BatchResult(BaseModel):
    responses: list[BatchItem]
    took_ms: float
    request_id: str | None = None


class Listing(ListingResponse):
    request_id: str | None = None


class SearchError(Exception):
    """A non-2xx answer (after retries, for 429/503): the service's error body and request id."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None):
        super().__init__(f"{status} {code}: {message} (request id {request_id})")
        self.status, self.code, self.message, self.request_id = status, code, message, request_id


def search_body(query: str | None, k: int, offset: int, **options: Any) -> dict[str, Any]:
    """A POST /search body, validated here first (an unknown option fails before any request)."""
    body = SearchBody.model_validate({"query": query, "k": k, "offset": offset,
                                      **{n: v for n, v in options.items() if v is not None}})
    return body.model_dump(exclude_none=True)


Photo = bytes | str | os.PathLike[str]


def photo_request(image: Photo, k: int, offset: int, as_json: bool, filename: str | None,
                  **options: Any) -> dict[str, Any]:
    """httpx keyword arguments of a POST /search/image: the photo (bytes, or a file path read here)
    as multipart/form-data with the options in the query string (default), or as a JSON body with
    the photo base64 (`as_json`). Options are validated against the JSON body's schema first."""
    if isinstance(image, bytes | bytearray):
        data, name = bytes(image), filename or "photo"
    else:
        data, name = Path(image).read_bytes(), filename or Path(image).name
    given = {n: v for n, v in options.items() if v is not None}
    encoded = base64.b64encode(data).decode("ascii") if as_json else ""  # multipart: the bytes as they are
    body = ImageSearchBody.model_validate({"image": encoded, "k": k, "offset": offset, **given})
    if as_json:
        return {"json": body.model_dump(exclude_none=True)}
    params: dict[str, Any] = {"k": body.k, "offset": body.offset}
    if body.query is not None:
        params["q"] = body.query
    for n in ("head", "mode", "fusion", "rrf_k"):
        if getattr(body, n) is not None:
            params[n] = getattr(body, n)
    if body.weights is not None:
        params.update({f"{n}_weight": v for n in ("dense", "lexical") if (v := getattr(body.weights, n)) is not None})
    if body.explain:
        params["explain"] = "true"
    f = body.filters
    params.update(similar_params(body.k, body.offset, f and f.category, f and f.price and f.price.min,
                                 f and f.price and f.price.max, f and f.attributes, body.fields))
    return {"params": params, "files": {"image": (name, data, "application/octet-stream")}}


def similar_params(k: int, offset: int, category: Sequence[str] | None, price_min: float | None,
                   price_max: float | None, attributes: Mapping[str, str | Sequence[str]] | None,
                   fields: Sequence[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {"k": k, "offset": offset}
    if category:
        params["category"] = list(category)
    if price_min is not None:
        params["price_min"] = price_min
    if price_max is not None:
        params["price_max"] = price_max
    for key, value in (attributes or {}).items():
        params[f"attr.{key}"] = value if isinstance(value, str) else ",".join(value)
    if fields:
        params["fields"] = ",".join(fields)
    return params


class _Calls:
    """What both clients share: request building, the retry policy, response parsing."""

    def __init__(self, retries: int, backoff_s: float, max_backoff_s: float):
        if retries < 0 or backoff_s < 0 or max_backoff_s < 0:
            raise ValueError(f"client: need retries, backoff_s, max_backoff_s >= 0; got {retries}, {backoff_s}, "
                             f"{max_backoff_s}")
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds before retry `attempt` (0-based): the server's Retry-After (seconds), else backoff."""
        if response is not None:
            after = response.headers.get("retry-after", "")
            try:
                return min(max(float(after), 0.0), self.max_backoff_s)
            except ValueError:
                pass  # absent, or an HTTP date: our own backoff
        return min(self.backoff_s * 2 ** attempt, self.max_backoff_s)

    def retry(self, attempt: int, response: httpx.Response | None) -> bool:
        return attempt < self.retries and (response is None or response.status_code in RETRY_STATUSES)

    @staticmethod
    def parse(response: httpx.Response, model: type[Model]) -> Model:
        rid = response.headers.get("x-request-id")
        if response.status_code >= 400:
            try:
                body = response.json()
                code, message = str(body["error"]), str(body["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "HttpError", response.text[:200]
            raise SearchError(response.status_code, code, message, rid)
        return model.model_validate({**response.json(), "request_id": rid})

    @staticmethod
    def headers(request_id: str | None) -> dict[str, str]:
        return {"X-Request-ID": request_id or uuid.uuid4().hex}


class SearchClient(_Calls):
    """Blocking client. `http` may be any httpx.Client (e.g. FastAPI's TestClient, whose base URL is used)."""

    def __init__(self, base_url: str = "http://localhost:8000", *, timeout: float = 5.0, retries: int = 3,
                 backoff_s: float = 0.1, max_backoff_s: float = 5.0, headers: Mapping[str, str] | None = None,
                 http: httpx.Client | None = None, sleep: Callable[[float], None] = time.sleep):
        super().__init__(retries, backoff_s, max_backoff_s)
        self._own = http is None
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout, headers=dict(headers or {}))
        self._sleep = sleep

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.http.close()

    def _send(self, method: str, url: str, model: type[Model], request_id: str | None, **kw: Any) -> Model:
        headers = self.headers(request_id)
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self.http.request(method, url, headers=headers, **kw)
            except httpx.TransportError:
                if not self.retry(attempt, None):
                    raise
            if response is not None and not self.retry(attempt, response):
                return self.parse(response, model)
            self._sleep(self.delay(attempt, response))
            attempt += 1

    def search(self, query: str | None = None, *, k: int = 10, offset: int = 0, request_id: str | None = None,
               **options: Any) -> SearchResult:
        """POST /search; options: filters, mode, fusion, rrf_k, weights, like_id, fields."""
        return self._send("POST", "/search", SearchResult, request_id, json=search_body(query, k, offset, **options))

    def search_batch(self, searches: Sequence[Mapping[str, Any]], *, request_id: str | None = None) -> BatchResult:
        """POST /search/batch: each item a POST /search body; each answer has its own status."""
        return self._send("POST", "/search/batch", BatchResult, request_id, json={"searches": list(searches)})

    def listing(self, listing_id: str, *, request_id: str | None = None) -> Listing:
        return self._send("GET", f"/listings/{quote(listing_id, safe='')}", Listing, request_id)

    def search_image(self, image: Photo, *, k: int = 10, offset: int = 0, as_json: bool = False,
                     filename: str | None = None, request_id: str | None = None, **options: Any) -> SearchResult:
        """POST /search/image: the photo (bytes or a path) as multipart/form-data, or base64 JSON
        with `as_json=True`; options: head, query, filters, fields, mode, fusion, rrf_k, weights, explain."""
        return self._send("POST", "/search/image", SearchResult, request_id,
                          **photo_request(image, k, offset, as_json, filename, **options))

    def similar(self, listing_id: str, *, k: int = 10, offset: int = 0, category: Sequence[str] | None = None,
                price_min: float | None = None, price_max: float | None = None,
                attributes: Mapping[str, str | Sequence[str]] | None = None, fields: Sequence[str] | None = None,
                request_id: str | None = None) -> SearchResult:
        params = similar_params(k, offset, category, price_min, price_max, attributes, fields)
        return self._send("GET", f"/listings/{quote(listing_id, safe='')}/similar", SearchResult, request_id, params=params)


class AsyncSearchClient(_Calls):
    """The same calls for asyncio. `http` may be any httpx.AsyncClient (e.g. on httpx.ASGITransport)."""

    def __init__(self, base_url: str = "http://localhost:8000", *, timeout: float = 5.0, retries: int = 3,
                 backoff_s: float = 0.1, max_backoff_s: float = 5.0, headers: Mapping[str, str] | None = None,
                 http: httpx.AsyncClient | None = None, sleep: Callable[[float], Any] = asyncio.sleep):
        super().__init__(retries, backoff_s, max_backoff_s)
        self._own = http is None
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=dict(headers or {}))
        self._sleep = sleep

    async def __aenter__(self) -> AsyncSearchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def _send(self, method: str, url: str, model: type[Model], request_id: str | None, **kw: Any) -> Model:
        headers = self.headers(request_id)
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = await self.http.request(method, url, headers=headers, **kw)
            except httpx.TransportError:
                if not self.retry(attempt, None):
                    raise
            if response is not None and not self.retry(attempt, response):
                return self.parse(response, model)
            await self._sleep(self.delay(attempt, response))
            attempt += 1

    async def search(self, query: str | None = None, *, k: int = 10, offset: int = 0, request_id: str | None = None,
                     **options: Any) -> SearchResult:
        return await self._send("POST", "/search", SearchResult, request_id,
                                json=search_body(query, k, offset, **options))

    async def search_batch(self, searches: Sequence[Mapping[str, Any]], *,
                           request_id: str | None = None) -> BatchResult:
        return await self._send("POST", "/search/batch", BatchResult, request_id, json={"searches": list(searches)})

    async def listing(self, listing_id: str, *, request_id: str | None = None) -> Listing:
        return await self._send("GET", f"/listings/{quote(listing_id, safe='')}", Listing, request_id)

    async def search_image(self, image: Photo, *, k: int = 10, offset: int = 0, as_json: bool = False,
                           filename: str | None = None, request_id: str | None = None,
                           **options: Any) -> SearchResult:
        """POST /search/image, as SearchClient.search_image (a path is read here, before sending)."""
        return await self._send("POST", "/search/image", SearchResult, request_id,
                                **photo_request(image, k, offset, as_json, filename, **options))

    async def similar(self, listing_id: str, *, k: int = 10, offset: int = 0, category: Sequence[str] | None = None,
                      price_min: float | None = None, price_max: float | None = None,
                      attributes: Mapping[str, str | Sequence[str]] | None = None,
                      fields: Sequence[str] | None = None, request_id: str | None = None) -> SearchResult:
        params = similar_params(k, offset, category, price_min, price_max, attributes, fields)
        return await self._send("GET", f"/listings/{quote(listing_id, safe='')}/similar", SearchResult, request_id, params=params)
