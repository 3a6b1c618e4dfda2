"""`service serve`: one process, or N uvicorn worker processes on one port.

One worker is one Python process with its own event loop, micro-batcher, model and index. With
`--workers N` uvicorn's supervisor starts N such processes that share the listening socket (the
kernel spreads connections between them); each is built by `app_from_env` from the environment,
so every setting given on the command line is exported as its `SERVICE_*` variable first.

What each worker does on its own: it follows DIR/current with its own poller (a new version
reaches every worker within `reload_poll_s`; POST /admin/reload reaches only the worker that
answers it, the poller brings the others along), keeps its own result cache, writes its own query
log (`{pid}` in the path is required, so the files do not interleave). What they share: the page
cache of the memory-mapped vectors.npy and the Prometheus multi-process folder: the CLI points
PROMETHEUS_MULTIPROC_DIR at an empty folder (a fresh temporary one unless set) before the workers
start, and /metrics on any worker reports all of them. CPU threads: each worker gets
`cpu_count // N` intra-op threads unless SERVICE_TORCH_THREADS says otherwise, so N workers do not
oversubscribe the cores. docs/SERVING.md has the memory cost per worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from service.logctx import configure_logging
from service.settings import Settings

log = logging.getLogger("service.workers")


def app_from_env() -> Any:
    """uvicorn factory for worker processes: settings from SERVICE_* variables."""
    from service.app import create_app

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def prepare_multiprocess_dir() -> tuple[Path, bool]:
    """PROMETHEUS_MULTIPROC_DIR set and empty (stale files of dead workers would be summed in);
    -> (folder, whether it was created here and is ours to remove)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for f in path.glob("*.db"):
            f.unlink()
        return path, False
    path = Path(tempfile.mkdtemp(prefix="service-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path, True


def worker_environment(overrides: dict[str, Any], workers: int, cpu_count: int,
                       environ: dict[str, str]) -> dict[str, str]:
    """The SERVICE_* variables the N worker processes need (settings given on the command line, and
    intra-op threads split between workers); refuses a configuration that workers cannot share."""
    if workers < 2:
        raise ValueError(f"--workers: {workers} needs no worker environment")
    env = {f"SERVICE_{k.upper()}": str(v) for k, v in overrides.items() if v is not None}
    if not environ.get("SERVICE_TORCH_THREADS") and "SERVICE_TORCH_THREADS" not in env:
        env["SERVICE_TORCH_THREADS"] = str(max(1, cpu_count // workers))
    log_path = env.get("SERVICE_QUERY_LOG", environ.get("SERVICE_QUERY_LOG", ""))
    if log_path and "{pid}" not in log_path:
        raise ValueError(f"query_log: {log_path} would be shared by {workers} workers; put {{pid}} in the path "
                         "so each writes its own file")
    return env


def use_batch_scheduling(enabled: bool) -> bool:
    """Put this process under SCHED_BATCH (Linux): every thread and worker process it starts from
    now on inherits it. A thread under SCHED_BATCH never preempts a running one when it wakes; it
    runs at the next scheduler tick. The event loop wakes once per arriving request; without this,
    each wake-up preempts the encoder mid-batch (two context switches and a cold cache per request),
    which cost the most under overload, when half the arrivals only get a 429. -> whether it is on."""
    if not enabled:
        return False
    if not hasattr(os, "SCHED_BATCH"):
        log.info("sched_batch: not available on this platform; the default scheduling stays")
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as e:  # e.g. a seccomp profile that forbids it: serving goes on without
        log.warning("sched_batch: could not set SCHED_BATCH (%s); the default scheduling stays", e)
        return False
    return True


def serve(overrides: dict[str, Any], workers: int = 1) -> None:
    import uvicorn

    if workers < 1:
        raise ValueError(f"--workers: must be >= 1, got {workers}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if workers == 1:
        from service.app import create_app

        settings = Settings(**overrides)
        configure_logging(settings.log_level, settings.log_format)
        use_batch_scheduling(settings.sched_batch)
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                    access_log=False, timeout_graceful_shutdown=10, log_config=None)
        return
    os.environ.update(worker_environment(overrides, workers, os.cpu_count() or 1, dict(os.environ)))
    settings = Settings()  # what every worker will read: fail here, once, on a bad value
    configure_logging(settings.log_level, settings.log_format)
    use_batch_scheduling(settings.sched_batch)  # the supervisor: the workers it spawns inherit it
    metrics_dir, ours = prepare_multiprocess_dir()
    try:
        uvicorn.run("service.workers:app_from_env", factory=True, workers=workers, host=settings.host,
                    port=settings.port, log_level=settings.log_level, access_log=False,
                    timeout_graceful_shutdown=10, log_config=None)
    finally:
        if ours:
            shutil.rmtree(metrics_dir, ignore_errors=True)
