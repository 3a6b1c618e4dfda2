"""Issue 18 item 3: search by photo, POST /search/image (service/api/photo.py, model/runtime/image_query.py).

On the tiny trained build (2 epochs of `ft` over 120 generated listings with synthetic photos):
multipart and base64 JSON give the same answer; the answer is the exact dense ranking of the
photo's vector (the same search path as /search); a listing's own primary photo finds it; the
limits (bytes, pixels, formats), errors, filters, pages, deny-list, fields, explain, metrics,
OpenAPI, the Python client, no file written, the encoder off the event loop, and device choice.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import wait_ready
from PIL import Image

from index.store.listings import ListingStore
from model.runtime.image_query import HEADS, PhotoEncoder, image_backend, probe_png
from service.api.app import create_app
from service.api.photo import decode_base64, parse_multipart
from service.client import AsyncSearchClient, SearchClient, SearchError
from service.serving.settings import Settings

ROUTE = "/search/image"


def catalog(tiny_sample: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (tiny_sample / "catalog.jsonl").read_text().splitlines() if line.strip()]
    return {r["id"]: r for r in rows}


def photo_of(tiny_sample: Path, listing_id: str) -> bytes:
    return (tiny_sample / catalog(tiny_sample)[listing_id]["images"][0]).read_bytes()


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def post_file(client: TestClient, data: bytes, params: dict | None = None, **kw) -> httpx.Response:
    return client.post(ROUTE, files={"image": ("photo.jpg", data, "image/jpeg")}, params=params, **kw)


def post_json(client: TestClient, data: bytes, **body) -> httpx.Response:
    return client.post(ROUTE, json={"image": base64.b64encode(data).decode(), **body})


def ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"]]


@pytest.fixture(scope="module")
def encoder(tiny_build) -> PhotoEncoder:
    manifest = json.loads((tiny_build.path / "manifest.json").read_text())
    return PhotoEncoder(tiny_build.path / "model.safetensors", "cpu",
                        expect_backbone=manifest["image_backbone_digest"])


def exact_ranking(tiny_build, vector: np.ndarray) -> list[str]:
    """The naive reference: exact inner products of the photo's vector with every stored vector."""
    vectors = np.load(tiny_build.path / "vectors.npy").astype(np.float32)  # (n, d)
    order = np.argsort(-(vectors @ vector), kind="stable")
    listing_ids = ListingStore(tiny_build.path / "listings.sqlite").ids()
    return [listing_ids[r] for r in order]


# ----------------------------------------------------------------------------------- the answer

def test_multipart_and_base64_json_give_the_same_hits(client, tiny_sample: Path) -> None:
    data = photo_of(tiny_sample, "L000004")
    a = post_file(client, data, {"k": 8}, headers={"X-Request-ID": "rid-photo"})
    b = post_json(client, data, k=8)
    assert ids(a) == ids(b) and len(ids(a)) == 8
    assert [h["score"] for h in a.json()["results"]] == [h["score"] for h in b.json()["results"]]
    assert a.headers["x-request-id"] == "rid-photo"
    body = a.json()
    assert body["mode"] == "dense" and body["photo_head"] in HEADS and body["took_ms"] > 0
    assert set(body["results"][0]) == {"id", "score", "title", "image"}
    # a data: URL, line-wrapped base64 and the URL-safe alphabet are the same photo
    enc = base64.b64encode(data).decode()
    wrapped = "\n".join(enc[i:i + 76] for i in range(0, len(enc), 76))
    for image in (f"data:image/jpeg;base64,{enc}", wrapped, base64.urlsafe_b64encode(data).decode().rstrip("=")):
        assert ids(client.post(ROUTE, json={"image": image, "k": 8})) == ids(a)
    # options as text parts of the form are the query string's
    form = client.post(ROUTE, files={"image": ("p.jpg", data)}, data={"k": "8"})
    assert ids(form) == ids(a)


