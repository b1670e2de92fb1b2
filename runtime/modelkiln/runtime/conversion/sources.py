"""Where a model comes from: a local path, file://, http(s)://, pvc://CLAIM/path, or object
storage (s3://, gs://, az://: object_store.py); an archive among them is unpacked (archives.py).

Conversion Jobs run far from the model's origin, so downloads must survive flaky networks:
they stream to disk, retry with exponential backoff, resume with an HTTP Range request when
the server allows, and show progress (a bar on a terminal, plain lines in a pod's log). Local
and PVC sources are read in place. Every source is hashed, and checked when a sha256 is given.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import os
import pathlib
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TextIO

from modelkiln.runtime.conversion import archives
from modelkiln.runtime.conversion.errors import ConversionFailed

CHUNK_BYTES = 1 << 20
# Tunable so that tests of unreachable servers do not wait for a real backoff.
RETRIES = int(os.environ.get("MODELKILN_FETCH_RETRIES", "5"))
BACKOFF_SECONDS = float(os.environ.get("MODELKILN_FETCH_BACKOFF", "1.0"))
TIMEOUT_SECONDS = float(os.environ.get("MODELKILN_FETCH_TIMEOUT", "30"))


@dataclasses.dataclass(frozen=True)
class FetchedSource:
    path: pathlib.Path      # a file, or a directory (TF SavedModel, IR pair)
    sha256: str             # of the file, or of the directory's files in name order
    seconds: float


def pvc_root() -> pathlib.Path:
    """Where the Job mounts claims: pvc://CLAIM/path is read at PVC_ROOT/CLAIM/path."""
    return pathlib.Path(os.environ.get("MODELKILN_PVC_ROOT", "/mnt/pvc"))


def tls_context(ca_file: pathlib.Path | None) -> ssl.SSLContext | None:
    """The system's trust store plus the CA certificates in `ca_file` (PEM), or None (urllib's
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


def redacted(uri: str) -> str:
    """`uri` as it may be shown in a log line, a message or the model's status: without
    user:password@ and without the query string (a presigned URL's signature)."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", parts.fragment))


def pvc_path(uri: str, *, claim: str, path: str) -> pathlib.Path:
    """Where pvc://CLAIM/path is mounted; it must stay inside the claim (no `..`, no symlink out)."""
    mount = (pvc_root() / claim).resolve()
    resolved = (mount / path.lstrip("/")).resolve()
    if not resolved.is_relative_to(mount):
        raise ConversionFailed(f"source {uri} leaves its claim {claim!r}: a pvc:// path must stay inside "
                               f"the claim (no '..' segments, no links out of it)")
    return resolved


def fetch_source(uri: str, *, download_dir: pathlib.Path, expected_sha256: str | None = None,
                 tls: ssl.SSLContext | None = None, progress: TextIO = sys.stdout) -> FetchedSource:
    """Make the source at `uri` available as a local path and check its sha256; `tls` is the
    trust for https:// (tls_context)."""
    started = time.monotonic()
    uri, inside = archives.split_inside(uri)
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme in ("http", "https"):
        path = download(uri, destination=download_dir / download_name(parsed.path), tls=tls, progress=progress)
    elif parsed.scheme in ("s3", "gs", "az"):
        from modelkiln.runtime.conversion import object_store    # obstore: the converter image's

        path = object_store.download(uri, download_dir=download_dir, progress=progress)
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
        path = archives.model_in(path, scratch=download_dir, inside=inside)
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


def download(url: str, *, destination: pathlib.Path, tls: ssl.SSLContext | None,
             progress: TextIO) -> pathlib.Path:
    """Stream `url` to `destination`, resuming a partial `.part` file after each failure."""
    partial = destination.with_name(destination.name + ".part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    shown = redacted(url)
    last_error = ""
    for attempt in range(RETRIES):
        if attempt:
            time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
        try:
            download_once(url, partial=partial, tls=tls, progress=progress)
        except urllib.error.HTTPError as error:
            if error.code < 500 and error.code not in (408, 429):
                raise ConversionFailed(f"cannot download {shown}: HTTP {error.code} {error.reason}") from error
            last_error = f"HTTP {error.code} {error.reason}"
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, ssl.SSLCertVerificationError):    # retrying cannot fix trust
                raise ConversionFailed(
                    f"cannot download {shown}: its TLS certificate is not trusted ({reason.verify_message}); "
                    "give the converter the CA that signed it (--ca-file /path/to/ca.pem; in a "
                    "cluster, spec.source.caConfigMap)") from error
            last_error = str(reason) or type(error).__name__
        else:
            partial.replace(destination)
            return destination
        print(f"download of {shown} failed ({last_error}); attempt {attempt + 1} of {RETRIES}", file=progress)
    raise ConversionFailed(f"cannot download {shown} after {RETRIES} attempts: {last_error}", transient=True)


def http_request(url: str, *, headers: dict[str, str]) -> urllib.request.Request:
    """A request for `url`; user:password@ in it becomes Basic authentication, which urllib does
    not forward to a redirect's target."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return urllib.request.Request(url, headers=headers)
    request = urllib.request.Request(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl(), headers=headers)
    user = urllib.parse.unquote(parts.username or "") + ":" + urllib.parse.unquote(parts.password or "")
    request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
    return request


def download_once(url: str, *, partial: pathlib.Path, tls: ssl.SSLContext | None, progress: TextIO) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    request = http_request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS, context=tls) as response:
        resumed = response.status == 206
        if not resumed:
            have = 0    # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        meter = ProgressMeter(url=redacted(url), total=total, done=have, stream=progress)
        with partial.open("ab" if resumed else "wb") as out:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                meter.advance(len(chunk))
        if total is not None and meter.done < total:
            raise http.client.IncompleteRead(b"", total - meter.done)
        meter.finish()


class ProgressMeter:
    """A redrawn bar on a terminal; one line per 10% (or per 10 MiB of unknown size) in a log."""

    def __init__(self, *, url: str, total: int | None, done: int, stream: TextIO) -> None:
        self.url, self.total, self.done, self.stream = url, total, done, stream
        self.tty = stream.isatty()
        self.reported = -1

    def advance(self, count: int) -> None:
        self.done += count
        if self.tty:
            self.stream.write("\r" + self.bar())
            self.stream.flush()
            return
        step = self.done * 10 // self.total if self.total else self.done // (10 * CHUNK_BYTES)
        if step != self.reported:
            self.reported = step
            print(f"downloading {self.url}: {self.describe()}", file=self.stream, flush=True)

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
        else:
            print(f"downloaded {self.url}: {self.done} bytes", file=self.stream, flush=True)

    def bar(self) -> str:
        if not self.total:
            return f"{self.done / 2**20:8.1f} MiB"
        filled = 30 * self.done // self.total
        return f"[{'#' * filled}{'.' * (30 - filled)}] {self.describe()}"

    def describe(self) -> str:
        if not self.total:
            return f"{self.done} bytes"
        return f"{100 * self.done // self.total}% of {self.total} bytes"
