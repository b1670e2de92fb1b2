"""Where a model comes from: a local path, file://, http(s)://, pvc://CLAIM/path, or object
storage (s3://, gs://, az://: object_store.py); an archive among them is unpacked (archives.py).

Conversion Jobs run far from the model's origin, so downloads must survive flaky networks:
they stream to disk, retry with exponential backoff, resume with an HTTP Range request when
the server allows, and show progress (a bar on a terminal, plain lines in a pod's log). Local
and PVC sources are read in place. Every source is hashed, and checked when a sha256 is given.

A source URI is untrusted input, so downloads are bounded (DownloadLimits, in downloads.py): a
size cap and a deadline enforced while streaming, redirects only to http(s) and never from https
to http, and no connection to link-local or cloud metadata addresses, checked on the address
connected to.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import http.client
import ipaddress
import os
import pathlib
import socket
import ssl
import string
import sys
import time
import urllib.parse
import urllib.request
from typing import TextIO

from modelkiln import extras
from modelkiln.redaction import redacted
from modelkiln.runtime.conversion import archives
from modelkiln.runtime.conversion.downloads import (BACKOFF_SECONDS, CHUNK_BYTES, RETRIES, DownloadLimits,
                                                    ProgressMeter, over_size_cap, past_deadline)
from modelkiln.runtime.conversion.errors import ConversionFailed

# Most one receive may return: read1 allocates this much each time, and a receive brings at
# most a socket buffer (or a 16 KiB TLS record) anyway.
RECEIVE_BYTES = 64 << 10
MAX_REDIRECTS = 10      # enough for a CDN or a presigned-URL hop or two; not a loop
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Metadata services outside the link-local ranges (169.254.0.0/16, fe80::/10, which hold the
# others' 169.254.169.254): AWS's over IPv6 and Alibaba Cloud's.
METADATA_ADDRESSES = frozenset(map(ipaddress.ip_address, ("fd00:ec2::254", "100.100.100.200")))


@dataclasses.dataclass(frozen=True)
class FetchedSource:
    path: pathlib.Path      # a file, or a directory (TF SavedModel, IR pair)
    sha256: str             # of the file, or of the directory's files in name order
    seconds: float


def pvc_root() -> pathlib.Path:
    """Where the Job mounts claims: pvc://CLAIM/path is read at PVC_ROOT/CLAIM/path."""
    return pathlib.Path(os.environ.get("MODELKILN_PVC_ROOT", "/mnt/pvc"))


def tls_context(ca_file: pathlib.Path | None) -> ssl.SSLContext | None:
    """The system's trust store plus the CA certificates in `ca_file` (PEM), or None (the
    default context) without one."""
    if ca_file is None:
        return None
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except FileNotFoundError:
        raise ConversionFailed(f"CA file {ca_file} not found") from None
    except ssl.SSLError as error:
        raise ConversionFailed(f"CA file {ca_file} holds no PEM certificate ({error.reason or error}); "
                               "expected one or more '-----BEGIN CERTIFICATE-----' blocks") from None
    return context


def pvc_path(uri: str, *, claim: str, path: str) -> pathlib.Path:
    """Where pvc://CLAIM/path is mounted; it must stay inside the claim (no `..`, no symlink out)."""
    mount = (pvc_root() / claim).resolve()
    resolved = (mount / path.lstrip("/")).resolve()
    if not resolved.is_relative_to(mount):
        raise ConversionFailed(f"source {uri} leaves its claim {claim!r}: a pvc:// path must stay inside "
                               f"the claim (no '..' segments, no links out of it)")
    return resolved


