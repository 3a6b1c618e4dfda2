"""The CPU budget (service/cpu_budget.py): read from the affinity mask and the cgroup quota (fake
cgroup trees, v1 and v2), overridden by --threads / SERVICE_THREADS, and applied by the CLI's entry
points before the libraries start their pools (a child process under a one-CPU affinity)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from service.cpu_budget import PASSIVE_ENV, THREAD_ENV, cgroup_cpu_quota, cpu_budget, thread_environment


def fake_cgroup(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A /proc/self/cgroup file and a /sys/fs/cgroup tree: {relative path: content}."""
    (tmp_path / "proc_cgroup").write_text(proc)
    root = tmp_path / "cgroup"
    root.mkdir()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    return tmp_path / "proc_cgroup", root


def test_v2_quota_is_the_tightest_over_the_cgroup_and_its_parents(tmp_path: Path) -> None:
    proc, root = fake_cgroup(tmp_path, "0::/kubepods/pod1/ctr\n", {
        "kubepods/pod1/ctr/cpu.max": "max 100000",  # the container: no limit of its own
        "kubepods/pod1/cpu.max": "150000 100000",  # the pod: 1.5 CPUs
        "kubepods/cpu.max": "400000 100000",
    })
    assert cgroup_cpu_quota(proc, root) == 1.5
    budget = cpu_budget(affinity=4, machine=4, proc_cgroup=proc, root=root)
    assert (budget.threads, budget.source, budget.quota) == (1, "cgroup quota", 1.5)  # floor: a 2nd would be throttled
    assert budget.passive and "1.5 CPUs" in budget.describe()
    # the affinity is tighter than the quota: it decides
    assert cpu_budget(affinity=1, machine=4, proc_cgroup=proc, root=root).source == "affinity"


def test_v2_own_cgroup_mounted_at_the_root(tmp_path: Path) -> None:
    # a container with its own cgroup namespace ("0::/"), or without one (the host's path, which
    # does not exist under the container's mount): the root's cpu.max is the container's
    for i, line in enumerate(("0::/\n", "0::/kubepods/burstable/pod9/abc\n")):
        (tmp_path / str(i)).mkdir()
        proc, root = fake_cgroup(tmp_path / str(i), line, {"cpu.max": "300000 100000"})
        assert cgroup_cpu_quota(proc, root) == 3.0
        assert cpu_budget(affinity=8, machine=8, proc_cgroup=proc, root=root).threads == 3
    (tmp_path / "none").mkdir()
    proc, root = fake_cgroup(tmp_path / "none", "0::/user.slice\n", {"user.slice/cpu.max": "max 100000"})
    assert cgroup_cpu_quota(proc, root) is None
    assert cpu_budget(affinity=2, machine=2, proc_cgroup=proc, root=root).threads == 2
    assert cgroup_cpu_quota(tmp_path / "missing", root) is None  # no /proc (not Linux)


def test_v1_cfs_quota_and_a_hybrid_hierarchy(tmp_path: Path) -> None:
    for d in ("v1", "hybrid"):
        (tmp_path / d).mkdir()
    proc, root = fake_cgroup(tmp_path / "v1", "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
        "memory/docker/abc/cpu.cfs_quota_us": "1000",  # not the cpu controller: ignored
    })
    assert cgroup_cpu_quota(proc, root) == 0.5
    assert cpu_budget(affinity=2, machine=2, proc_cgroup=proc, root=root).threads == 1  # at least one
    # v1 cpu without a limit (-1) beside the unified hierarchy of a hybrid system, which has one
    proc, root = fake_cgroup(tmp_path / "hybrid", "1:cpu:/\n0::/job\n", {
        "cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000",
        "unified/job/cpu.max": "200000 100000",
    })
    assert cgroup_cpu_quota(proc, root) == 2.0


def test_override_and_share(tmp_path: Path) -> None:
    proc, root = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "100000 100000"})
    budget = cpu_budget(3, affinity=1, machine=4, proc_cgroup=proc, root=root)
    assert (budget.threads, budget.source) == (3, "override")  # the operator's word wins
    assert cpu_budget(0, 2, affinity=5, machine=8, proc_cgroup=tmp_path / "none").threads == 2  # 5 CPUs, 2 processes
    assert cpu_budget(0, 4, affinity=2, machine=2, proc_cgroup=tmp_path / "none").threads == 1
    with pytest.raises(ValueError, match="threads: -1"):
        cpu_budget(-1)