@pytest.mark.parametrize("head", list(HEADS))
def test_the_answer_is_the_exact_dense_ranking_of_the_photos_vector(client, tiny_build, tiny_sample: Path,
                                                                    encoder: PhotoEncoder, head: str) -> None:
    data = photo_of(tiny_sample, "L000010")
    vector = encoder.encode([data], [head])[0]
    assert vector.shape == (encoder.dim,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    r = post_file(client, data, {"k": 12, "head": head})
    assert r.json()["photo_head"] == head
    assert ids(r) == exact_ranking(tiny_build, vector)[:12]
    stored = np.load(tiny_build.path / "vectors.npy").astype(np.float32)
    records = ListingStore(tiny_build.path / "listings.sqlite").by_ids(ids(r))
    rows = [records[i].row for i in ids(r)]
    np.testing.assert_allclose([h["score"] for h in r.json()["results"]], stored[rows] @ vector, atol=1e-5)


def test_a_listings_primary_photo_finds_it(client, tiny_sample: Path) -> None:
    """Every listing's primary photo as the query through the primary-photo head: the listing
    itself in the top 10 for at least 90% of them, first for at least 60% (chance: 10/120 and
    1/120; measured on this build: 100% and 87%)."""
    cat = catalog(tiny_sample)
    ranks = []
    for lid, row in cat.items():
        got = ids(post_file(client, (tiny_sample / row["images"][0]).read_bytes(), {"k": 10, "head": "primary"}))
        ranks.append(got.index(lid) if lid in got else 10)
    ranks = np.array(ranks)
    assert (ranks < 10).mean() >= 0.9, np.bincount(ranks)
    assert (ranks == 0).mean() >= 0.6, np.bincount(ranks)


# ----------------------------------------------------------------------------------- errors

@pytest.mark.parametrize(
    ("send", "status", "fragment"),
    [
        (lambda c: post_file(c, b"definitely not a photo"), 422, "not an image"),
        (lambda c: post_file(c, png(40, 40)[:60]), 422, "truncated or corrupt"),
        (lambda c: post_file(c, b""), 422, "image: empty"),
        (lambda c: c.post(ROUTE, json={"image": "not base64!!"}), 422, "not valid base64"),
        (lambda c: c.post(ROUTE, json={"image": "data:image/png,abc"}), 422, "must be base64"),
        (lambda c: c.post(ROUTE, json={"k": 3}), 422, "image: Field required"),
        (lambda c: c.post(ROUTE, json={"image": "eA==", "like_id": "L1"}), 422, "like_id"),
        (lambda c: c.post(ROUTE, files={"photo": ("p.png", png(8, 8))}), 422, "the photo goes in the part named"),
        (lambda c: c.post(ROUTE, data={"k": "3"}, files={}), 415, "multipart/form-data"),
        (lambda c: c.post(ROUTE, files=[("image", ("a.png", png(8, 8))), ("image", ("b.png", png(8, 8)))]), 422,
         "more than one photo"),
        (lambda c: post_file(c, png(8, 8), {"k": 0}), 422, "k: 0 is outside 1..50"),
        (lambda c: post_file(c, png(8, 8), {"colour": "red"}), 422, "unknown query parameter(s): colour"),
        (lambda c: post_file(c, png(8, 8), {"mode": "lexical"}), 422, "needs a query text"),
        (lambda c: post_file(c, png(8, 8), {"q": "mug", "mode": "dense"}), 422, "ignore one of them"),
        (lambda c: post_file(c, png(8, 8), {"fields": "colour"}), 422, "fields: unknown field 'colour'"),
        (lambda c: post_file(c, png(8, 8), {"head": "side"}), 422, "head"),
        (lambda c: c.post(ROUTE, files={"image": ("p.png", png(8, 8))}, params={"k": 3}, data={"k": "4"}), 422,
         "both in the query string and in the form"),
        (lambda c: c.post(ROUTE, json={"image": "eA=="}, params={"k": 3}), 422, "with a JSON body"),
        (lambda c: c.post(ROUTE, content=png(8, 8), headers={"content-type": "image/png"}), 415,
         "multipart/form-data"),
        (lambda c: c.post(ROUTE, content=b"--x\r\nno headers", headers={"content-type": "multipart/form-data; "
                                                                                      "boundary=x"}), 422,
         "not a complete multipart"),
        (lambda c: c.post(ROUTE, content=b"--x--", headers={"content-type": "multipart/form-data"}), 422,
         "boundary"),
    ],
)
def test_bad_photo_requests(client, send, status: int, fragment: str) -> None:
    r = send(client)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "message"} and fragment in r.json()["message"], r.json()
    assert "x-request-id" in r.headers


