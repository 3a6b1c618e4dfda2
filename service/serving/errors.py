"""Domain errors (no HTTP in them) and the one table that maps them to status codes."""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from pathlib import Path


class ServiceError(Exception):
    """Base class; `str(err)` is the message shown to the client (no paths, no stack traces)."""


class InvalidRequest(ServiceError):
    pass


class NotReady(ServiceError):
    pass


class Overloaded(ServiceError):
    pass


class DeadlineExceeded(ServiceError):
    pass


class Unauthorized(ServiceError):
    pass


class AdminDisabled(ServiceError):
    pass


class ReloadFailed(ServiceError):
    pass


class PayloadTooLarge(ServiceError):
    pass


class NotFound(ServiceError):
    pass


class UnsupportedMediaType(ServiceError):
    pass


STATUS: dict[type[ServiceError], int] = {
    InvalidRequest: 422,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    NotFound: 404,
    Unauthorized: 401,
    AdminDisabled: 404,
    Overloaded: 429,
    NotReady: 503,
    DeadlineExceeded: 504,
    ReloadFailed: 409,
}


def error_body(code: str, message: str) -> bytes:
    """THE error body of every response: `{"error": CamelCaseCode, "message": text for a person}`."""
    return json.dumps({"error": code, "message": message}).encode()


def http_error_code(status: int) -> str:
    """A status without a domain error (a router's 404/405): its phrase in CamelCase, `MethodNotAllowed`."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "HttpError"
    return "".join(word.capitalize() for word in re.split(r"[\s-]+", phrase) if word)


def status_of(err: ServiceError) -> int:
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


_ABS_PATH = re.compile(r"(?<![\w.~:/])/(?:[^/\s:'\"(),]+/)+[^/\s:'\"(),]*")


def public_message(text: str, artifacts: str | Path | None = None) -> str:
    """`text` fit for a client: the artifact folder is written `DIR` (as in the docs), any other
    absolute file-system path is cut to its last part, so no response shows a server path:
    `/srv/a/versions/v2/index.faiss: missing` -> `DIR/versions/v2/index.faiss: missing`."""
    if artifacts is not None:
        for root in sorted({str(artifacts), str(Path(artifacts).resolve())}, key=len, reverse=True):
            if root.rstrip("/") not in ("", "."):
                text = text.replace(root.rstrip("/"), "DIR")
    return _ABS_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
