"""Faults injected while the service runs and while versions are written: the last good version
keeps serving, `current` never moves to a bad one, and the failure is reported clearly.

Complements tests/service/serving/test_artifact_load.py (each corruption refused by `load_version`) and
tests/index/store/test_artifacts.py (staging, publish, retention) with the running service following
`DIR/current`, a full disk during commit and publish, and a build process killed by SIGKILL."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hardening_helpers import leaks
from helpers import ROOT, clone_version, copy_artifacts, wait_ready

from index.store import artifacts as artifacts_mod
from index.store.artifacts import MANIFEST, ArtifactError, ArtifactStore, write_atomic
from service.api.app import create_app
from service.cli import main as cli_main
from service.serving.settings import Settings


def truncate(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 3])
    return damage


def garbage(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(os.urandom(512))


def missing(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def flip_byte(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / name).write_bytes(bytes(data))
    return damage


# name: (damage, verify_checksums of the server, words the error must contain)
FAULTS: dict[str, tuple[Callable[[Path], None], bool, str]] = {
    "checksum mismatch (one flipped byte)": (flip_byte("listings.sqlite"), True, "checksum mismatch"),
    "missing index file": (missing("index.faiss"), True, "missing"),
    "truncated weights": (truncate("model.safetensors"), False, "model.safetensors"),
    "garbage weights": (garbage("model.safetensors"), False, "model.safetensors"),
    "truncated index": (truncate("index.faiss"), False, "index.faiss"),
    "garbage tokenizer": (garbage("tokenizer.json"), False, "unreadable artifact"),
    "truncated vectors": (truncate("vectors.npy"), False, "unreadable artifact"),
    "garbage listings": (garbage("listings.sqlite"), False, "unreadable artifact"),
    "manifest not JSON": (lambda f: (f / MANIFEST).write_text('{"schema_version": 1, "vers'), False,
                          "unreadable manifest"),
    "missing manifest": (missing(MANIFEST), False, "no such artifact version"),
}


Follower = tuple[TestClient, ArtifactStore, str]


@pytest.fixture(scope="module")
def followers(tiny_build, tmp_path_factory) -> Iterator[Callable[[bool], Follower]]:
    """Servers following DIR/current every 0.1 s, one with checksums on and one with them OFF (there
    the loader's own checks must catch what a checksum would have caught first); started on demand."""
    made: dict[bool, Follower] = {}
    with contextlib.ExitStack() as stack:
        def get(verify: bool) -> Follower:
            if verify not in made:
                art = copy_artifacts(tiny_build, tmp_path_factory.mktemp("faults") / "artifacts")
                settings = Settings(artifacts=art, reload_poll_s=0.1, denylist_poll_s=0, verify_checksums=verify,
                                    encoder_backend="torch", warmup_queries=1, cache_size=0)
                c = stack.enter_context(TestClient(create_app(settings), raise_server_exceptions=False))
                wait_ready(c)
                made[verify] = (c, ArtifactStore(art), tiny_build.version)
            return made[verify]

        yield get


def wait_for(pred: Callable[[], bool], timeout: float = 30.0, why: Callable[[], object] = lambda: "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met in time: {why()}")


@pytest.mark.parametrize("fault", list(FAULTS))
def test_running_service_keeps_the_last_good_version(followers, fault: str) -> None:
    damage, verify, words = FAULTS[fault]
    client, store, good = followers(verify)
    name = "bad-" + "".join(ch if ch.isalnum() else "-" for ch in fault)
    folder = clone_version(store, good, name)
    damage(folder)
    engine = client.app.state.svc.engine
    try:
        write_atomic(store.current_file, (name + "\n").encode())  # a rogue publish that skipped verify
        wait_for(lambda: bool(engine.last_reload_error) and name in engine.last_reload_error,
                 why=lambda: (engine.last_reload_error, client.app.state.svc.life.load_error, store.current_version()))
        assert words in engine.last_reload_error, engine.last_reload_error
        for _ in range(3):
            r = client.post("/search", json={"query": "red mug"})
            assert r.status_code == 200 and r.json()["index_version"] == good
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["index_version"] == good
        assert name in ready.json()["last_reload_error"]
        assert not leaks(ready.text, (str(store.root),))
    finally:
        write_atomic(store.current_file, (good + "\n").encode())


GARBLED_CURRENT = {b"": "names no version", b"\n": "names no version", b"../../etc/passwd\n": "not a valid version name",
                   b"\xff\xfe\x00garbage": "not UTF-8 text", b"v" * 10_000: "not a valid version name", None: "names no version"}


@pytest.mark.parametrize("content", list(GARBLED_CURRENT), ids=["empty", "blank", "path", "binary", "long", "deleted"])
def test_a_garbled_current_file_does_not_stop_serving(followers, content: bytes | None) -> None:
    """The replica keeps serving its version and says why it is not following: /readyz stays 200
    with `follow_error` (no server path in it); once `current` is repaired the error clears."""
    client, store, good = followers(False)
    try:
        if content is None:
            store.current_file.unlink()
        else:
            store.current_file.write_bytes(content)
        wait_for(lambda: client.get("/readyz").json().get("follow_error") is not None,
                 why=lambda: client.get("/readyz").json())
        time.sleep(0.3)  # a few more polls
        r = client.post("/search", json={"query": "wool scarf"})
        assert r.status_code == 200 and r.json()["index_version"] == good
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["index_version"] == good
        error = ready.json()["follow_error"]
        assert GARBLED_CURRENT[content] in error and str(store.root) not in error, error
    finally:
        write_atomic(store.current_file, (good + "\n").encode())
    wait_for(lambda: client.get("/readyz").json()["follow_error"] is None, why=lambda: client.get("/readyz").json())


def enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_publish_keeps_current(artifacts_copy: Path, tiny_build, monkeypatch, capsys) -> None:
    store = ArtifactStore(artifacts_copy)
    clone_version(store, tiny_build.version, "next")
    before = store.current_file.read_bytes()
    monkeypatch.setattr(artifacts_mod.os, "fsync", enospc)
    with pytest.raises(OSError, match="No space left"):
        store.publish("next")
    assert store.current_file.read_bytes() == before
    assert not list(artifacts_copy.glob(".current*.tmp"))
    # the CLI says so in one line, no traceback, and exits 2
    assert cli_main(["publish", "--artifacts", str(artifacts_copy), "next"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert store.current_version() == tiny_build.version


def test_full_disk_during_commit_leaves_no_version(artifacts_copy: Path, tiny_build, monkeypatch) -> None:
    store = ArtifactStore(artifacts_copy)
    before = store.list_versions()
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync_then_full(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] > 2:  # a few files get through, then the disk is full
            enospc()
        real_fsync(fd)

    monkeypatch.setattr(artifacts_mod.os, "fsync", fsync_then_full)
    with pytest.raises(OSError, match="No space left"):
        clone_version(store, tiny_build.version, "half")
    monkeypatch.undo()
    assert store.list_versions() == before and not (store.versions_dir / "half").exists()
    assert list(store.staging_dir.iterdir()) == []  # the staging folder was removed
    assert store.current_version() == tiny_build.version
    clone_version(store, tiny_build.version, "half")  # and the same name can be written once there is room
    store.verify("half")


def test_full_disk_when_writing_a_version_file(artifacts_copy: Path, tiny_build, monkeypatch) -> None:
    """ENOSPC from write() itself (not fsync), inside a build's staging block."""
    store = ArtifactStore(artifacts_copy)
    with pytest.raises(OSError, match="No space left"), store.stage("w1") as staged:
        (staged.path / "index.faiss").write_bytes(b"x" * 10)
        enospc()
    assert "w1" not in store.list_versions() and list(store.staging_dir.iterdir()) == []


KILLED_BUILD = """
import os, signal, sys
from index.store.artifacts import ArtifactStore
store = ArtifactStore(sys.argv[1])
with store.stage("killed") as staged:
    (staged.path / "index.faiss").write_bytes(b"half an index")
    os.kill(os.getpid(), signal.SIGKILL)  # no finally, no cleanup: as `kill -9` mid-build
"""


def test_a_build_killed_halfway_changes_nothing(followers) -> None:
    client, store, good = followers(False)
    versions = store.list_versions()
    proc = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(store.root)], cwd=ROOT, timeout=60,
                          capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    debris = [p.name for p in store.staging_dir.iterdir() if p.name.startswith("killed.")]
    assert debris  # the half-written folder is left in staging/ ...
    assert store.list_versions() == versions and store.current_version() == good  # ... and nowhere else
    r = client.post("/search", json={"query": "ceramic vase"})
    assert r.status_code == 200 and r.json()["index_version"] == good
    assert store.clean_staging(0) == sorted(debris)  # `service gc` removes it


def test_publish_refuses_every_bad_version(artifacts_copy: Path, tiny_build) -> None:
    store = ArtifactStore(artifacts_copy)
    for i, fault in enumerate(["checksum mismatch (one flipped byte)", "truncated weights", "manifest not JSON"]):
        damage = FAULTS[fault][0]
        name = f"p{i}"
        damage(clone_version(store, tiny_build.version, name))
        with pytest.raises(ArtifactError):
            store.publish(name)
        assert store.current_version() == tiny_build.version, fault
    report = json.loads((store.version_dir(tiny_build.version) / MANIFEST).read_text())
    assert report["version"] == tiny_build.version
