"""The two images, checked without Docker (no engine on CI): hadolint on both Dockerfiles, their
structure (multi-stage, non-root, no build tools or sources in the runtime stage, artifacts not
baked in, the entry point is a real `service` subcommand), the .dockerignore allowlist, and the
dependency steps themselves run under /bin/sh against the real pyproject.toml and lock file (the
CUDA image's lock rewrite and its same-CUDA-major guard included)."""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_helpers import DOCKERFILES, ROOT, build_args, dockerfile_instructions, stages, tool

from service.serving.settings import Settings


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def subcommands() -> dict[str, argparse.ArgumentParser]:
    from service.cli import parser

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in stage:
        if instr == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


# ---------------------------------------------------------------- lint


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str, tmp_path: Path) -> None:
    # cwd = an empty folder: no .hadolint.yaml can relax the rules; every severity fails.
    out = subprocess.run([tool("hadolint"), "--no-color", "-f", "json", "--failure-threshold", "style",
                          str(ROOT / name)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    findings = json.loads(out.stdout or "[]")
    assert out.returncode == 0 and not findings, "\n".join(
        f"{name}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings) or out.stderr


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """Negative control: the same invocation flags an unpinned base image and apt without pins."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\n")
    out = subprocess.run([tool("hadolint"), "--no-color", "-f", "json", "--failure-threshold", "style", str(bad)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    codes = {f["code"] for f in json.loads(out.stdout)}
    assert out.returncode != 0 and {"DL3007", "DL3008"} <= codes, codes


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runtime_stage_is_lean_non_root_and_serves(name: str) -> None:
    path = ROOT / name
    all_stages = stages(path)
    assert len(all_stages) >= 2, "multi-stage: build, then runtime"
    build, runtime = all_stages[0], all_stages[-1]
    assert build[0][1].endswith(" AS build") and runtime[0][1].split()[0] == build[0][1].split()[0], \
        "the runtime stage starts again from the same (slim) base image"

    instrs = [i for i, _ in runtime]
    runs = [a for i, a in runtime if i == "RUN"]
    # No package manager, compiler, pip or source copy in the runtime stage: only the user and the venv.
    assert all(a.startswith("useradd ") for a in runs), runs
    assert not re.search(r"\b(apt-get|apk|gcc|g\+\+|make|build-essential|git|pip)\b", " ".join(runs))
    copies = [a for i, a in runtime if i == "COPY"]
    assert copies and all(a.startswith("--from=build ") for a in copies), copies
    assert "VOLUME" not in instrs and not any("artifacts" in a.split()[-2] for a in copies), "artifacts are mounted"

    # Non-root, numeric (runAsNonRoot can check it), the same uid the pods run as.
    user = next(a for i, a in reversed(runtime) if i == "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert f"--uid {uid}" in runs[0]

    env = env_of(runtime)
    assert env["SERVICE_ARTIFACTS"] == "/artifacts" and env["HOME"].startswith("/tmp")
    fields = set(Settings.model_fields)
    for key in env:
        if key.startswith("SERVICE_"):
            assert key.removeprefix("SERVICE_").lower() in fields, f"{name}: ENV {key} is not a Settings field"
    port = int(env.get("SERVICE_PORT", Settings.model_fields["port"].default))
    assert ("EXPOSE", str(port)) in runtime

    entry = json.loads(next(a for i, a in runtime if i == "ENTRYPOINT"))
    cmd = json.loads(next(a for i, a in runtime if i == "CMD"))
    assert entry == ["service"], "exec form: `service` is PID 1 and receives SIGTERM"
    assert cmd[0] in subcommands() and cmd == ["serve"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dependencies_come_from_the_lock(name: str) -> None:
    runs = [a for i, a in dockerfile_instructions(ROOT / name) if i == "RUN"]
    commands = [c.strip() for run in runs for c in run.split("&&")]
    installs = [c.removeprefix("pip install ") for c in commands if c.startswith("pip install ")]
    assert installs
    for install in installs:
        if "--no-deps" in install:
            assert install.split()[-1] == ".", install  # the project itself, its dependencies already in
        else:
            assert re.search(r"-c constraints(-cuda)?\.txt", install), f"not under the lock: pip install {install}"
    assert "--no-build-isolation" in " ".join(runs), "the project builds with the locked setuptools, not a fresh download"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a folder pattern covers its files."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes):
            ignored = not neg
    return ignored


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    copied = set()
    for name in DOCKERFILES:
        for instr, args in dockerfile_instructions(ROOT / name):
            if instr == "COPY" and not args.startswith("--from"):
                copied.update(args.split()[:-1])
    assert copied >= {"pyproject.toml", "constraints.txt", "README.md", "model", "index", "service"}
    for src in copied:
        assert (ROOT / src).exists(), src
        assert not dockerignored(src, patterns), f"{src} is COPY'd but .dockerignore drops it"
        assert not dockerignored(f"{src}/x.py" if (ROOT / src).is_dir() else src, patterns)
    for never in (".git/config", ".venv/bin/python", "var/artifacts/current", "artifacts/current", "data/catalog.jsonl",
                  "tests/conftest.py", "k8s/base/deployment.yaml", ".env", "model/__pycache__/x.pyc", "secrets.txt"):
        assert dockerignored(never, patterns), f"{never} would reach the build context"


# ---------------------------------------------------------------- the dependency steps, run for real


def run_requirements_step(name: str, tmp_path: Path) -> str:
    """Run the RUN step that writes requirements.txt (up to `&& pip install`) under /bin/sh, with the
    Dockerfile's ARG defaults in the environment, in a folder holding the real pyproject + lock."""
    step = next(a for i, a in dockerfile_instructions(ROOT / name) if i == "RUN" and "> requirements.txt" in a)
    script = step.split("&& pip install")[0]
    for f in ("pyproject.toml", "constraints.txt"):
        (tmp_path / f).write_text((ROOT / f).read_text())
    env = {k: v for k, v in build_args(ROOT / name).items() if "$" not in v}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    out = subprocess.run(["/bin/sh", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return (tmp_path / "requirements.txt").read_text()


def test_cpu_image_installs_the_projects_dependencies(tmp_path: Path) -> None:
    import tomllib

    reqs = run_requirements_step("Dockerfile", tmp_path).split()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = project["dependencies"] + project["optional-dependencies"]["serve"] + project["optional-dependencies"]["train"]
    assert reqs == [r.replace(" ", "") for r in expected]
    assert lock()["torch"].endswith("+cpu"), "the lock's torch is the CPU build the CPU image installs"


def test_cuda_image_swaps_faiss_and_torch_for_one_cuda_major(tmp_path: Path) -> None:
    reqs = run_requirements_step("Dockerfile.cuda", tmp_path).split()
    assert "faiss-gpu" in reqs and not any(r.startswith("faiss-cpu") for r in reqs)
    cuda_lock = {}
    for line in (tmp_path / "constraints-cuda.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            k, _, v = line.partition("==")
            cuda_lock[k.lower()] = v
    pins, tag = lock(), build_args(ROOT / "Dockerfile.cuda")["CUDA_TAG"]
    assert re.fullmatch(r"cu12\d", tag), "CUDA 12: the only major with faiss GPU wheels on PyPI"
    assert cuda_lock["torch"] == pins["torch"].split("+")[0] + "+" + tag
    assert cuda_lock["faiss-gpu"] == pins["faiss-cpu"], "faiss-gpu at the lock's faiss version"
    assert "faiss-cpu" not in cuda_lock
    assert {k: v for k, v in cuda_lock.items() if k not in ("torch", "faiss-gpu")} == \
        {k: v for k, v in pins.items() if k not in ("torch", "faiss-cpu")}


def fake_site(tmp_path: Path, torch_cuda: str | None, faiss_requires: str) -> Path:
    """A folder that shadows torch (only torch.version.cuda) and holds faiss-gpu's metadata."""
    site = tmp_path / f"site-{torch_cuda}-{abs(hash(faiss_requires))}"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(f"class version:\n    cuda = {torch_cuda!r}\n")
    info = site / "faiss_gpu-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: faiss-gpu\nVersion: 1.0\n"
                                   f"Requires-Dist: numpy>=1.25\nRequires-Dist: {faiss_requires}\n")
    return site


@pytest.mark.parametrize(("torch_cuda", "faiss_requires", "ok"), [
    ("12.8", "nvidia-cuda-runtime-cu12<13,>=12.6", True),
    ("13.0", "nvidia-cuda-runtime-cu12<13,>=12.6", False),
    (None, "nvidia-cuda-runtime-cu12<13,>=12.6", False),
    ("12.8", "nvidia-cuda-runtime-cu11>=11.8", False),
])
def test_cuda_major_guard(tmp_path: Path, torch_cuda: str | None, faiss_requires: str, ok: bool) -> None:
    step = next(a for i, a in dockerfile_instructions(ROOT / "Dockerfile.cuda")
                if i == "RUN" and "md.requires('faiss-gpu')" in a)
    site = fake_site(tmp_path, torch_cuda, faiss_requires)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(site)}
    out = subprocess.run(["/bin/sh", "-c", step], env=env, capture_output=True, text=True, timeout=60)
    assert (out.returncode == 0) == ok, out.stderr
