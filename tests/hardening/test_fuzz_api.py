"""The HTTP API under hostile input, in process (TestClient, no sockets).

1. Schemathesis generates requests for EVERY operation of the app's own OpenAPI schema, valid ones
   (positive) and ones that break the schema (negative), a bounded and derandomised number per
   operation; every answer must be a non-5xx, match the schema of its status where one is
   documented, carry a request id, and show no traceback or server path.
2. A table of hand-written abuse: malformed JSON, bodies over the limit (declared and chunked),
   unicode / emoji / right-to-left / control characters, extreme k and offset, unknown filter
   fields, wrong content types: each gets its exact expected status.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hardening_helpers import LIMITS, TOKEN, leaks
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from schemathesis import GenerationMode

OPERATIONS = [("POST", "/search"), ("GET", "/search"), ("GET", "/healthz"), ("GET", "/readyz"),
              ("GET", "/metrics"), ("POST", "/admin/reload"), ("POST", "/admin/deny"), ("POST", "/events"),
              ("POST", "/search/batch"), ("GET", "/listings/{listing_id}"), ("GET", "/listings/{listing_id}/similar"),
              ("POST", "/search/image")]
NO_INPUT = {"/healthz", "/readyz", "/metrics"}
# Any string is a valid listing id: a path with only that parameter has no negative input
# (an unknown id is the positive fuzz's 404).
NO_NEGATIVE = NO_INPUT | {"/listings/{listing_id}"}
CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.response_schema_conformance,
          schemathesis.checks.content_type_conformance]
FUZZ = hsettings(max_examples=10, derandomize=True, deadline=None, database=None, print_blob=False,
                 suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def schema(hard_client: TestClient):
    return schemathesis.openapi.from_dict(hard_client.app.openapi())


def send(client: TestClient, case) -> object:
    kw = case.as_transport_kwargs(base_url="http://testserver")  # requests-style keyword arguments
    kw.pop("cookies", None)
    if "data" in kw:
        kw["content"] = kw.pop("data")
    return client.request(**kw)


def roots(client: TestClient) -> tuple[str, ...]:
    import service

    settings = client.app.state.svc.settings
    return (str(settings.artifacts), str(settings.artifacts.parent), str(service.__file__).rsplit("/", 2)[0])


def test_schema_lists_every_operation(schema) -> None:
    ops = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert ops == set(OPERATIONS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_operation(hard_client: TestClient, schema, method: str, path: str, mode: GenerationMode) -> None:
    if mode == GenerationMode.NEGATIVE and path in NO_NEGATIVE:
        pytest.skip("no parameters or body that can be invalid: nothing to break")
    op = schema[path][method]
    strategy = op.as_strategy(generation_mode=mode)
    hidden = roots(hard_client)
    seen: dict[int, int] = {}

    @FUZZ
    @given(case=strategy, authorised=st.booleans())
    def run(case, authorised: bool) -> None:
        if path == "/admin/deny" and authorised:  # a real token too, so the handler itself is fuzzed
            case.headers = {**(case.headers or {}), "authorization": f"Bearer {TOKEN}"}
        try:
            response = send(hard_client, case)
        except (UnicodeEncodeError, ValueError, TypeError):  # the client library refuses to send it
            return
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS)
        assert "x-request-id" in response.headers
        assert not leaks(response.text, hidden), response.text[:500]

    run()
    assert seen and all(code < 500 for code in seen), seen


# ----------------------------------------------------------------------------- hand-written abuse

HOSTILE_QUERIES = {
    "emoji": "🧣 red scarf 🎁",
    "right-to-left": "\u05e9\u05dc\u05d5\u05dd mug \u202e gift",
    "arabic": "\u0643\u0648\u0628 \u0642\u0647\u0648\u0629",
    "cjk": "赤いマグカップ",
    "zero-width": "red\u200bmug\u200d",
    "combining": "e\u0301" * 20,
    "control": "red\x01\x02\x1b[31m mug\x7f",
    "nul": "mug\x00",
    "surrogate-like": "\ufffd\ufffe\uffff",
    "tabs and newlines": "red\t\n\r mug",
    "sql": "'; DROP TABLE listings; --",
    "path": "../../etc/passwd",
    "format": "%s%s%n {0} ${x}",
    "at the limit": "x" * LIMITS["max_query_chars"],
}


@pytest.mark.parametrize("name", list(HOSTILE_QUERIES))
def test_hostile_queries_are_answered(hard_client: TestClient, name: str) -> None:
    q = HOSTILE_QUERIES[name]
    for r in (hard_client.post("/search", json={"query": q, "k": 5}), hard_client.get("/search", params={"q": q})):
        assert r.status_code == 200, (name, r.status_code, r.text)
        assert r.json()["results"], name
        assert r.headers["content-type"] == "application/json"


def test_query_made_only_of_blanks_or_too_long_is_refused(hard_client: TestClient) -> None:
    for q in ("\u3000\u2003 \t", "\n"):
        assert hard_client.post("/search", json={"query": q}).status_code == 422
    too_long = "🧣" * (LIMITS["max_query_chars"] + 1)  # characters, not bytes
    r = hard_client.get("/search", params={"q": too_long})
    assert r.status_code == 422 and "the limit is 64" in r.json()["message"]


def test_invalid_utf8_in_the_url_is_not_a_5xx(hard_client: TestClient) -> None:
    for raw in ("/search?q=%ff%fe", "/search?q=%c3%28mug", "/search?q=mug&k=%00", "/search?q=%", "/search?q=a&&&=&k"):
        r = hard_client.get(raw)
        assert r.status_code in (200, 422), (raw, r.status_code, r.text)


@pytest.mark.parametrize(("k", "offset"), [(0, 0), (-1, 0), (51, 0), (2**31, 0), (2**63, 0), (-(2**63), 0),
                                           (10**100, 0), (1, -1), (1, 101), (1, 2**64), (50, 100)])
def test_extreme_k_and_offset(hard_client: TestClient, k: int, offset: int) -> None:
    ok = 1 <= k <= LIMITS["max_k"] and 0 <= offset <= LIMITS["max_offset"]
    r = hard_client.post("/search", json={"query": "mug", "k": k, "offset": offset})
    assert r.status_code == (200 if ok else 422), r.text
    g = hard_client.get("/search", params={"q": "mug", "k": k, "offset": offset})
    assert g.status_code == (200 if ok else 422), g.text
    if ok:  # past the end of a 120-listing index: an empty page, not an error
        assert len(r.json()["results"]) == max(0, min(k, 120 - offset))


@pytest.mark.parametrize("body", [
    {"query": "mug", "k": 1.5}, {"query": "mug", "k": True}, {"query": "mug", "k": None}, {"query": "mug", "k": "1e3"},
    {"query": "mug", "filters": {"colour": ["red"]}}, {"query": "mug", "filters": {"price": {"avg": 3}}},
    {"query": "mug", "filters": {"category": [1, 2]}}, {"query": "mug", "filters": {"category": "x" * 9 + "\x00"} | {"a": 1}},
    {"query": "mug", "filters": {"attributes": {"color": {"nested": "x"}}}},
    {"query": "mug", "filters": {"attributes": {f"k{i}": "v" for i in range(9)}}},
    {"query": "mug", "filters": {"category": [f"c{i}" for i in range(9)]}},
    {"query": "mug", "filters": {"price": {"min": "NaN"}}}, {"query": "mug", "filters": []},
    {"query": ["mug"]}, {"query": {"text": "mug"}}, {"query": None}, {}, {"Query": "mug"},
])
def test_unknown_or_mistyped_fields_get_422(hard_client: TestClient, body: dict) -> None:
    r = hard_client.post("/search", json=body)
    assert r.status_code == 422, (body, r.status_code, r.text)
    assert r.json()["error"] == "InvalidRequest" and r.json()["message"]


def test_unknown_get_parameters_and_filters(hard_client: TestClient) -> None:
    assert hard_client.get("/search", params={"q": "mug", "filters": "x"}).status_code == 422
    assert hard_client.get("/search", params={"q": "mug", "price_min": "nan"}).status_code == 422
    assert hard_client.get("/search", params={"q": "mug", "price_min": "inf"}).status_code == 422
    assert hard_client.get("/search", params={"q": "mug", "price_min": "-1"}).status_code == 422
    many = [("q", "mug")] + [("category", f"c{i}") for i in range(9)]
    assert hard_client.get("/search", params=many).status_code == 422
    r = hard_client.get("/search", params=[("q", "mug")] + [(f"p{i}", "1") for i in range(2000)])
    assert r.status_code == 422 and len(r.text) < 2000  # the message is bounded, not 2,000 names long


MALFORMED = [b"{not json", b"", b"null", b"[]", b"1", b'"mug"', b'{"query": "mug"', b'{"query": "mug"}}',
             b'{"query": "mug", "k": NaN}', b'{"query": "mug", "k": Infinity}', b"\xff\xfe{}",
             b'{"query": "\\ud800"}', b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
             b'{"query": "mug", "query": "cup"}', b"\x00" * 64]


@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_json_gets_a_4xx(hard_client: TestClient, body: bytes) -> None:
    r = hard_client.post("/search", content=body, headers={"content-type": "application/json"})
    if body == b'{"query": "mug", "query": "cup"}':
        assert r.status_code == 200  # JSON allows it; the last value wins, as in every parser
        return
    assert r.status_code in (413, 422), (body[:40], r.status_code, r.text)
    assert r.json()["message"] and not leaks(r.text, roots(hard_client))


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          "application/xml", "", "application/json; charset=latin-1",
                                          "application/json-patch+json", "application/vnd.api+json"])
def test_wrong_content_types(hard_client: TestClient, content_type: str) -> None:
    body = json.dumps({"query": "mug"}).encode()
    r = hard_client.post("/search", content=body, headers={"content-type": content_type} if content_type else {})
    # FastAPI parses JSON only for a JSON media type (application/json or +json suffix); anything
    # else is a body that is not an object: 422, never a 5xx or a 415 leak of internals
    assert r.status_code in (200, 422), (content_type, r.status_code, r.text)
    if r.status_code == 422:
        assert r.json()["error"] == "InvalidRequest"


def chunks(total: int, size: int = 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_bodies_over_the_limit_get_413(hard_client: TestClient) -> None:
    limit = LIMITS["max_body_bytes"]
    big = json.dumps({"query": "mug", "pad": "x" * limit}).encode()
    r = hard_client.post("/search", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
    # no Content-Length (chunked): counted while reading
    r = hard_client.post("/search", content=chunks(limit + 10), headers={"content-type": "application/json"})
    assert r.status_code == 413
    # a lying or absurd Content-Length
    for length in ("99999999999999999999", "-1", "abc", "1e3"):
        r = hard_client.post("/search", content=b"{}", headers={"content-type": "application/json",
                                                                "content-length": length})
        assert r.status_code == 413, (length, r.status_code)
    # just under the limit still works
    ok = json.dumps({"query": "mug"}).encode() + b" " * (limit - 20)
    assert hard_client.post("/search", content=ok, headers={"content-type": "application/json"}).status_code == 200
    # the admin endpoints share the limit
    ids = [f"id-{i:06d}" for i in range(2000)]
    r = hard_client.post("/admin/deny", json={"ids": ids}, headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 413


def test_methods_and_unknown_paths(hard_client: TestClient) -> None:
    assert hard_client.put("/search", json={"query": "mug"}).status_code == 405
    assert hard_client.delete("/admin/deny").status_code == 405
    assert hard_client.get("/admin/reload").status_code == 405
    for path in ("/search/../admin/reload", "/%2e%2e/etc/passwd", "/docs/../../", "/" + "a" * 10_000):
        r = hard_client.get(path)
        assert r.status_code in (404, 405), (path[:40], r.status_code)


def test_odd_request_ids_are_replaced(hard_client: TestClient) -> None:
    for given_id in ("x" * 129, "a\tb", "\x7f", "\x01"):  # (the client library refuses non-ASCII headers)
        r = hard_client.get("/healthz", headers={"x-request-id": given_id})
        assert r.status_code == 200 and r.headers["x-request-id"] != given_id


def test_lone_surrogates_anywhere_are_not_a_5xx(hard_client: TestClient) -> None:
    """JSON may spell an unpaired surrogate ("\\ud800"), which is not Unicode text: the query is
    refused with a 422 (it used to reach the tokenizer and come back as a 500)."""
    for body, status in ((b'{"query": "\\ud800"}', 422), (b'{"query": "mug \\udfff x"}', 422),
                         (b'{"query": "mug", "filters": {"category": ["\\ud800"]}}', 200),
                         (b'{"query": "mug", "filters": {"attributes": {"\\ud800": "x"}}}', 200)):
        r = hard_client.post("/search", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (body, r.status_code, r.text)


def test_a_full_queue_is_shed_before_routing(hard_client: TestClient, monkeypatch) -> None:
    """Under overload a 429 is answered by the outer middleware (no routing, validation or handler),
    with the batcher's message, Retry-After and the request id; other routes are unaffected."""
    batcher = hard_client.app.state.svc.batcher

    class FullQueue:
        def qsize(self) -> int:
            return 10**6

    monkeypatch.setattr(batcher, "_queue", FullQueue())
    for r in (hard_client.get("/search", params={"q": "mug"}), hard_client.post("/search", json={"query": "mug"}),
              hard_client.post("/search", content=b"{not json", headers={"content-type": "application/json"})):
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and "x-request-id" in r.headers
        assert r.json()["error"] == "Overloaded" and "max_queue" in r.json()["message"]
    assert hard_client.get("/healthz").status_code == 200
    monkeypatch.undo()
    assert hard_client.get("/search", params={"q": "mug"}).status_code == 200
    metrics = hard_client.get("/metrics").text
    assert 'http_requests_total{method="GET",route="/search",status="429"}' in metrics
