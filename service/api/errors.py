"""HTTP errors: the status of each domain error, and THE error body every response writes:
`{"error": CamelCaseCode, "message": text for a person}` (handlers, middleware, batch items)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi.responses import Response

from service.serving.errors import (
    AdminDisabled,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ReloadFailed,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
)

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


def error_fields(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


def error_body(code: str, message: str) -> bytes:
    """THE error body of every response: `{"error": CamelCaseCode, "message": text for a person}`."""
    return json.dumps(error_fields(code, message)).encode()


def error_item(status: int, code: str, message: str) -> dict[str, Any]:
    """One failed search of POST /search/batch: the error body with its status."""
    return {"status": status, **error_fields(code, message)}


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


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status, headers=headers, media_type="application/json")


def validation_message(errors: Sequence[dict[str, Any]]) -> str:
    """Pydantic's errors as `field: problem; ...`; a body that is not JSON says where it breaks."""
    problems = []
    for err in errors:
        if err.get("type") == "json_invalid":
            pos = next((p for p in err.get("loc", ()) if isinstance(p, int)), None)
            why = (err.get("ctx") or {}).get("error", "")
            where = f" at character {pos}" if pos is not None else ""
            problems.append(f"body: not valid JSON{where}{': ' + str(why) if why else ''}; send a JSON object")
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        problems.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(problems[:10])