def test_formats_outside_the_allow_list_are_refused(client) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "blue").save(buf, format="TIFF")
    r = post_file(client, buf.getvalue())
    assert r.status_code == 422 and "accepted formats JPEG, PNG, WEBP, GIF, BMP" in r.json()["message"]
    for fmt in ("WEBP", "GIF", "BMP"):  # the others decode
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), "blue").save(buf, format=fmt)
        assert post_file(client, buf.getvalue()).status_code == 200, fmt


@pytest.fixture(scope="module")
def small_limits(tiny_build) -> TestClient:
    settings = Settings(artifacts=tiny_build.path.parent.parent, reload_poll_s=0, max_image_bytes=4096,
                        max_image_pixels=250_000, max_body_bytes=1024)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def test_too_many_bytes_or_pixels_is_413(small_limits: TestClient) -> None:
    c = small_limits
    rng = np.random.default_rng(0)
    side = 36
    while True:  # the smallest noise PNG over max_image_bytes: under the route's body limit, base64 included
        noisy = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(noisy, format="PNG")
        if len(big := noisy.getvalue()) > 4096:
            break
        side += 1
    assert len(base64.b64encode(big)) + 100 < 4 * 4096 // 3 + 1024
    r = post_file(c, big)
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
    assert f"{len(big)} bytes, the limit is 4096 (max_image_bytes)" in r.json()["message"]
    assert post_json(c, big).status_code == 413
    huge = post_file(c, big * 3)  # over the body limit itself: refused before any parsing
    assert huge.status_code == 413 and "request body over" in huge.json()["message"]
    # pixels: a 700 x 700 PNG of one colour is a few kB, and 490,000 pixels > 250,000
    flat = png(700, 700)
    assert len(flat) < 4096
    r = post_file(c, flat)
    assert r.status_code == 413 and "490000 pixels exceeds max_pixels=250000" in r.json()["message"], r.text
    assert post_file(c, png(400, 400)).status_code == 200  # 160,000 pixels: fine
    assert c.post("/search", json={"query": "x" * 2000}).status_code == 413  # /search keeps its own limit


# ----------------------------------------------------------------------------------- the search path

def test_filters_pages_and_fields_apply(client, tiny_sample: Path) -> None:
    cat = catalog(tiny_sample)
    data = photo_of(tiny_sample, "L000004")
    category = cat["L000004"]["category"]
    r = post_file(client, data, {"k": 5, "category": category, "fields": "category,price", "head": "primary"})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert hits and all(h["category"] == category for h in hits) and hits[0]["id"] == "L000004"
    assert all(h["price"] == pytest.approx(cat[h["id"]]["price"]) for h in hits)
    cheap = post_json(client, data, k=20, filters={"price": {"max": 30}}, fields=["price"]).json()["results"]
    assert cheap and all(h["price"] <= 30 for h in cheap)
    whole = ids(post_file(client, data, {"k": 12}))
    p1, p2 = ids(post_file(client, data, {"k": 6})), ids(post_json(client, data, k=6, offset=6))
    assert p1 + p2 == whole


