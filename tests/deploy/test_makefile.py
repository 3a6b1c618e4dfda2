"""The README's two commands, as make would run them (dry run: `make -n`, nothing executed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(*args: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")} | env
    return subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, env=environ, check=True,
                          capture_output=True, text=True).stdout


def serve_line(out: str) -> str:
    return next(line for line in out.splitlines() if " serve " in line)


def test_demo_port_and_host_from_make_or_the_service_environment() -> None:
    assert "--host 127.0.0.1 --port 8000" in serve_line(dry_run("demo"))
    assert "--port 8080" in serve_line(dry_run("demo", "PORT=8080"))
    line = serve_line(dry_run("demo", SERVICE_PORT="9001", SERVICE_HOST="0.0.0.0"))
    assert "--host 0.0.0.0 --port 9001" in line


def test_demo_builds_the_short_schedule_and_the_stamp_names_the_extras() -> None:
    out = dry_run("demo")
    build = next(line for line in out.splitlines() if "--epochs" in line)
    assert "--epochs 2" in build
    assert "--epochs 4" in next(line for line in dry_run("demo", "DEMO_EPOCHS=4").splitlines() if "--epochs" in line)
    assert ".venv/.installed-serve-train-dev" in out


def test_test_fast_runs_the_suite_without_the_slow_tests() -> None:
    line = next(line for line in dry_run("test-fast").splitlines() if "pytest" in line)
    assert "-m pytest" in line and ('-m "not slow"' in line or "-m 'not slow'" in line), line
