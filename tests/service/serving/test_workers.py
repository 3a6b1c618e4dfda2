"""Several workers: the environment handed to worker processes, the Prometheus multi-process
folder, and /metrics aggregating the counters of separate processes; the serving process's
scheduling policy (SCHED_BATCH and its time slice), which the workers inherit."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT
from pydantic import ValidationError

from service.api.app import query_log_path
from service.serving import workers
from service.serving.settings import Settings
from service.serving.workers import prepare_multiprocess_dir, worker_environment


def test_worker_environment_exports_settings_and_splits_threads() -> None:
    env = worker_environment({"artifacts": Path("/a"), "port": 9000, "host": None, "threads": 8}, 2, 8, {})
    assert env == {"SERVICE_ARTIFACTS": "/a", "SERVICE_PORT": "9000", "SERVICE_THREADS": "4"}  # each worker's share
    assert "SERVICE_TORCH_THREADS" not in worker_environment({}, 4, 2, {"SERVICE_TORCH_THREADS": "2"})
    assert worker_environment({}, 4, 2, {})["SERVICE_THREADS"] == "1"
    with pytest.raises(ValueError, match=r"\{pid\}"):
        worker_environment({}, 2, 2, {"SERVICE_QUERY_LOG": "/var/log/q.jsonl"})
    assert worker_environment({}, 2, 2, {"SERVICE_QUERY_LOG": "/var/log/q-{pid}.jsonl"})
    with pytest.raises(ValueError, match="workers"):
        worker_environment({}, 1, 2, {})


def test_query_log_path_names_the_process() -> None:
    assert query_log_path(Path("/x/q-{pid}.jsonl")) == Path(f"/x/q-{os.getpid()}.jsonl")
    assert query_log_path(Path("/x/q.jsonl")) == Path("/x/q.jsonl")


def test_prepare_multiprocess_dir_empties_a_given_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    path, ours = prepare_multiprocess_dir()
    assert path == tmp_path and not ours and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    path, ours = prepare_multiprocess_dir()
    try:
        assert ours and path.is_dir() and os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(path)
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        path.rmdir()


WORKER = """
import sys
from service.serving.metrics import Metrics
m = Metrics()
m.requests.labels("/search", "GET", "200").inc(int(sys.argv[1]))
m.queue_depth.set(int(sys.argv[1]))
m.set_served("ft-1", "v1", "cpu/int8", "faiss-cpu", 10)
m.set_served("ft-1", "v2", "cpu/int8", "faiss-cpu", 10)
if sys.argv[2] == "render":
    sys.stdout.write(m.render().decode())
"""


def test_metrics_aggregate_across_processes(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    for n in ("3", "4"):
        subprocess.run([sys.executable, "-c", WORKER, n, "quiet"], env=env, check=True, cwd=ROOT, timeout=60)
    out = subprocess.run([sys.executable, "-c", WORKER, "5", "render"], env=env, check=True, cwd=ROOT,
                         capture_output=True, text=True, timeout=60).stdout
    assert 'http_requests_total{method="GET",route="/search",status="200"} 12.0' in out  # 3 + 4 + 5
    # live gauges of exited processes still count until mark_process_dead (Metrics.process_exit)
    assert "search_queue_depth 12.0" in out
    info = [line for line in out.splitlines() if line.startswith("service_build_info{")]
    assert len(info) == 6  # one series per (version, pid): the old version zeroed, the new one 1
    assert all(line.endswith(" 0.0") for line in info if 'index_version="v1"' in line)
    assert all(line.endswith(" 1.0") for line in info if 'index_version="v2"' in line)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policy")
def test_batch_scheduling_is_inherited_by_threads_and_children() -> None:
    """`use_batch_scheduling(True)` puts the process under SCHED_BATCH, and the threads and child
    processes it starts afterwards (the search worker, uvicorn's workers) inherit it. Run in a
    child, so this test process keeps its own policy."""
    code = """
import os, subprocess, sys, threading
from service.serving.workers import use_batch_scheduling
before = os.sched_getscheduler(0)
on = use_batch_scheduling(True)
seen = []
t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
t.start(); t.join()
child = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                       capture_output=True, text=True, check=True).stdout.strip()
print(before == os.SCHED_OTHER, on, os.sched_getscheduler(0) == os.SCHED_BATCH,
      seen == [os.SCHED_BATCH], int(child) == os.SCHED_BATCH)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.split()
    assert out == ["True"] * 5, out


