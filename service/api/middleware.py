"""Pure-ASGI middleware (cheaper than BaseHTTPMiddleware on the hot path):
request ids, access metrics and logs, the request body size limit, the 429 of a full queue, and
the 500 of an unhandled error (with its request id)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from service.api.errors import error_body
from service.serving.errors import PayloadTooLarge
from service.serving.logctx import request_id_var
from service.serving.metrics import Metrics

Scope = dict[str, Any]
access_log = logging.getLogger("service.access")
error_log = logging.getLogger("service.api.app")


def _error(status: int, code: str, message: str, request_id: str) -> tuple[dict, dict]:
    body = error_body(code, message)
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"x-request-id", request_id.encode())]}
    return start, {"type": "http.response.body", "body": body}


class RequestMiddleware:
    """Adds X-Request-ID, enforces max_body_bytes (413), records latency by route and status."""

    def __init__(self, app: Any, metrics: Metrics, max_body_bytes: int,
                 shed: Callable[[str], str | None] | None = None, body_limits: dict[str, int] | None = None):
        self.app, self.metrics, self.max_body = app, metrics, max_body_bytes
        # path -> its own body limit (POST /search/image carries a photo); every other path: max_body_bytes
        self.body_limits = dict(body_limits or {})
        # shed(path) -> a 429 message when that route's queue is full: answered here, before routing,
        # validation and the handler, so a 429 costs the event loop almost nothing under overload
        self.shed = shed

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if given and len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        rid_token = request_id_var.set(request_id)  # every log line of this request names it
        status_box = {"status": 500}
        length = headers.get(b"content-length")
        max_body = self.body_limits.get(scope.get("path", ""), self.max_body) if self.body_limits else self.max_body
        if length is not None and (not length.isdigit() or int(length) > max_body):
            first, body = _error(413, PayloadTooLarge.__name__, self._too_large(max_body), request_id)
            await send(first)
            await send(body)
            self._record(scope, 413, start, request_id)
            return
        receive_app = receive
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            # Bodies are small (a query and filters): read the whole body first, so an oversized
            # one is refused before any handler runs, whether or not it declared its length.
            chunks, total, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > max_body:
                    first, body = _error(413, PayloadTooLarge.__name__, self._too_large(max_body), request_id)
                    await send(first)
                    await send(body)
                    self._record(scope, 413, start, request_id)
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
            buffered, replayed = b"".join(chunks), False

            async def receive_app() -> Any:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": buffered, "more_body": False}
                return await receive()

        refusal = self.shed(scope.get("path", "")) if self.shed is not None else None
        if refusal is not None:
            first, body = _error(429, "Overloaded", refusal, request_id)
            first["headers"].append((b"retry-after", b"1"))
            await send(first)
            await send(body)
            self._record(scope, 429, start, request_id, scope.get("path"))
            request_id_var.reset(rid_token)
            return

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                status_box["status"], status_box["started"] = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive_app, send_with_id)
        except Exception:
            # An unhandled error: answered here rather than by Starlette's outermost error middleware,
            # so the 500 carries X-Request-ID and the traceback is logged under the same id. Nothing
            # internal in the body. Once the response has started, nothing more can be sent.
            if status_box.get("started"):
                raise
            error_log.exception("unhandled error on %s", scope.get("path", ""))
            first, body = _error(500, "InternalError", "internal error", request_id)
            await send(first)
            await send(body)
        finally:
            if scope["state"].get("client_disconnected"):
                status_box["status"] = 499  # client closed the request (nginx's code); nothing was sent
            self._record(scope, status_box["status"], start, request_id)
            request_id_var.reset(rid_token)

    def _too_large(self, limit: int) -> str:
        if limit != self.max_body:
            return (f"request body over {limit} bytes (a photo of at most max_image_bytes, base64 included, plus "
                    "max_body_bytes); send a smaller photo")
        return f"request body over {self.max_body} bytes (max_body_bytes); send a smaller request"

    def _record(self, scope: Scope, status: int, start: float, request_id: str, path: str | None = None) -> None:
        route = scope.get("route")
        path = path or getattr(route, "path", None) or "unmatched"
        elapsed = time.perf_counter() - start
        method = scope.get("method", "")
        self.metrics.requests.labels(path, method, str(status)).inc()
        self.metrics.latency.labels(path, method, str(status)).observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(json.dumps({"request_id": request_id, "method": method, "route": path,
                                        "status": status, "ms": round(elapsed * 1000, 3)}))
