"""Issue 18 item 5: SearchClient / AsyncSearchClient against the app (no network) and their retries."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from service.api.app import create_app
from service.client import AsyncSearchClient, SearchClient, SearchError
from service.serving.settings import Settings

OK_BODY = {"results": [{"id": "L1", "score": 0.5, "title": "a mug", "image": None}], "model_version": "m",
           "index_version": "v1", "took_ms": 1.0, "mode": "dense"}


def test_sync_client_against_the_app(client) -> None:
    sc = SearchClient(http=client, retries=0)  # FastAPI's TestClient is an httpx.Client
    page = sc.search("red mug", k=3, fields=["price"], request_id="rid-c1")
    assert page.request_id == "rid-c1" and len(page.results) == 3 and page.index_version
    assert all(h.price is not None for h in page.results)
    lid = page.results[0].id
    rec = sc.listing(lid)
    assert rec.id == lid and rec.images == ([rec.image] if rec.image and len(rec.images) == 1 else rec.images)
    similar = sc.similar(lid, k=4, fields=["category"])
    assert lid not in [h.id for h in similar.results] and all(h.category for h in similar.results)
    batch = sc.search_batch([{"query": "mug"}, {"query": ""}])
    assert [i.status for i in batch.responses] == [200, 422] and batch.responses[1].error == "InvalidRequest"
    with pytest.raises(SearchError) as err:
        sc.listing("NOPE", request_id="rid-404")
    assert err.value.status == 404 and err.value.code == "NotFound" and err.value.request_id == "rid-404"
    with pytest.raises(ValueError):  # validated before sending
        sc.search("mug", colour="red")


def test_async_client_on_the_asgi_app(tiny_build) -> None:
    app = create_app(Settings(artifacts=tiny_build.path.parent.parent, reload_poll_s=0))

    async def main() -> None:
        async with app.router.lifespan_context(app):
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")
            async with AsyncSearchClient(http=http, retries=20, backoff_s=0.05) as ac:
                for _ in range(400):  # ready once the version has loaded
                    if (await http.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                page = await ac.search("gift", k=2, request_id="rid-async")
                assert page.request_id == "rid-async" and len(page.results) == 2
                more = await ac.similar(page.results[0].id, k=2)
                assert page.results[0].id not in [h.id for h in more.results]
                assert (await ac.listing(page.results[0].id)).title == page.results[0].title
            await http.aclose()

    asyncio.run(main())


def fake_transport(statuses: list[tuple[int, dict[str, str]]], seen: list[httpx.Request]) -> httpx.MockTransport:
    """Answers each request with the next (status, headers); 200 answers carry OK_BODY."""
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, headers = statuses[min(len(seen) - 1, len(statuses) - 1)]
        rid = {"x-request-id": request.headers["x-request-id"]}
        if status == 200:
            return httpx.Response(200, json=OK_BODY, headers=rid)
        body = {"error": "Overloaded" if status == 429 else "NotReady", "message": "retry later"}
        return httpx.Response(status, content=json.dumps(body), headers={**headers, **rid})
    return httpx.MockTransport(handler)


def test_retries_429_and_503_honouring_retry_after() -> None:
    seen: list[httpx.Request] = []
    sleeps: list[float] = []
    transport = fake_transport([(429, {"Retry-After": "1"}), (503, {}), (200, {})], seen)
    sc = SearchClient(http=httpx.Client(transport=transport, base_url="http://x"), retries=3, backoff_s=0.25,
                      sleep=sleeps.append)
    page = sc.search("mug")
    assert page.results[0].id == "L1" and len(seen) == 3
    assert sleeps == [1.0, 0.5]  # Retry-After, then the backoff of the second attempt (0.25 * 2)
    assert len({r.headers["x-request-id"] for r in seen}) == 1 and page.request_id == seen[0].headers["x-request-id"]

    seen.clear()
    sleeps.clear()
    sc = SearchClient(http=httpx.Client(transport=fake_transport([(429, {"Retry-After": "90"})], seen),
                                        base_url="http://x"), retries=2, max_backoff_s=3, sleep=sleeps.append)
    with pytest.raises(SearchError) as err:
        sc.search("mug")
    assert err.value.status == 429 and err.value.code == "Overloaded" and len(seen) == 3 and sleeps == [3, 3]


def test_other_errors_are_not_retried_and_async_retries_too() -> None:
    seen: list[httpx.Request] = []
    sc = SearchClient(http=httpx.Client(transport=fake_transport([(422, {})], seen), base_url="http://x"),
                      sleep=lambda s: None)
    with pytest.raises(SearchError) as err:
        sc.search("mug")
    assert err.value.status == 422 and len(seen) == 1

    async def main() -> tuple[list[float], str]:
        seen.clear()
        sleeps: list[float] = []

        async def sleep(s: float) -> None:
            sleeps.append(s)

        http = httpx.AsyncClient(transport=fake_transport([(503, {"Retry-After": "0"}), (200, {})], seen),
                                 base_url="http://x")
        async with AsyncSearchClient(http=http, sleep=sleep) as ac:
            page = await ac.search("mug")
        await http.aclose()
        return sleeps, page.results[0].id

    assert asyncio.run(main()) == ([0.0], "L1") and len(seen) == 2