def fetch_source(uri: str, *, download_dir: pathlib.Path, expected_sha256: str | None = None,
                 tls: ssl.SSLContext | None = None, limits: DownloadLimits | None = None,
                 scratch: archives.Scratch | None = None, max_ratio: float = archives.MAX_RATIO,
                 progress: TextIO = sys.stdout) -> FetchedSource:
    """Make the source at `uri` available as a local path and check its sha256; `tls` is the
    trust for https:// (tls_context); downloads go to `download_dir` within `limits`, and an
    archive is unpacked there within `scratch` (default: the free space of `download_dir`) and
    `max_ratio` (archives.model_in)."""
    started = time.monotonic()
    uri, inside = archives.split_inside(uri)
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme in ("http", "https"):
        path = download(uri, destination=download_dir / download_name(parsed.path), tls=tls,
                        limits=limits or DownloadLimits(), progress=progress)
    elif parsed.scheme in ("s3", "gs", "az"):
        try:
            from modelkiln.runtime.conversion import object_store    # obstore: the converter image's
        except ModuleNotFoundError as error:
            if extras.extra_for(error, command="convert") != "storage":
                raise
            raise ConversionFailed(extras.needs(f"reading {parsed.scheme}:// sources", "storage")) from None

        path = object_store.download(uri, download_dir=download_dir, limits=limits or DownloadLimits(),
                                     progress=progress)
    elif parsed.scheme == "pvc":
        path = pvc_path(uri, claim=parsed.netloc, path=parsed.path)
    elif parsed.scheme == "file":
        path = pathlib.Path(urllib.request.url2pathname(parsed.path))
    elif parsed.scheme == "" or len(parsed.scheme) == 1:    # a plain path (or C:\ on Windows)
        path = pathlib.Path(uri)
    else:
        raise ConversionFailed(f"unsupported source scheme {parsed.scheme!r} in {redacted(uri)}; "
                               "expected a path, file://, http://, https://, pvc://CLAIM/path, s3://, gs:// or az://")
    if not path.exists():
        raise ConversionFailed(f"source {redacted(uri)} not found (looked at {path})")
    digest = sha256_of(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise ConversionFailed(f"checksum mismatch for {redacted(uri)}: expected sha256 {expected_sha256.lower()}, "
                               f"got {digest}")
    if path.is_file() and archives.is_archive(path.name):
        path = archives.model_in(path, scratch=download_dir, inside=inside, space=scratch, max_ratio=max_ratio)
    elif inside:
        raise ConversionFailed(f"#{inside} names a path inside an archive, but {path.name} is not one "
                               f"(expected a name ending in {', '.join(archives.SUFFIXES)})")
    return FetchedSource(path=path, sha256=digest, seconds=time.monotonic() - started)


def download_name(url_path: str) -> str:
    # The file name carries the format hint (.onnx, .tflite, ...); keep it.
    return pathlib.PurePosixPath(urllib.parse.unquote(url_path)).name or "model"


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():   # names matter too: renaming a file in a SavedModel changes it
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as stream:
            while chunk := stream.read(CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def download(url: str, *, destination: pathlib.Path, tls: ssl.SSLContext | None, limits: DownloadLimits,
             progress: TextIO) -> pathlib.Path:
    """Stream `url` to `destination`, resuming a partial `.part` file after each failure, within
    `limits` (size, deadline, addresses)."""
    partial = destination.with_name(destination.name + ".part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    shown = redacted(url)
    last_error = ""
    for attempt in range(RETRIES):
        if attempt:
            pause = BACKOFF_SECONDS * 2 ** (attempt - 1)
            if time.monotonic() + pause >= limits.deadline:
                raise past_deadline(shown, limits=limits, partial=partial)
            time.sleep(pause)
        try:
            download_once(url, partial=partial, tls=tls, limits=limits, shown=shown, progress=progress)
        except HTTPStatusError as error:
            if error.status < 500 and error.status not in (408, 429):
                raise ConversionFailed(f"cannot download {shown}: HTTP {error.status} {error.reason}") from error
            last_error = f"HTTP {error.status} {error.reason}"
        except ssl.SSLCertVerificationError as error:     # retrying cannot fix trust
            raise ConversionFailed(
                f"cannot download {shown}: its TLS certificate is not trusted ({error.verify_message}); "
                "give the converter the CA that signed it (--ca-file /path/to/ca.pem; in a "
                "cluster, spec.source.caConfigMap)") from error
        except (http.client.HTTPException, ConnectionError, TimeoutError, socket.gaierror, ssl.SSLError) as error:
            if time.monotonic() >= limits.deadline:
                raise past_deadline(shown, limits=limits, partial=partial) from error
            last_error = str(error) or type(error).__name__
        else:
            partial.replace(destination)
            return destination
        print(f"download of {shown} failed ({last_error}); attempt {attempt + 1} of {RETRIES}", file=progress)
    raise ConversionFailed(f"cannot download {shown} after {RETRIES} attempts: {last_error}", transient=True)


class HTTPStatusError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status, self.reason = status, reason


def download_once(url: str, *, partial: pathlib.Path, tls: ssl.SSLContext | None, limits: DownloadLimits,
                  shown: str, progress: TextIO) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    connection, sock, response = open_response(url, have=have, tls=tls, limits=limits, shown=shown)
    with contextlib.closing(connection), response:
        resumed = response.status == 206
        if not resumed:
            have = 0    # the server ignored the Range header: start over
        length = response.getheader("Content-Length")
        total = have + int(length) if length is not None and length.isdigit() else None
        if total is not None and total > limits.max_bytes:
            raise over_size_cap(shown, limits=limits, announced=total)
        meter = ProgressMeter(url=shown, total=total, done=have, stream=progress)
        # Receives come in pieces of 16 KiB (a TLS record) to 64 KiB: written in 1 MiB blocks.
        with partial.open("ab" if resumed else "wb", buffering=CHUNK_BYTES) as out:
            # One receive at a time, each given at most the time left: a trickle is cut at the
            # deadline. Never more than one byte past the cap, whatever the server announced.
            while True:
                limits.bound(sock)
                chunk = response.read1(min(RECEIVE_BYTES, limits.max_bytes + 1 - meter.done))
                if not chunk:
                    break
                out.write(chunk)
                meter.advance(len(chunk))
                if meter.done > limits.max_bytes:
                    raise over_size_cap(shown, limits=limits)
        if total is not None and meter.done < total:
            raise http.client.IncompleteRead(b"", total - meter.done)
        meter.finish()


def open_response(url: str, *, have: int, tls: ssl.SSLContext | None, limits: DownloadLimits,
                  shown: str) -> tuple[http.client.HTTPConnection, socket.socket, http.client.HTTPResponse]:
    """The connection, its socket and the response for `url`, after following redirects: at most
    MAX_REDIRECTS, only to http(s), never from https to http. user:password@ becomes Basic
    authentication for `url` itself, never for a redirect's target."""
    current = url
    for hop in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(current)
        headers = {"Range": f"bytes={have}-"} if have else {}
        if hop == 0 and "@" in parts.netloc:
            user = urllib.parse.unquote(parts.username or "") + ":" + urllib.parse.unquote(parts.password or "")
            headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
        try:
            connection, sock = open_connection(parts, tls=tls, limits=limits)
        except RefusedAddress as refused:
            via = f"it redirects to {redacted(current)}, and " if hop else ""
            raise ConversionFailed(
                f"cannot download {shown}: {via}{refused} is a link-local or cloud metadata address, refused "
                "unless --allow-link-local is given (in a cluster, spec.source.allowLinkLocal: true)") from None
        try:
            connection.request("GET", urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")),
                               headers=headers)
            response = connection.getresponse()
        except BaseException:
            connection.close()
            raise
        if response.status < 300:
            return connection, sock, response
        location = response.getheader("Location")
        connection.close()
        if response.status not in REDIRECT_STATUSES or not location:
            raise HTTPStatusError(response.status, response.reason)
        # as urllib does: a Location with spaces or non-ASCII characters is quoted, not refused
        target = urllib.parse.urljoin(current, urllib.parse.quote(location, safe=string.punctuation))
        target_parts = urllib.parse.urlsplit(target)
        if target_parts.scheme not in ("http", "https"):
            raise ConversionFailed(f"cannot download {shown}: it redirects to {redacted(target)}; only http:// "
                                   "and https:// redirects are followed")
        if parts.scheme == "https" and target_parts.scheme == "http":
            raise ConversionFailed(f"cannot download {shown}: it redirects from https to {redacted(target)}; "
                                   "a redirect to plain http is refused")
        current = target_parts._replace(netloc=target_parts.netloc.rpartition("@")[2]).geturl()
    raise ConversionFailed(f"cannot download {shown}: more than {MAX_REDIRECTS} redirects")


def open_connection(parts: urllib.parse.SplitResult, *, tls: ssl.SSLContext | None,
                    limits: DownloadLimits) -> tuple[http.client.HTTPConnection, socket.socket]:
    """An HTTP(S) connection to the address `connect` chose, and its socket."""
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    sock = connect(host, port, timeout=limits.read_timeout(), allow_link_local=limits.allow_link_local)
    connection: http.client.HTTPConnection
    if https:
        try:
            sock = (tls or ssl.create_default_context()).wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        connection = http.client.HTTPSConnection(host, port)
    else:
        connection = http.client.HTTPConnection(host, port)
    connection.sock = sock      # used as is: http.client never resolves the name again
    return connection, sock


class RefusedAddress(Exception):
    """Every address of a host is link-local or a cloud metadata service's; str() names it."""


def connect(host: str, port: int, *, timeout: float, allow_link_local: bool) -> socket.socket:
    """A TCP connection to `host`, resolved once here and connected to exactly the address that
    was checked, so that a second DNS answer cannot swap in another one (DNS rebinding)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    allowed = [info for info in found if allow_link_local or not refused_address(info[4][0])]
    if not allowed:
        address = found[0][4][0]
        raise RefusedAddress(address if address == host else f"{host} ({address})")
    failure: OSError | None = None
    for family, kind, protocol, _, address in allowed:
        sock = socket.socket(family, kind, protocol)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as error:
            sock.close()
            failure = error
    # unreachable networks are worth another attempt, as refused and timed out connections are
    if isinstance(failure, (ConnectionError, TimeoutError)):
        raise failure
    raise ConnectionError(failure.errno, failure.strerror)


def refused_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.partition("%")[0])    # fe80::1%eth0: without the zone
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_link_local or ip in METADATA_ADDRESSES
