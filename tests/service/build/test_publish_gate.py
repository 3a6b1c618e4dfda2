"""The publish gate cannot be walked around: `service publish`, POST /admin/reload, a replica
following DIR/current, `service gc` and `service update-index` all refuse a version whose gate
failed, unless forced (logged, and recorded in that version's manifest)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import clone_version, wait_ready

from index.store.artifacts import MANIFEST, ArtifactStore
from index.store.listings import ListingStore
from service.api.app import create_app
from service.build.pipeline import BuildOptions, gate
from service.cli import main
from service.serving.settings import Settings

FAILURE = "recall@100 0.21 < --min-recall-at-100 0.9"
AUTH = {"Authorization": "Bearer s3cret"}


def held_back(store: ArtifactStore, src: str, name: str = "held-back") -> str:
    """A committed version whose gate failed, as build-index writes one (complete, checksummed)."""
    clone_version(store, src, name)
    path = store.version_dir(name) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["gate"] = {"passed": False, "failures": [FAILURE]}
    path.write_text(json.dumps(manifest))
    return name


def test_publish_refuses_a_gate_failed_version_unless_forced(artifacts_copy: Path, tiny_build, capsys) -> None:
    store = ArtifactStore(artifacts_copy)
    name = held_back(store, tiny_build.version)
    rc = main(["publish", name, "--artifacts", str(artifacts_copy)])
    assert rc == 3
    err = capsys.readouterr().err
    assert "publish gate" in err and FAILURE in err and "--force" in err
    assert store.current_version() == tiny_build.version
    assert "overrides" not in store.manifest(name)["gate"]

    rc = main(["publish", name, "--artifacts", str(artifacts_copy), "--force"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["forced_past_gate"] == [FAILURE]
    assert store.current_version() == name
    manifest = store.verify(name)  # recording the override keeps every checksum valid
    (override,) = manifest["gate"]["overrides"]
    assert override["forced"] is True and override["by"] == "service publish --force"
    assert override["failures"] == [FAILURE] and override["at"]
    assert manifest["gate"]["passed"] is False  # the verdict itself stays true


def test_publish_of_a_passing_version_needs_no_force(artifacts_copy: Path, tiny_build, capsys) -> None:
    store = ArtifactStore(artifacts_copy)
    clone_version(store, tiny_build.version, "fine")
    assert main(["publish", "fine", "--artifacts", str(artifacts_copy)]) == 0
    assert store.current_version() == "fine" and "overrides" not in store.manifest("fine").get("gate", {})


def test_reload_route_refuses_a_gate_failed_version_with_409_unless_forced(artifacts_copy: Path, tiny_build) -> None:
    store = ArtifactStore(artifacts_copy)
    name = held_back(store, tiny_build.version)
    with TestClient(create_app(Settings(artifacts=artifacts_copy, reload_poll_s=0, admin_token="s3cret"))) as c:
        wait_ready(c)
        r = c.post("/admin/reload", json={"version": name}, headers=AUTH)
        assert r.status_code == 409
        msg = r.json()["message"]
        assert "publish gate" in msg and FAILURE in msg and '"force": true' in msg and "still serving" in msg
        ready = c.get("/readyz").json()
        assert ready["index_version"] == tiny_build.version and "publish gate" in ready["last_reload_error"]

        r = c.post("/admin/reload", json={"version": name, "force": True}, headers=AUTH)
        assert r.status_code == 200 and r.json()["index_version"] == name
        (override,) = store.verify(name)["gate"]["overrides"]
        assert override["by"] == "POST /admin/reload" and override["forced"] is True
    assert store.current_version() == tiny_build.version  # a reload serves; it does not publish


def test_reload_route_rejects_a_non_boolean_force(client: TestClient) -> None:
    r = client.post("/admin/reload", json={"force": "yes"}, headers=AUTH)
    assert r.status_code == 422


def test_follow_mode_does_not_load_a_hand_written_current(artifacts_copy: Path, tiny_build) -> None:
    store = ArtifactStore(artifacts_copy)
    name = held_back(store, tiny_build.version)
    with TestClient(create_app(Settings(artifacts=artifacts_copy, reload_poll_s=0.05, admin_token="s3cret"))) as c:
        wait_ready(c)
        (artifacts_copy / "current").write_text(name + "\n")  # around `service publish`
        end = time.monotonic() + 20
        while time.monotonic() < end and not c.get("/readyz").json().get("follow_error"):
            time.sleep(0.05)
        ready = c.get("/readyz").json()
        assert ready["status"] == "ready" and ready["index_version"] == tiny_build.version
        assert "publish gate" in ready["follow_error"]
        r = c.post("/admin/reload", headers=AUTH)  # reloading DIR/current without a name: refused too
        assert r.status_code == 409 and '"force": true' in r.json()["message"]
        # once a forced publish is recorded, the replicas follow it
        assert main(["publish", name, "--artifacts", str(artifacts_copy), "--force"]) == 0
        end = time.monotonic() + 20
        while time.monotonic() < end and c.get("/readyz").json().get("index_version") != name:
            time.sleep(0.05)
        assert c.get("/readyz").json()["index_version"] == name


def test_pinned_gate_failed_version_is_not_served(artifacts_copy: Path, tiny_build) -> None:
    name = held_back(ArtifactStore(artifacts_copy), tiny_build.version)
    with TestClient(create_app(Settings(artifacts=artifacts_copy, version=name, reload_poll_s=0))) as c:
        time.sleep(0.5)
        r = c.get("/readyz")
        assert r.status_code == 503 and "publish gate" in r.json()["reason"]


def test_gc_never_makes_a_gate_failed_version_current(artifacts_copy: Path, tiny_build, capsys) -> None:
    store = ArtifactStore(artifacts_copy)
    name = held_back(store, tiny_build.version, "zz-held-back")  # the newest version
    assert main(["gc", "--artifacts", str(artifacts_copy), "--keep-versions", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["current"] == tiny_build.version == store.current_version()
    assert set(out["kept"]) == {tiny_build.version, name}


def test_update_index_of_a_gate_failed_base_is_held_back(artifacts_copy: Path, tiny_build, tmp_path: Path,
                                                         capsys) -> None:
    store = ArtifactStore(artifacts_copy)
    name = held_back(store, tiny_build.version)
    ids = tmp_path / "delete.txt"
    ids.write_text(ListingStore(store.version_dir(name) / "listings.sqlite").ids()[0] + "\n")
    rc = main(["update-index", "--artifacts", str(artifacts_copy), "--base", name, "--delete-ids", str(ids),
               "--version", "derived", "--device", "cpu", "--no-progress"])
    assert rc == 3
    err = capsys.readouterr().err
    assert "NOT published" in err and f"parent version {name}" in err and FAILURE in err
    assert store.current_version() == tiny_build.version
    assert store.manifest("derived")["gate"]["passed"] is False


@pytest.mark.parametrize("metrics", [{"recall@100": float("nan"), "n_queries": 0},
                                     {"ndcg@10": float("nan")}, {"ann_recall@10": float("nan")}])
def test_nan_metrics_fail_the_gate_without_thresholds(metrics: dict) -> None:
    (failure,) = gate(metrics, BuildOptions(catalog=Path("c"), artifacts=Path("a")))
    assert "is NaN" in failure


def test_eval_of_positives_only_judgments_is_not_nan(tiny_build, tiny_sample: Path, tmp_path: Path, capsys) -> None:
    rows = [json.loads(line) for line in (tiny_sample / "judgments.jsonl").read_text().splitlines()]
    top = max(r["relevance"] for r in rows)
    positives = tmp_path / "positives.jsonl"  # only the best pairs, all with the same grade
    positives.write_text("".join(json.dumps({**r, "relevance": 1}) + "\n" for r in rows if r["relevance"] == top))
    rc = main(["eval", "--artifacts", str(tiny_build.path.parent.parent), "--judgments", str(positives),
               "--device", "cpu"])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    n = len({r["query"] for r in rows if r["relevance"] == top})
    assert metrics["n_queries"] == n and metrics["n_skipped"] == 0
    for key in ("recall@10", "recall@100", "ndcg@10", "mrr@10"):
        assert metrics[key] == metrics[key] and 0 <= metrics[key] <= 1, key  # not NaN
    assert metrics["recall@500"] > 0


def test_forced_reload_that_cannot_be_recorded_is_refused(artifacts_copy: Path, tiny_build, monkeypatch) -> None:
    import index.store.artifacts as artifacts

    store = ArtifactStore(artifacts_copy)
    name = held_back(store, tiny_build.version)
    with TestClient(create_app(Settings(artifacts=artifacts_copy, reload_poll_s=0, admin_token="s3cret"))) as c:
        wait_ready(c)

        def read_only(*_: object) -> None:
            raise OSError(30, "Read-only file system")

        monkeypatch.setattr(artifacts, "write_atomic", read_only)  # a replica's read-only mount
        r = c.post("/admin/reload", json={"version": name, "force": True}, headers=AUTH)
        assert r.status_code == 409 and f"service publish {name} --force" in r.json()["message"]
        assert c.get("/readyz").json()["index_version"] == tiny_build.version