def test_batch_scheduling_off_or_refused_leaves_the_policy(monkeypatch, caplog) -> None:
    calls = []
    monkeypatch.setattr(os, "sched_setscheduler", lambda *a: calls.append(a), raising=False)
    assert workers.use_batch_scheduling(False) is False and calls == []  # SERVICE_SCHED_BATCH=0: untouched

    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse, raising=False)
    monkeypatch.setattr(os, "SCHED_BATCH", 3, raising=False)
    with caplog.at_level(logging.WARNING, logger="service.serving.workers"):
        assert workers.use_batch_scheduling(True) is False  # serving goes on with the default policy
    assert "could not set SCHED_BATCH" in caplog.text


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policy")
def test_time_slice_is_set_and_inherited_by_threads_and_children() -> None:
    """`use_batch_scheduling(True, slice_us)` asks the kernel for that time slice (sched_setattr);
    sched_getattr reads it back in the calling thread, a thread that was already running (a
    library's), a thread started afterwards and a child process."""
    code = """
import subprocess, sys, threading
from service.serving.workers import _sched_attr_call, use_batch_scheduling
go, seen = threading.Event(), []
early = threading.Thread(target=lambda: (go.wait(), seen.append(_sched_attr_call())))  # started before: no inheritance
early.start()
assert use_batch_scheduling(True, 12_500)
go.set(); early.join()
t = threading.Thread(target=lambda: seen.append(_sched_attr_call()))
t.start(); t.join()
child = subprocess.run([sys.executable, "-c", "from service.serving.workers import _sched_attr_call as f; print(*f())"],
                       capture_output=True, text=True, check=True).stdout.split()
print(*_sched_attr_call(), *seen[0], *seen[1], *child)
"""
    out = [int(v) for v in subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                          cwd=ROOT).stdout.split()]
    if out[1] == 0:
        pytest.skip("this kernel does not report custom slices (Linux < 6.12)")
    assert out == [os.SCHED_BATCH, 12_500_000] * 4, out  # this thread, one started before, one after, a child


def test_time_slice_off_refused_or_unsupported(monkeypatch, caplog) -> None:
    """A zero slice leaves the kernel's default alone; a refused or ignored slice is logged and
    SCHED_BATCH stays on (serving never stops for it)."""
    policies = []
    monkeypatch.setattr(os, "sched_setscheduler", lambda tid, *a: policies.append(tid), raising=False)  # untouched
    monkeypatch.setattr(os, "SCHED_BATCH", 3, raising=False)
    monkeypatch.setattr(workers, "_other_threads", lambda: [4242])  # a library's thread, started before
    calls = []
    monkeypatch.setattr(workers, "_sched_attr_call", lambda *a: calls.append(a) or (3, 10_000_000))
    assert workers.use_batch_scheduling(True, 0) is True and calls == [] and policies == [0, 4242]
    assert workers.use_batch_scheduling(True, 10_000) is True
    assert calls == [(3, 10_000_000), (3, 10_000_000, 4242)]

    def refuse(*_: object) -> tuple[int, int]:
        raise OSError(38, "sched_setattr: not wired for this platform")

    monkeypatch.setattr(workers, "_sched_attr_call", refuse)
    with caplog.at_level(logging.INFO, logger="service.serving.workers"):
        assert workers.use_batch_scheduling(True, 10_000) is True
    assert "could not set a 10000 us slice" in caplog.text
    caplog.clear()
    monkeypatch.setattr(workers, "_sched_attr_call", lambda *a: (3, 0))  # a kernel before 6.12 ignores the field
    with caplog.at_level(logging.INFO, logger="service.serving.workers"):
        assert workers.use_batch_scheduling(True, 10_000) is True
    assert "does not take a custom slice" in caplog.text


@pytest.mark.parametrize(("value", "ok"), [(0, True), (100, True), (100_000, True), (50, False), (100_001, False)])
def test_time_slice_setting_limits(value: int, ok: bool) -> None:
    if ok:
        assert Settings(sched_slice_us=value).sched_slice_us == value
    else:
        with pytest.raises(ValidationError, match="sched_slice_us"):
            Settings(sched_slice_us=value)


@pytest.mark.parametrize("n_workers", [1, 2])
def test_serve_applies_the_scheduling_settings(monkeypatch, tmp_path, n_workers: int) -> None:
    """`service serve` hands sched_batch and sched_slice_us to the process before uvicorn starts
    (with --workers N: the supervisor, whose worker processes inherit them)."""
    import uvicorn

    import service.api.app

    order = []
    monkeypatch.setattr(os, "environ", dict(os.environ))  # serve() exports SERVICE_* for the workers
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    monkeypatch.setattr(workers, "use_batch_scheduling", lambda on, us: order.append(("sched", on, us)))
    monkeypatch.setattr(service.api.app, "create_app", lambda settings: "app")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: order.append(("uvicorn", kw.get("workers", 1))))
    workers.serve({"artifacts": tmp_path, "sched_batch": True, "sched_slice_us": 20_000}, workers=n_workers)
    assert order == [("sched", True, 20_000), ("uvicorn", n_workers)]


def test_scheduling_is_off_for_library_use_and_on_where_the_service_is_served(monkeypatch) -> None:
    """SCHED_BATCH is process-wide: a library user or a test run keeps its scheduling unless asked;
    the served images and the manifests turn it on."""
    for key in [k for k in os.environ if k.startswith("SERVICE_")]:
        monkeypatch.delenv(key)
    assert Settings().sched_batch is False
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        lines = [ln.strip() for ln in (ROOT / dockerfile).read_text().splitlines() if not ln.lstrip().startswith("#")]
        assert "SERVICE_SCHED_BATCH=true" in lines, dockerfile  # in the final stage's ENV
    config = (ROOT / "k8s" / "base" / "configmap.yaml").read_text()
    assert 'SERVICE_SCHED_BATCH: "true"' in config
    assert Settings(sched_batch="true").sched_batch is True  # as the ConfigMap's string value parses
