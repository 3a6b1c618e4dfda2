"""Domain errors (no HTTP in them; service/api/errors.py maps them to status codes) and the
client-safe text of a message."""

from __future__ import annotations

import re
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