def test_explain_and_a_query_beside_the_photo(client, tiny_sample: Path) -> None:
    data = photo_of(tiny_sample, "L000004")
    r = post_file(client, data, {"k": 3, "explain": "1"})
    assert r.status_code == 200, r.text
    for h in r.json()["results"]:
        e = h["explain"]
        assert e["dense_cosine"] == pytest.approx(h["score"], abs=1e-6) and e["fused"] == pytest.approx(h["score"])
        assert e["lexical_bm25"] is None and e["dense_rank"] is not None
        assert e["views"] and any(v["view"] == "image" for v in e["views"])
    hybrid = post_json(client, data, k=5, query="earrings", explain=True)
    assert hybrid.status_code == 200, hybrid.text
    assert hybrid.json()["mode"] == "hybrid"
    assert all(h["explain"]["fused"] == pytest.approx(h["score"]) for h in hybrid.json()["results"])


def test_denied_listings_never_come_back(artifacts_copy: Path, tiny_sample: Path) -> None:
    settings = Settings(artifacts=artifacts_copy, reload_poll_s=0, denylist_poll_s=0, admin_token="t")
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        data = photo_of(tiny_sample, "L000004")
        before = ids(post_file(c, data, {"k": 10, "head": "primary"}))
        assert before[0] == "L000004"
        r = c.post("/admin/deny", json={"ids": ["L000004"]}, headers={"Authorization": "Bearer t"})
        assert r.status_code == 200, r.text
        after = ids(post_file(c, data, {"k": 9, "head": "primary"}))
        assert after == before[1:10]


def test_metrics_per_route_and_stage(client, tiny_sample: Path) -> None:
    post_file(client, photo_of(tiny_sample, "L000001"))
    post_file(client, b"nope")
    text = client.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/search/image",status="200"}' in text
    assert 'http_requests_total{method="POST",route="/search/image",status="422"}' in text
    assert 'search_stage_seconds_count{stage="photo_encode"}' in text
    assert 'search_stage_seconds_count{stage="photo_queue_wait"}' in text