def test_environment_sizes_the_pools_and_waits_passively_only_when_sharing(tmp_path: Path) -> None:
    none = tmp_path / "none"
    shared = cpu_budget(affinity=1, machine=2, proc_cgroup=none)
    env = thread_environment(shared, {"OMP_NUM_THREADS": "2"})
    assert all(env[k] == "1" for k in THREAD_ENV) and env["OMP_WAIT_POLICY"] == PASSIVE_ENV["OMP_WAIT_POLICY"]
    assert "OMP_WAIT_POLICY" not in thread_environment(shared, {"OMP_WAIT_POLICY": "ACTIVE"})  # asked: kept
    whole = thread_environment(cpu_budget(affinity=2, machine=2, proc_cgroup=none), {})
    assert whole["OMP_NUM_THREADS"] == "2" and "OMP_WAIT_POLICY" not in whole
    assert thread_environment(cpu_budget(affinity=2, machine=2, proc_cgroup=none), {}, passive=True)[
        "OMP_WAIT_POLICY"] == "PASSIVE"  # the build commands ask for it


PROBE = """
import json, os, sys, threading
import service.cli, service.cli.build, service.cli.stages, uvicorn

def report(*args, **kwargs):
    import faiss, torch
    out = {}
    t = threading.Thread(target=lambda: out.update(faiss_other_thread=faiss.omp_get_max_threads()))
    t.start(); t.join()  # a thread the library did not see configured: its default comes from the environment
    out.update(torch=torch.get_num_threads(), interop=torch.get_num_interop_threads(),
               faiss=faiss.omp_get_max_threads(),
               env={k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                   "OMP_WAIT_POLICY", "SERVICE_THREADS")})
    print("PROBE " + json.dumps(out))
    return 0

service.cli.build.cmd_build_index = report  # the parser picks the command functions when main() builds it
service.cli.stages.cmd_train = report
uvicorn.run = report  # serve: everything up to the server's start
sys.exit(service.cli.main(sys.argv[1:]))
"""


def run_on_one_cpu(args: list[str], tmp_path: Path, **env: str) -> dict:
    """The CLI in a child process allowed one CPU (taskset, else sched_setaffinity), with a stale
    OMP_NUM_THREADS=2 in its environment (what the budget must replace)."""
    cpu = min(os.sched_getaffinity(0))
    cmd = [sys.executable, "-c", PROBE, *args]
    kw: dict = {}
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    else:
        kw["preexec_fn"] = lambda: os.sched_setaffinity(0, {cpu})
    full_env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "SERVICE_THREADS", "KMP_BLOCKTIME")}
    full_env.update({"OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT), **env})
    out = subprocess.run(cmd, env=full_env, cwd=tmp_path, capture_output=True, text=True, timeout=120, **kw)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(s for s in out.stdout.splitlines() if s.startswith("PROBE "))
    return json.loads(line.removeprefix("PROBE "))


BUILD = ["--catalog", "c.jsonl", "--artifacts", "art"]
needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")


@needs_affinity
def test_build_index_on_one_cpu_runs_one_thread_per_pool(tmp_path: Path) -> None:
    got = run_on_one_cpu(["build-index", *BUILD], tmp_path)
    assert (got["torch"], got["interop"], got["faiss"], got["faiss_other_thread"]) == (1, 1, 1, 1)
    assert got["env"]["OMP_NUM_THREADS"] == got["env"]["OPENBLAS_NUM_THREADS"] == got["env"]["MKL_NUM_THREADS"] == "1"
    if (os.cpu_count() or 1) > 1:  # one CPU of several: the others belong to someone else
        assert got["env"]["OMP_WAIT_POLICY"] == "PASSIVE"


@needs_affinity
def test_train_threads_option_overrides_the_budget(tmp_path: Path) -> None:
    got = run_on_one_cpu(["train", *BUILD, "--threads", "3"], tmp_path)
    assert (got["torch"], got["faiss"], got["faiss_other_thread"], got["env"]["OMP_NUM_THREADS"]) == (3, 3, 3, "3")
    assert got["env"]["OMP_WAIT_POLICY"] == "PASSIVE"  # a build waits passively whatever its budget


@pytest.mark.slow
@needs_affinity
def test_serve_sizes_its_pools_and_splits_them_between_workers(tmp_path: Path) -> None:
    got = run_on_one_cpu(["serve", "--artifacts", "art"], tmp_path)
    assert (got["torch"], got["faiss"], got["faiss_other_thread"], got["env"]["OMP_NUM_THREADS"]) == (1, 1, 1, "1")
    # SERVICE_THREADS is the total of all workers: each of 2 gets half, in the environment they inherit
    got = run_on_one_cpu(["serve", "--artifacts", "art", "--workers", "2"], tmp_path, SERVICE_THREADS="4")
    assert got["env"]["SERVICE_THREADS"] == got["env"]["OMP_NUM_THREADS"] == "2"
