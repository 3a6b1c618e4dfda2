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
start, and /metrics on any worker reports all of them. CPU threads: the server's budget
(SERVICE_THREADS, else the CPUs the process may use: affinity and cgroup quota, service/cpu_budget.py)
is split between the N workers, budget // N each, so they do not oversubscribe the cores; every
pool of a worker (torch, OpenMP, BLAS, faiss, onnxruntime) is sized to its share before the model
loads. docs/SERVING.md has the memory cost per worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import platform
import shutil
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from service.cpu_budget import configure_threads, cpu_budget
from service.serving.logctx import configure_logging
from service.serving.settings import Settings

log = logging.getLogger("service.serving.workers")


def app_from_env() -> Any:
    """uvicorn factory for worker processes: settings from SERVICE_* variables."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    configure_threads(settings.threads)  # this worker's share (worker_environment), before the model loads

    from service.api.app import create_app

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


def worker_environment(overrides: dict[str, Any], workers: int, threads: int,
                       environ: dict[str, str]) -> dict[str, str]:
    """The SERVICE_* variables the N worker processes need (settings given on the command line, and
    the server's `threads` budget split between them: SERVICE_THREADS is each worker's share);
    refuses a configuration that workers cannot share."""
    if workers < 2:
        raise ValueError(f"--workers: {workers} needs no worker environment")
    env = {f"SERVICE_{k.upper()}": str(v) for k, v in overrides.items() if v is not None}
    env["SERVICE_THREADS"] = str(max(1, threads // workers))
    log_path = env.get("SERVICE_QUERY_LOG", environ.get("SERVICE_QUERY_LOG", ""))
    if log_path and "{pid}" not in log_path:
        raise ValueError(f"query_log: {log_path} would be shared by {workers} workers; put {{pid}} in the path "
                         "so each writes its own file")
    return env


# sched_setattr / sched_getattr: Python has no wrapper (os.sched_setscheduler cannot set a slice)
_SCHED_ATTR_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
_SCHED_ATTR = struct.Struct("IIQiIQQQII")  # struct sched_attr, SCHED_ATTR_SIZE_VER1 (56 bytes)


def _sched_attr_call(set_policy: int | None = None, slice_ns: int = 0, tid: int = 0) -> tuple[int, int]:
    """sched_setattr(thread `tid`, 0: this one, policy, slice) when `set_policy` is given, then sched_getattr:
    -> (policy, sched_runtime in ns). A fair-class thread reports its time slice as sched_runtime
    on Linux 6.12+ (earlier kernels ignore the field and report 0). Raises OSError."""
    numbers = _SCHED_ATTR_SYSCALLS.get(platform.machine())
    if numbers is None or not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, f"sched_setattr: not wired for {sys.platform}/{platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(_SCHED_ATTR.size)
    if set_policy is not None:
        _SCHED_ATTR.pack_into(buf, 0, _SCHED_ATTR.size, set_policy, 0, 0, 0, slice_ns, 0, 0, 0, 0)
        if libc.syscall(numbers[0], tid, buf, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sched_setattr: {os.strerror(err)}")
    if libc.syscall(numbers[1], tid, buf, _SCHED_ATTR.size, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sched_getattr: {os.strerror(err)}")
    fields = _SCHED_ATTR.unpack(buf.raw)
    return fields[1], fields[5]


def use_batch_scheduling(enabled: bool, slice_us: int = 0) -> bool:
    """Put this process under SCHED_BATCH (Linux): its threads now, and every thread and worker
    process it starts from now on (they inherit it). A thread under SCHED_BATCH never preempts a running one when it wakes; it
    runs at the next scheduler tick. The event loop wakes once per arriving request; without this,
    each wake-up preempts the encoder mid-batch (two context switches and a cold cache per request),
    which cost the most under overload, when half the arrivals only get a 429.

    `slice_us` > 0 also asks for that time slice (Linux 6.12+, EEVDF; also inherited): the encoder
    then runs that long before the waiting event loop gets the core, and the loop handles the
    arrivals of a whole slice in one wake-up instead of a few each tick (docs/RELIABILITY.md §4).
    A kernel or platform without custom slices keeps its default, logged. -> whether SCHED_BATCH is on."""
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
    slice_ns = 0  # the slice this thread got, which the others then get too
    if slice_us > 0:
        try:
            policy, got_ns = _sched_attr_call(os.SCHED_BATCH, slice_us * 1000)
        except OSError as e:
            log.warning("sched_slice_us: could not set a %d us slice (%s); the kernel's default slice stays",
                        slice_us, e)
        else:
            if policy == os.SCHED_BATCH and got_ns == slice_us * 1000:
                slice_ns = got_ns
            else:  # a kernel before 6.12 ignores it
                log.info("sched_slice_us: this kernel does not take a custom slice (it reports %d ns); its "
                         "default slice stays", got_ns)
    for tid in _other_threads():  # started before this call (by imported libraries): they do not inherit
        with contextlib.suppress(OSError):  # a thread that has exited since the listing
            if slice_ns:
                _sched_attr_call(os.SCHED_BATCH, slice_ns, tid)
            else:
                os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
    return True


def _other_threads() -> list[int]:
    """This process's other threads (Linux: /proc/self/task), or none where that cannot be listed."""
    try:
        return [tid for tid in map(int, os.listdir("/proc/self/task")) if tid != threading.get_native_id()]
    except OSError:
        return []


def serve(overrides: dict[str, Any], workers: int = 1) -> None:
    import uvicorn

    if workers < 1:
        raise ValueError(f"--workers: must be >= 1, got {workers}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if workers == 1:
        settings = Settings(**overrides)
        configure_logging(settings.log_level, settings.log_format)
        configure_threads(settings.threads)  # before service.api.app imports torch, faiss, onnxruntime

        from service.api.app import create_app

        use_batch_scheduling(settings.sched_batch, settings.sched_slice_us)
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                    access_log=False, timeout_graceful_shutdown=10, log_config=None)
        return
    total = cpu_budget(Settings(**overrides).threads)  # all the workers together
    os.environ.update(worker_environment(overrides, workers, total.threads, dict(os.environ)))
    settings = Settings()  # what every worker will read: fail here, once, on a bad value
    configure_logging(settings.log_level, settings.log_format)
    configure_threads(settings.threads, pools=False)  # OMP_NUM_THREADS & co. for the workers it spawns
    use_batch_scheduling(settings.sched_batch, settings.sched_slice_us)  # the supervisor: the workers it spawns inherit it
    metrics_dir, ours = prepare_multiprocess_dir()
    try:
        uvicorn.run("service.serving.workers:app_from_env", factory=True, workers=workers, host=settings.host,
                    port=settings.port, log_level=settings.log_level, access_log=False,
                    timeout_graceful_shutdown=10, log_config=None)
    finally:
        if ours:
            shutil.rmtree(metrics_dir, ignore_errors=True)
