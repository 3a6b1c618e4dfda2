"""The CPU budget: how many threads this process may keep busy, and every thread pool sized to it.

A process sees all the machine's cores in `os.cpu_count()`, but it may use fewer: its CPU affinity
(`taskset`, a cpuset, a Kubernetes static CPU policy) and its cgroup's CPU quota (a Kubernetes CPU
limit: cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`). torch, OpenMP (torch's
libgomp and faiss' own copy), OpenBLAS/MKL (numpy, scipy), onnxruntime and the tokenizers' rayon
pool each start one thread per core by default. More busy threads than the budget are not free:
a parallel region ends only when its last thread has run, and a thread waiting for a core stalls
the others at the barrier, which by default spin while they wait, on the cores the missing thread
needs (docs/PERFORMANCE.md, "Builds that share cores").

So the entry points (`service build-index` and the other build commands, `service serve` and its
workers) call `configure_threads` first, before torch or numpy are imported:

- budget = `--threads N` / SERVICE_THREADS when given (> 0), else min(affinity, floor(quota)), at
  least 1 (a quota of 1.5 CPUs gets 1 thread: a second one would be throttled for half of every
  period, and a throttled thread stalls the others as above);
- OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS, ... are set to it (a value already in
  the environment is replaced: `--threads` / SERVICE_THREADS is the one place to choose), so the
  pools that read them when their library loads are sized right;
- OMP_WAIT_POLICY=PASSIVE and KMP_BLOCKTIME=0: an idle OpenMP thread sleeps at once instead of
  spinning for a while, so it gives its core back to the thread the region is waiting for. The
  server does so when its budget is below the machine's CPUs (it shares the machine by
  construction; a latency-bound server alone on its cores keeps the spin); the build commands
  always do: a build is a batch job of large operations, where a sleeping thread's wake-up is
  noise, and two builds on one machine each see all the cores, so the rule above would not catch
  the case that costs the most (docs/PERFORMANCE.md). An OMP_WAIT_POLICY already in the
  environment is kept: that is how to ask for or against it in any case;
- then torch.set_num_threads / set_num_interop_threads and faiss.omp_set_num_threads (this thread;
  the environment covers the others). onnxruntime sessions take torch.get_num_threads().
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("service.cpu_budget")

# Read by the libraries when they load (or create their pool): set before the import.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "RAYON_NUM_THREADS")
PASSIVE_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}  # libgomp / Intel OpenMP: no spin-wait

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuBudget:
    threads: int  # the budget: threads of each pool
    source: str  # "override" | "affinity" | "cgroup quota": what set it
    affinity: int  # CPUs in the affinity mask
    quota: float | None  # cgroup CPU quota in CPUs (None: no limit)
    machine: int  # os.cpu_count()

    @property
    def passive(self) -> bool:
        """Fewer threads than the machine has CPUs: others use the rest, so idle threads must not spin."""
        return self.threads < self.machine

    def describe(self) -> str:
        quota = "no quota" if self.quota is None else f"quota {self.quota:g} CPUs"
        return (f"{self.threads} thread{'s' if self.threads != 1 else ''} ({self.source}; affinity "
                f"{self.affinity} of {self.machine} CPUs, {quota})")


def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity mask; all of them where there is no such call)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _ancestors(path: str) -> list[str]:
    """'/a/b' -> ['a/b', 'a', '']: a cgroup and the ones above it (each parent's limit applies too)."""
    parts = [p for p in path.strip().split("/") if p]
    return ["/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")  # "max 100000" or "150000 100000"
    if not text:
        return None
    fields = text.split()
    if fields[0] == "max" or len(fields) != 2:
        return None
    quota, period = int(fields[0]), int(fields[1])
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if not quota or not period:
        return None
    q, p = int(quota), int(period)
    return q / p if q > 0 and p > 0 else None  # -1: no limit


def cgroup_cpu_quota(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> float | None:
    """The tightest CPU quota (in CPUs) over this process's cgroup and the ones above it, cgroup v2
    (`0::PATH` -> ROOT[/unified]/PATH/cpu.max) or v1 (`N:cpu,cpuacct:PATH` -> ROOT/cpu,cpuacct/PATH/
    cpu.cfs_quota_us); None when there is none. A container without its own cgroup namespace
    shows the host's path but has its own cgroup mounted at ROOT, so ROOT itself is read too."""
    text = _read(proc_cgroup)
    if not text:
        return None
    found: list[float] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and not controllers:  # v2 (the unified hierarchy)
            mounts, reader = [root, root / "unified"], _v2_quota
        elif "cpu" in controllers.split(","):  # v1: the cpu controller, mounted alone or co-mounted
            mounts, reader = [root / controllers, root / "cpu"], _v1_quota
        else:
            continue
        for mount in dict.fromkeys(mounts):
            for sub in _ancestors(path):
                folder = mount / sub if sub else mount
                if folder.is_dir() and (quota := reader(folder)) is not None:
                    found.append(quota)
    return min(found) if found else None


def cpu_budget(override: int = 0, share: int = 1, *, affinity: int | None = None, machine: int | None = None,
               proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> CpuBudget:
    """The budget: `override` when > 0, else min(affinity, floor(quota)); divided between `share`
    processes that split it (serve's workers, torchrun's local ranks); at least 1. `affinity`,
    `machine` and the cgroup files default to this process's (tests pass their own)."""
    if override < 0:
        raise ValueError(f"threads: {override} (0 = from the CPUs this process may use, or N > 0)")
    if share < 1:
        raise ValueError(f"share: {share} processes (>= 1)")
    affinity = affinity if affinity is not None else affinity_cpus()
    quota = cgroup_cpu_quota(proc_cgroup, root)
    machine = machine if machine is not None else (os.cpu_count() or affinity)
    if override > 0:
        threads, source = override, "override"
    elif quota is not None and math.floor(quota) < affinity:
        threads, source = max(1, math.floor(quota)), "cgroup quota"
    else:
        threads, source = affinity, "affinity"
    if share > 1:
        threads, source = max(1, threads // share), f"{source} / {share} processes"
    return CpuBudget(threads, source, affinity, quota, machine)


def thread_environment(budget: CpuBudget, environ: MutableMapping[str, str],
                       passive: bool | None = None) -> dict[str, str]:
    """The variables to set for `budget` (pure): the pool sizes, and the passive wait policy when
    `passive` (None: when the budget is below the machine's CPUs), unless OMP_WAIT_POLICY is
    already in `environ`."""
    env = dict.fromkeys(THREAD_ENV, str(budget.threads))
    if (budget.passive if passive is None else passive) and "OMP_WAIT_POLICY" not in environ:
        env.update(PASSIVE_ENV)
    return env


def size_pools(threads: int) -> None:
    """torch's intra- and inter-op pools and faiss' OpenMP threads (of the calling thread)."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    try:  # only before any inter-op work has started, once per process
        torch.set_num_interop_threads(threads)
    except RuntimeError as e:
        log.debug("torch inter-op threads already fixed (%s); left at %d", e, torch.get_num_interop_threads())
    faiss.omp_set_num_threads(threads)


def configure_threads(override: int = 0, share: int | None = None, environ: MutableMapping[str, str] | None = None,
                      pools: bool = True, passive: bool | None = None) -> CpuBudget:
    """Size every pool of this process to its CPU budget (module docstring). Call it first, before
    torch and numpy are imported. `share`: processes splitting the budget (default: torchrun's
    LOCAL_WORLD_SIZE when the budget is automatic; an explicit `override` is this process's own).
    `pools=False` sets the environment only (a supervisor whose child processes do the work);
    `passive`: OpenMP's passive wait always (True: the build commands) or by the rule (None)."""
    environ = os.environ if environ is None else environ
    if share is None:
        share = 1 if override else int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    budget = cpu_budget(override, share)
    env = thread_environment(budget, environ, passive)
    replaced = {k: environ[k] for k in THREAD_ENV if environ.get(k) not in (None, env[k])}
    if replaced:
        log.info("thread environment: replacing %s (use --threads / SERVICE_THREADS to choose)",
                 ", ".join(f"{k}={v}" for k, v in replaced.items()))
    environ.update(env)
    if pools:
        size_pools(budget.threads)
    log.info("cpu budget: %s; OMP_WAIT_POLICY=%s", budget.describe(), environ.get("OMP_WAIT_POLICY", "(default)"))
    return budget
