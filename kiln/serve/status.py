"""Which HTTP status and gRPC code answer each kind of error: the one table both front ends read."""
from __future__ import annotations

from ..errors import (InputError, KilnError, ModelNotFoundError, RequestError, RequestTimeoutError,
                      RequestTooLargeError, ServerBusyError, ShapeError)

# (error class, HTTP status, gRPC status code name), most specific first.
_TABLE = [
    (ModelNotFoundError, 404, "NOT_FOUND"),
    (ServerBusyError, 503, "UNAVAILABLE"),
    (RequestTimeoutError, 504, "DEADLINE_EXCEEDED"),
    (RequestTooLargeError, 413, "RESOURCE_EXHAUSTED"),
    (RequestError, 400, "INVALID_ARGUMENT"),
    (InputError, 400, "INVALID_ARGUMENT"),
    (ShapeError, 400, "INVALID_ARGUMENT"),
    (KilnError, 500, "INTERNAL"),  # KernelError and the rest: the server's side failed
]

# Triton's failure reasons for nv_inference_request_failure.
_REASONS = [(ServerBusyError, "REJECTED"), (RequestTimeoutError, "CANCELED"), (RequestError, "OTHER"),
            (InputError, "OTHER"), (ShapeError, "OTHER")]


def http_status(error: BaseException) -> int:
    return next((code for cls, code, _ in _TABLE if isinstance(error, cls)), 500)


def grpc_code(error: BaseException):
    import grpc
    name = next((name for cls, _, name in _TABLE if isinstance(error, cls)), "INTERNAL")
    return getattr(grpc.StatusCode, name)


def failure_reason(error: BaseException) -> str:
    return next((reason for cls, reason in _REASONS if isinstance(error, cls)), "BACKEND")
