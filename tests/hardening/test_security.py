"""Who gets in and what leaks out: the admin token (constant-time compare, off when unset), no
pickle anywhere (weights are safetensors or `torch.load(weights_only=True)`; a malicious pickle
in their place runs nothing), image paths that cannot leave their roots, no traceback or server
path in any response, CORS closed unless configured."""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hardening_helpers import TOKEN, leaks
from helpers import ROOT, wait_ready

from service.api.app import create_app
from service.serving.settings import Settings

MARKER = "pwned-by-pickle"


class Exploit:
    """A pickle that, if ever unpickled, writes a marker file (what an attacker's payload would run)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, MARKER))


# ----------------------------------------------------------------------------------- admin token

def test_admin_is_off_without_a_token(tiny_build) -> None:
    settings = Settings(artifacts=tiny_build.path.parent.parent, reload_poll_s=0, denylist_poll_s=0,
                        encoder_backend="torch", warmup_queries=1)
    with TestClient(create_app(settings)) as c:
        for path, body in (("/admin/reload", {"version": "v1"}), ("/admin/deny", {"ids": ["x"]})):
            for auth in (None, "Bearer ", "Bearer anything", f"Bearer {TOKEN}"):
                r = c.post(path, json=body, headers={"authorization": auth} if auth else {})
                assert r.status_code == 404, (path, auth, r.status_code)


@pytest.mark.parametrize("auth", [None, "", "Bearer", "Bearer ", f"bearer {TOKEN}", f"Basic {TOKEN}", TOKEN,
                                  f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Bearer  {TOKEN}x",
                                  f"Bearer {TOKEN.upper()}", "Bearer \u00e9"])
def test_admin_needs_the_exact_token(hard_client: TestClient, auth: str | None) -> None:
    headers = {"authorization": auth.encode()} if auth is not None else {}
    r = hard_client.post("/admin/deny", json={"ids": ["nobody"]}, headers=headers)
    assert r.status_code == 401, (auth, r.status_code, r.text)
    assert TOKEN not in r.text


def test_admin_auth_runs_before_the_body_is_read(hard_client: TestClient) -> None:
    """The admin-auth dependency answers first: without the token a malformed body is a 401, not a
    422 that would describe the route's body; with it, the same body is the 422."""
    for body in ({"ids": "not-a-list"}, {"unknown": 1}, None):
        r = hard_client.post("/admin/deny", json=body)
        assert r.status_code == 401 and r.json()["error"] == "Unauthorized", (body, r.status_code, r.text)
        ok = hard_client.post("/admin/deny", json=body, headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 422, (body, ok.status_code, ok.text)


def test_admin_token_is_compared_in_constant_time(hard_client: TestClient, monkeypatch) -> None:
    import hmac

    from service.api import admin

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admin.hmac, "compare_digest", spy)
    assert hard_client.post("/admin/deny", json={"ids": ["nobody"]},
                            headers={"authorization": "Bearer guess"}).status_code == 401
    ok = hard_client.post("/admin/deny", json={"ids": ["nobody"], "remove": True},
                          headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert calls == [(b"guess", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


# --------------------------------------------------------------------------------------- pickle

UNSAFE = [
    (re.compile(r"^\s*(import pickle|from pickle|import cPickle|import dill|import joblib)", re.M), "a pickle module"),
    (re.compile(r"pickle\.loads?\("), "pickle.load"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
    (re.compile(r"weights_only\s*=\s*False"), "torch.load(weights_only=False)"),
]


def test_no_pickle_in_the_code() -> None:
    found = []
    for folder in ("model", "index", "service", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            found += [f"{path.relative_to(ROOT)}: {what}" for rx, what in UNSAFE if rx.search(text)]
            for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
                if "weights_only=True" not in call.group(1):
                    found.append(f"{path.relative_to(ROOT)}: torch.load without weights_only=True")
    assert not found, found


def test_artifacts_hold_no_pickle(tiny_build) -> None:
    names = set(tiny_build.manifest["files"])
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".pickle", ".bin", ".joblib"))], names


def test_a_pickle_in_place_of_the_weights_runs_nothing(tiny_build, tmp_path: Path) -> None:
    from index.store.artifacts import ArtifactError
    from service.serving.engine import load_version

    art = _copy(tiny_build, tmp_path)
    folder = art / "versions" / tiny_build.version
    marker = tmp_path / "marker.txt"
    (folder / "model.safetensors").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(ArtifactError):
        load_version(Settings(artifacts=art, verify_checksums=False, encoder_backend="torch"))
    assert not marker.exists()


def test_torch_load_of_backbone_weights_refuses_a_pickle(tmp_path: Path) -> None:
    import torch

    from model.encoders.image import EfficientNetLite0

    marker = tmp_path / "marker.txt"
    bad = tmp_path / "weights.pth"
    torch.save({"stem.weight": Exploit(marker)}, bad)  # a state dict with an object inside
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        EfficientNetLite0.from_file(bad)
    assert not marker.exists()


def _copy(tiny_build, tmp_path: Path) -> Path:
    import shutil

    src = tiny_build.path.parent.parent
    dst = tmp_path / "artifacts"
    shutil.copytree(src / "versions" / tiny_build.version, dst / "versions" / tiny_build.version)
    shutil.copyfile(src / "current", dst / "current")
    return dst


# ---------------------------------------------------------------------------------- image paths

def test_images_cannot_escape_their_root(tiny_build, tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tiny_build.path / "listings.sqlite")
    ref = db.execute("SELECT image FROM listings WHERE image IS NOT NULL ORDER BY row LIMIT 1").fetchone()[0]
    db.close()
    root = tmp_path / "images"
    (root / Path(ref).parent).mkdir(parents=True)
    (root / ref).write_bytes(b"jpeg")
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (root / "link.jpg").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path)
    settings = Settings(artifacts=tiny_build.path.parent.parent, reload_poll_s=0, denylist_poll_s=0,
                        image_root=root, encoder_backend="torch", warmup_queries=1)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        r = c.get(f"/images/{ref}")
        assert r.content == b"jpeg" and r.headers["content-type"] == "image/jpeg"
        for path in ("/images/../secret.txt", "/images/%2e%2e/secret.txt", "/images/..%2fsecret.txt",
                     "/images/sub/../../secret.txt", "/images/link.jpg", "/images/dirlink/secret.txt",
                     "/images/%2fetc%2fpasswd", "/images//etc/passwd", f"/images/{ref}%00.txt",
                     "/images/..%5csecret.txt"):
            r = c.get(path)
            assert r.status_code in (404, 400), (path, r.status_code)
            assert "top secret" not in r.text and "root:" not in r.text


def test_images_serve_only_the_versions_photos(tiny_build, tiny_sample: Path) -> None:
    """The demo points SERVICE_IMAGE_ROOT at the catalog folder: its data files stay private."""
    settings = Settings(artifacts=tiny_build.path.parent.parent, reload_poll_s=0, denylist_poll_s=0,
                        image_root=tiny_sample, encoder_backend="torch", warmup_queries=1)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        hit = c.get("/search", params={"q": "earrings", "k": 1}).json()["results"][0]
        assert hit["image"].startswith("/images/")
        r = c.get(hit["image"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        for name in ("catalog.jsonl", "interactions.jsonl", "judgments.jsonl", "summary.json"):
            assert (tiny_sample / name).is_file()
            r = c.get(f"/images/{name}")
            assert r.status_code == 404, name
            assert r.json() == {"error": "NotFound", "message": "image: not found"}
        unreferenced = tiny_sample / "images" / "not_a_listing.jpg"
        unreferenced.write_bytes(b"jpeg")
        try:
            assert c.get("/images/images/not_a_listing.jpg").status_code == 404
        finally:
            unreferenced.unlink()


# ------------------------------------------------------------------------- errors and leaked paths

def test_an_internal_error_shows_no_traceback_or_path(hard_client: TestClient, monkeypatch, caplog) -> None:
    engine = hard_client.app.state.svc.engine

    def boom(requests):
        raise RuntimeError(f"{engine.settings.artifacts}/versions/x/index.faiss exploded in engine.py line 7")

    monkeypatch.setattr(engine, "search_batch", boom)
    with caplog.at_level(logging.ERROR, logger="service.api.app"):
        r = hard_client.post("/search", json={"query": "kaboom unique 1"}, headers={"x-request-id": "trace-500"})
    assert r.status_code == 500
    assert r.json() == {"error": "InternalError", "message": "internal error"}
    assert r.headers["x-request-id"] == "trace-500"  # the caller can quote it; the log has the traceback under it
    logged = [rec for rec in caplog.records if rec.exc_info and "unhandled error on /search" in rec.getMessage()]
    assert len(logged) == 1 and "exploded" in str(logged[0].exc_info[1])
    counted = [line for line in hard_client.get("/metrics").text.splitlines()
               if line.startswith("http_requests_total{") and 'route="/search"' in line and 'status="500"' in line]
    assert counted and float(counted[0].split()[-1]) >= 1  # the metrics count it as a 500


def test_reload_and_readiness_errors_name_no_server_path(hard_client: TestClient, hard_artifacts: Path) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    r = hard_client.post("/admin/reload", json={"version": "missing-version"}, headers=auth)
    assert r.status_code == 409 and "missing-version" in r.json()["message"]
    ready = hard_client.get("/readyz").json()
    assert ready["status"] == "ready" and "missing-version" in ready["last_reload_error"]
    for text in (r.text, hard_client.get("/readyz").text):
        assert not leaks(text, (str(hard_artifacts), str(hard_artifacts.parent), "/tmp/")), text
    assert hard_client.post("/admin/reload", headers=auth).status_code == 200  # clears the error


def test_not_ready_reason_names_no_server_path(tmp_path: Path) -> None:
    settings = Settings(artifacts=tmp_path / "nothing-here", reload_poll_s=0, denylist_poll_s=0)
    with TestClient(create_app(settings)) as c:
        import time

        time.sleep(0.2)
        r = c.get("/readyz")
        assert r.status_code == 503
        assert str(tmp_path) not in r.text and r.json()["reason"] == "no version published in DIR"
        s = c.post("/search", json={"query": "mug"})
        assert s.status_code == 503 and not leaks(s.text, (str(tmp_path),))


# --------------------------------------------------------------------------------------- CORS

def test_cors_is_closed_by_default(hard_client: TestClient) -> None:
    assert hard_client.app.state.svc.settings.cors_origins == []
    pre = hard_client.options("/search", headers={"origin": "https://evil.example",
                                                  "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in pre.headers and pre.status_code in (405, 404)
    r = hard_client.get("/search", params={"q": "mug"}, headers={"origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(tiny_build, monkeypatch) -> None:
    monkeypatch.setenv("SERVICE_CORS_ORIGINS", '["https://shop.example"]')
    settings = Settings(artifacts=tiny_build.path.parent.parent, reload_poll_s=0, denylist_poll_s=0,
                        encoder_backend="torch", warmup_queries=1)
    assert settings.cors_origins == ["https://shop.example"]
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        ok = c.options("/search", headers={"origin": "https://shop.example", "access-control-request-method": "POST"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://shop.example"
        bad = c.options("/search", headers={"origin": "https://evil.example", "access-control-request-method": "POST"})
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
        r = c.get("/search", params={"q": "mug"}, headers={"origin": "https://shop.example"})
        assert r.headers["access-control-allow-origin"] == "https://shop.example"
        r = c.get("/search", params={"q": "mug"}, headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


# ------------------------------------------------------------------------------ docs offline

def test_docs_pages_load_every_asset_from_the_service(hard_client: TestClient) -> None:
    """/docs and /redoc name no CDN: every script, stylesheet and icon is served by the app."""
    for page in ("/docs", "/redoc"):
        r = hard_client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        refs = re.findall(r'(?:src|href)\s*[=:]\s*["\']([^"\']+)["\']', r.text)
        assert refs, page
        assert not [u for u in refs if "//" in u], (page, refs)  # no http(s):// nor protocol-relative URL
        for url in refs:
            if url.startswith("/docs-assets/"):
                asset = hard_client.get(url)
                assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert "SwaggerUIBundle" in hard_client.get("/docs-assets/swagger-ui-bundle.js").text
    assert hard_client.get("/openapi.json").json()["paths"]["/search"]
