"""Bearer tokens for `modelkiln serve --auth-token-file`: REST `Authorization` and gRPC metadata.

The file holds the accepted tokens, one per line (two during a rotation). It is re-read when it
changes, checked at most once a second, so a Kubernetes Secret update takes effect without a
restart. Probes and scrapers call the health routes and /metrics without a token; everything
else (inference, model and server metadata) needs one. Model readiness counts as health, as in
Triton's restricted-API groups: a pod's readiness probe asks for its model and cannot carry a
token from a Secret.
"""

from __future__ import annotations

import hmac
import logging
import os
import pathlib
import re
import time

import grpc

from modelkiln.runtime.errors import Unauthenticated
from modelkiln.runtime.names import shown

log = logging.getLogger(__name__)

# What probes and scrapers call: no token needed, and (http_app) never turned away as busy.
OPEN_PATHS = re.compile(
    r"(/v2/health/(live|ready)|/v2/models/[^/]+(/versions/[^/]+)?/ready|/ping|/metrics)\Z")
OPEN_GRPC_METHODS = frozenset(f"/inference.GRPCInferenceService/{method}"
                              for method in ("ServerLive", "ServerReady", "ModelReady"))
RECHECK_SECONDS = 1.0


def read_tokens(path: pathlib.Path) -> list[bytes]:
    tokens = [line.strip().encode() for line in path.read_text().splitlines() if line.strip()]
    if not tokens:
        raise ValueError(f"{path}: no token in the file; expected one token per line")
    return tokens


class TokenFile:
    """The tokens a request may present; `check` raises `Unauthenticated` for any other."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._stamp = self._file_stamp()
        self._tokens = read_tokens(path)  # a missing or empty file fails at start-up
        self._checked = time.monotonic()

    def _file_stamp(self) -> tuple[int, int, int]:
        stat = os.stat(self.path)  # follows the ..data link a Secret volume swaps on update
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return
        self._checked = now
        try:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._tokens, self._stamp = read_tokens(self.path), stamp
                log.info("re-read the auth token file %s", self.path)
        except (OSError, ValueError) as error:  # keep the tokens we have rather than lock out
            log.warning("cannot re-read the auth token file: %s", error)

    def check(self, authorization: bytes | None) -> None:
        if authorization is None:
            raise Unauthenticated("missing bearer token: send the header "
                                  "'Authorization: Bearer <token>'")
        scheme, _, presented = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        self._reload_if_changed()
        presented = presented.strip()
        matched = False
        for token in self._tokens:  # constant time per token, and every token compared
            matched |= hmac.compare_digest(presented, token)
        if not matched:
            raise Unauthenticated("invalid bearer token")


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """The same check on gRPC's `authorization` metadata; the health calls stay open."""

    def __init__(self, tokens: TokenFile) -> None:
        self.tokens = tokens

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if details.method not in OPEN_GRPC_METHODS:
            presented = dict(details.invocation_metadata or ()).get("authorization")
            try:
                self.tokens.check(None if presented is None else presented.encode())
            except Unauthenticated as error:
                log.warning("gRPC %s: %s", shown(details.method), error.message)
                return _refusal(error.message)
        return await continuation(details)


def _refusal(message: str) -> grpc.RpcMethodHandler:
    async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(refuse)
