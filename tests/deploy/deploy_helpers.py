"""Helpers of the deployment tests (imported by conftest.py and the tests): paths, the tools from
the virtualenv (hadolint, kubectl, from PyPI wheels in the `dev` extra), rendering with `kubectl
kustomize`, and accessors for rendered objects. A test skips, saying why, when a tool cannot run."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu", "cpu/pipeline", "gpu/pipeline")
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")


VERSION_ARGS = {"kubectl": ["version", "--client"], "hadolint": ["--version"]}


@functools.cache
def _runnable(name: str) -> tuple[str | None, str]:
    here = Path(sys.executable).parent / name
    path = str(here) if here.exists() else shutil.which(name)
    if path is None:
        return None, f"{name} is not installed (the `dev` extra brings it: pip install -e '.[dev]')"
    try:
        subprocess.run([path, *VERSION_ARGS[name]], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{name} at {path} cannot run on this machine: {e}"
    return path, ""


def tool(name: str) -> str:
    """The tool beside this interpreter (the virtualenv's bin/), else on PATH; skip if it cannot run."""
    path, why = _runnable(name)
    if path is None:
        pytest.skip(why)
    return path


def kustomize(directory: Path) -> list[dict]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {directory}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pod_spec(obj: dict) -> dict | None:
    """The pod spec of a workload (Deployment, Job, CronJob), else None."""
    kind = obj["kind"]
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def pod_labels(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return obj["spec"]["template"]["metadata"]["labels"]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined the way Docker joins them
    (the backslash and the newline removed), comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        full = pending + line
        pending = ""
        instr, _, args = full.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The build stages of a Dockerfile: each a list of instructions starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for instr, args in dockerfile_instructions(path):
        if instr == "FROM":
            result.append([])
        if result:
            result[-1].append((instr, args))
    return result


def build_args(path: Path) -> dict[str, str]:
    """ARG defaults of a Dockerfile (later stages do not override earlier names here)."""
    found: dict[str, str] = {}
    for instr, args in dockerfile_instructions(path):
        if instr == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            found.setdefault(name, value)
    return found
