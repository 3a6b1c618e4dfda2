"""Request ids in every log line: a context variable, a logging filter, a JSON formatter.

The request middleware sets `request_id_var` for the life of a request; asyncio copies the context
into every task the request starts, and the micro-batcher sets it in its worker thread to the ids
of the batch it runs. `RequestIdFilter` copies the value onto each record (as `request_id`), so a
plain format string can print `%(request_id)s` and `JsonFormatter` writes it as a field. The filter
sits on the handlers (not on loggers), so records from every library logger get the id too.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging

# "-" outside a request (startup, reload poller, background threads).
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id` (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, request_id, message (+ exc when present).

    A message that is itself a JSON object (the access log's) is merged in, not nested as a string.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", request_id_var.get()),
        }
        message = record.getMessage()
        merged = False
        if message.startswith("{"):
            try:
                body = json.loads(message)
            except ValueError:
                body = None
            if isinstance(body, dict):
                out.update({k: v for k, v in body.items() if k not in ("ts", "level", "logger")})
                merged = True
        if not merged:
            out["message"] = message
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Root handler with the request-id filter; fmt: json | text. Replaces existing root handlers."""
    if fmt not in ("json", "text"):
        raise ValueError(f"log_format: {fmt!r} is not json or text")
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):  # uvicorn's own lines go through the same handler
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
