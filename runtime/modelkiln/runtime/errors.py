"""Every error a client can cause or observe, each with its HTTP status and gRPC code.

The protocol adapters (REST, gRPC) never choose a status themselves: they raise or catch these,
and this one table decides what the client sees, so both protocols answer the same mistake the
same way. Messages name what was wrong and what was expected; they never carry a traceback.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """A request the server answers with an error instead of a result."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    """The request is malformed or does not match the model's signature."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServingError):
    """No model (or no such version of it) is in the repository."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class ModelNotReady(ServingError):
    """The model exists but cannot answer now: still loading, failed to load, or unloading."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class PayloadTooLarge(ServingError):
    """The request body is larger than the server accepts."""

    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnsupportedMediaType(ServingError):
    """The body's Content-Type is not one this route can read."""

    http_status = 415
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class InferenceFailed(ServingError):
    """The engine failed on an input that passed validation: a server-side fault."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL


def one_line(error: BaseException) -> str:
    """The part of an exception's message worth showing: OpenVINO prefixes source locations."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
