"""Every error a client can cause or observe, each with its HTTP status and gRPC code.

The protocol adapters (REST, gRPC) never choose a status themselves: they raise or catch these,
and this one table decides what the client sees, so both protocols answer the same mistake the
same way. Messages name what was wrong and what was expected; they never carry a traceback.
"""

from __future__ import annotations

import logging

import grpc


class ServingError(Exception):
    """A request the server answers with an error instead of a result."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    # Client mistakes are warnings; server faults errors (both protocols log at this level).
    log_level = logging.ERROR
    http_headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    """The request is malformed or does not match the model's signature."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    log_level = logging.WARNING


class ModelNotFound(ServingError):
    """No model (or no such version of it) is in the repository."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    log_level = logging.WARNING


class ModelNotReady(ServingError):
    """The model exists but cannot answer now: still loading, failed to load, or unloading."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    # A state, not a fault: readiness probes ask every few seconds while a model loads, and a
    # failed load was logged once, with its reason, when it failed.
    log_level = logging.DEBUG


class PayloadTooLarge(ServingError):
    """The request body is larger than the server accepts."""

    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    log_level = logging.WARNING


class UnsupportedMediaType(ServingError):
    """The body's Content-Type is not one this route can read."""

    http_status = 415
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    log_level = logging.WARNING


class Unauthenticated(ServingError):
    """The request carries no bearer token, or not one the server accepts."""

    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    log_level = logging.WARNING
    http_headers = ((b"www-authenticate", b"Bearer"),)


class RequestTimeout(ServingError):
    """The client did not send the request it began within the server's deadline."""

    http_status = 408
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    log_level = logging.WARNING
    http_headers = ((b"connection", b"close"),)  # the rest of the body may still come: stop it


class ServerBusy(ServingError):
    """As many requests are in flight as the server takes: try again shortly."""

    http_status = 503
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    log_level = logging.WARNING
    http_headers = ((b"retry-after", b"1"),)


class InferenceFailed(ServingError):
    """The engine failed on an input that passed validation: a server-side fault."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL


def one_line(error: BaseException) -> str:
    """The part of an exception's message worth showing: OpenVINO prefixes source locations."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