def test_readyz_and_the_openapi_schema(client) -> None:
    ready = client.get("/readyz").json()["photo_search"]
    assert ready == {"available": True, "runtime": ready["runtime"], "default_head": "primary"}
    assert ready["runtime"] in ("cpu/onnx", "cpu/torch")  # on the query encoder's device: the CPU here
    spec = client.get("/openapi.json").json()
    op = spec["paths"][ROUTE]["post"]
    content = op["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    assert content["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert {"image", "head", "query", "filters", "k"} <= set(content["application/json"]["schema"]["properties"])
    assert {"k", "offset", "category", "head", "q", "fields"} <= {p["name"] for p in op["parameters"]}
    assert {"200", "413", "415", "422", "429", "503"} <= set(op["responses"])
    refs = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            refs.update(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(op)
    assert refs and all(r.removeprefix("#/components/schemas/") in spec["components"]["schemas"] for r in refs)


# ----------------------------------------------------------------------------------- the client

def test_sync_client(client, tiny_sample: Path, tmp_path: Path) -> None:
    sc = SearchClient(http=client, retries=0)
    data = photo_of(tiny_sample, "L000004")
    category = catalog(tiny_sample)["L000004"]["category"]
    page = sc.search_image(data, k=4, request_id="rid-sc", filters={"category": [category]}, fields=["category"],
                           head="primary")
    assert page.request_id == "rid-sc" and page.results[0].id == "L000004" and page.mode == "dense"
    assert all(h.category == category for h in page.results)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    as_json = sc.search_image(str(path), k=4, as_json=True, filters={"category": [category]}, head="primary")
    assert [h.id for h in as_json.results] == [h.id for h in page.results]
    with pytest.raises(SearchError) as err:
        sc.search_image(b"nope")
    assert err.value.status == 422 and err.value.code == "InvalidRequest"
    with pytest.raises(ValueError):  # validated before sending
        sc.search_image(data, colour="red")


def test_async_client_on_the_asgi_app(tiny_build, tiny_sample: Path) -> None:
    app = create_app(Settings(artifacts=tiny_build.path.parent.parent, reload_poll_s=0))
    data = photo_of(tiny_sample, "L000004")

    async def main() -> None:
        async with app.router.lifespan_context(app):
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")
            async with AsyncSearchClient(http=http, retries=20, backoff_s=0.05) as ac:
                for _ in range(400):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                a, b = await asyncio.gather(ac.search_image(data, k=3, head="primary"),
                                            ac.search_image(data, k=3, head="primary", as_json=True))
                assert [h.id for h in a.results] == [h.id for h in b.results] and a.photo_head == "primary"
            await http.aclose()

    asyncio.run(main())


# ----------------------------------------------------------------------------------- machinery

def test_no_file_is_written_while_a_photo_is_searched(client, tiny_sample: Path) -> None:
    """An audit hook sees every open() of the process (builtins, io, os, pathlib, tempfile): none
    for writing, none of a new file, while photos are searched both ways."""
    data = photo_of(tiny_sample, "L000007")
    noise = np.random.default_rng(1).integers(0, 255, (1000, 1200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=95)
    big = buf.getvalue()
    assert len(big) > 1 << 20  # over Starlette's 1 MB spool threshold
    post_file(client, data)  # anything lazily created on a first call is created now
    seen: list[tuple] = []
    active = threading.Event()

    def hook(event: str, args: tuple) -> None:
        if active.is_set() and event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writing = (isinstance(mode, str) and any(ch in mode for ch in "wax+")) or (
                isinstance(flags, int) and flags & (0o1 | 0o2 | 0o100))  # O_WRONLY | O_RDWR | O_CREAT
            if writing:
                seen.append((path, mode, flags))
        elif active.is_set() and event in ("tempfile.mkstemp", "tempfile.mkdtemp", "os.mkdir", "os.rename"):
            seen.append((event, args))

    sys.addaudithook(hook)  # cannot be removed; inert unless `active`
    active.set()
    try:
        assert post_file(client, big).status_code == 200  # Starlette's form parser would spool this to a file
        assert post_json(client, big).status_code == 200
        assert post_file(client, data).status_code == 200
    finally:
        active.clear()
    assert not seen, seen


def test_the_cnn_runs_in_the_photo_worker_not_on_the_event_loop(client, tiny_sample: Path, monkeypatch) -> None:
    lv = client.app.state.svc.engine.current
    threads: list[str] = []
    real = lv.photo.encode

    def spy(images, heads):
        threads.append(threading.current_thread().name)
        return real(images, heads)

    monkeypatch.setattr(lv.photo, "encode", spy)
    assert post_file(client, photo_of(tiny_sample, "L000002")).status_code == 200
    assert threads and threads[0] != threading.main_thread().name
    assert all(name.startswith("search") for name in threads)  # the photo batcher's worker thread


def test_photo_search_off_or_unavailable(tiny_build, tiny_sample: Path, tmp_path: Path, monkeypatch) -> None:
    off = Settings(artifacts=tiny_build.path.parent.parent, reload_poll_s=0, image_search=False)
    with TestClient(create_app(off)) as c:
        wait_ready(c)
        r = post_file(c, photo_of(tiny_sample, "L000001"))
        assert r.status_code == 404 and "SERVICE_IMAGE_SEARCH" in r.json()["message"]
        assert c.get("/readyz").json()["photo_search"]["available"] is False
        assert c.get("/search", params={"q": "gift"}).status_code == 200
    # a version whose manifest names no image backbone (built without photos): text search only
    import service.serving.engine as engine

    real = engine.load_photo
    monkeypatch.setattr(engine, "load_photo", lambda s, f, m, d: real(s, f, {**m, "image_backbone_digest": None}, d))
    with TestClient(create_app(Settings(artifacts=tiny_build.path.parent.parent, reload_poll_s=0))) as c:
        wait_ready(c)
        r = post_file(c, photo_of(tiny_sample, "L000001"))
        assert r.status_code == 404 and "built without photos" in r.json()["message"]
        assert c.get("/readyz").json()["photo_search"] == {"available": False,
                                                          "reason": "this version was built without photos"}


def test_a_different_backbone_is_refused(tiny_build) -> None:
    from model.runtime.image_query import PhotoUnavailable

    with pytest.raises(PhotoUnavailable, match="featurised with backbone"):
        PhotoEncoder(tiny_build.path / "model.safetensors", "cpu", expect_backbone="0" * 64)


def test_the_photo_encoder_runs_on_the_query_encoders_device(tiny_build, monkeypatch) -> None:
    import service.serving.engine as engine

    assert image_backend(torch.device("cuda"), "auto") == "torch"  # fp16 torch on a GPU, never ONNX
    assert image_backend(torch.device("cpu"), "auto") == "auto"
    with pytest.raises(ValueError):
        image_backend(torch.device("cpu"), "tensorrt")
    seen = {}

    class Recorder:
        def __init__(self, weights, device, **kw):
            seen.update(weights=weights, device=device, **kw)

    monkeypatch.setattr(engine, "PhotoEncoder", Recorder)
    manifest = json.loads((tiny_build.path / "manifest.json").read_text())
    settings = Settings(artifacts=tiny_build.path.parent.parent, image_max_batch=4, max_image_pixels=1000)
    photo, why = engine.load_photo(settings, tiny_build.path, manifest, torch.device("cuda:1"))
    assert why is None and seen["device"] == torch.device("cuda:1")  # whatever the query encoder got
    assert seen["batch_size"] == 4 and seen["max_pixels"] == 1000
    assert seen["expect_backbone"] == manifest["image_backbone_digest"]


def test_a_vector_from_another_space_never_fails_the_batch(client) -> None:
    """A photo vector made by another version's heads (a swap in between: another dim) shares a batch
    with a text search: the text search is answered as alone; the photo gets the version to retry on."""
    from service.serving.engine import SearchRequest

    engine = client.app.state.svc.engine
    alone = engine.search_batch([SearchRequest("gift", 5)])
    mixed = engine.search_batch([SearchRequest("gift", 5), SearchRequest("", 5, mode="dense",
                                                                         vector=np.ones(7, np.float32))])
    assert [h.id for h in mixed.hits[0]] == [h.id for h in alone.hits[0]]
    assert mixed.index_version == engine.current.version


def test_parsers_in_memory() -> None:
    body = (b"--B\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n5\r\n"
            b"--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a b.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n\x00\r\n--\xff\r\n--B--\r\n")
    image, fields = parse_multipart(body, 'multipart/form-data; boundary="B"')
    assert image == b"\x00\r\n--\xff" and fields == [("k", "5")]
    assert decode_base64(base64.b64encode(b"\x00\xffab").decode()) == b"\x00\xffab"
    assert probe_png() == probe_png() and Image.open(io.BytesIO(probe_png())).size == (64, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_photo_encoder_matches_the_cpu_one(tiny_build, tiny_sample: Path) -> None:
    manifest = json.loads((tiny_build.path / "manifest.json").read_text())
    weights, digest = tiny_build.path / "model.safetensors", manifest["image_backbone_digest"]
    cpu = PhotoEncoder(weights, "cpu", expect_backbone=digest)
    gpu = PhotoEncoder(weights, "cuda", expect_backbone=digest)
    assert gpu.describe == "cuda/torch"
    photos = [(tiny_sample / r["images"][0]).read_bytes() for r in list(catalog(tiny_sample).values())[:32]]
    for head in HEADS:
        a = np.stack(cpu.encode(photos, [head] * len(photos)))
        b = np.stack(gpu.encode(photos, [head] * len(photos)))  # fp16 backbone
        assert float((a * b).sum(1).min()) >= 0.995
