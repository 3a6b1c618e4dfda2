"""`service serve` as a real subprocess on a free loopback port (shared by the tests that need a
server the way Kubernetes runs it: shutdown, the browser test)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def wait_ready(server: Server, timeout_s: float = 180.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if server.proc.poll() is not None:
            raise AssertionError(f"`service serve` exited with {server.proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready after {timeout_s}s:\n{server.output()}")


@contextmanager
def serve(artifacts: Path, log: Path, env: dict[str, str]) -> Iterator[Server]:
    """Start `python -m service.cli serve` over `artifacts` with `env` added, wait until /readyz
    is 200, yield it, and stop it (terminate, then kill) on the way out."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--artifacts", str(artifacts),
             "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
        )
    s = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(s)
        yield s
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
