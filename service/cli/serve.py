"""`service serve --artifacts DIR [--host H] [--port P] [--workers N]`: the HTTP service
(service/serving/workers.py runs uvicorn; service/api/app.py is the app)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from service.cli.options import add_threads_arg


def cmd_serve(a: argparse.Namespace) -> int:
    import signal

    from service.serving.workers import serve

    # SIGTERM (Kubernetes' stop) is a request, not an error: uvicorn drains in-flight requests, then
    # re-raises the signal it caught to the handler found here, which exits 0 (the default handler
    # would kill the process, status -15, after a clean drain). Before uvicorn starts: exit at once.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    overrides: dict[str, Any] = {"artifacts": a.artifacts, "host": a.host, "port": a.port,
                                 "threads": a.threads or None}  # 0: SERVICE_THREADS, else auto
    serve(overrides, workers=a.workers)  # docs/SERVING.md: workers, metrics, memory
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("serve", help="serve DIR/current over HTTP")
    s.add_argument("--artifacts", type=Path)
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (docs/SERVING.md)")
    add_threads_arg(s, help="CPU threads of all workers together (0: SERVICE_THREADS, else the CPUs this "
                    "process may use)")
    s.set_defaults(func=cmd_serve)
