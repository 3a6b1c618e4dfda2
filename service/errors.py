"""Domain errors (no HTTP in them) and the one table that maps them to status codes."""

from __future__ import annotations


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


STATUS: dict[type[ServiceError], int] = {
    InvalidRequest: 422,
    PayloadTooLarge: 413,
    Unauthorized: 401,
    AdminDisabled: 404,
    Overloaded: 429,
    NotReady: 503,
    DeadlineExceeded: 504,
    ReloadFailed: 409,
}


def status_of(err: ServiceError) -> int:
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500
