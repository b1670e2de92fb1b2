"""The `--tls-cert/--tls-key` pair, re-read when the files change, for REST and gRPC alike.

A certificate from a Kubernetes Secret is renewed in place (cert-manager, a rotation by hand):
the kubelet swaps the mounted files atomically. gRPC asks for the current pair before each new
handshake; the HTTP server's SSL context is reloaded by a poll. New connections get the new
certificate, open ones keep theirs; a pair that does not load (say a key that no longer matches,
mid-edit) is logged and the previous one kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import ssl

import grpc

log = logging.getLogger(__name__)


class CertificatePair:
    def __init__(self, cert: pathlib.Path, key: pathlib.Path) -> None:
        self.cert, self.key = cert, key
        self._grpc_stamp = self._http_stamp = self.stamp()

    def stamp(self) -> tuple:
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in map(os.stat, (self.cert, self.key)))

    def _grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.key.read_bytes(),
                                                           self.cert.read_bytes())])

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._grpc_configuration(), self._grpc_update)

    def _grpc_update(self) -> grpc.ServerCertificateConfiguration | None:
        """Before each gRPC handshake: the new pair if the files changed, else None (keep)."""
        try:
            stamp = self.stamp()
            if stamp == self._grpc_stamp:
                return None
            configuration = self._grpc_configuration()
        except OSError as error:
            log.warning("cannot re-read the TLS certificate for gRPC: %s", error)
            return None
        self._grpc_stamp = stamp
        log.info("gRPC: serving the renewed TLS certificate %s", self.cert)
        return configuration

    async def keep_current(self, context: ssl.SSLContext, interval: float) -> None:
        """Reload the HTTP server's SSL context whenever the files change."""
        while True:
            await asyncio.sleep(interval)
            try:
                stamp = self.stamp()
                if stamp != self._http_stamp:
                    context.load_cert_chain(self.cert, self.key)
                    self._http_stamp = stamp
                    log.info("HTTP: serving the renewed TLS certificate %s", self.cert)
            except (OSError, ssl.SSLError) as error:
                log.warning("cannot reload the TLS certificate for HTTP: %s", error)
