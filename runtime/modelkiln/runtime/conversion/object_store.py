"""Models in object storage: s3://bucket/key, gs://bucket/key and az://container/key.

One library reads all three: obstore, the Python binding of Apache Arrow's Rust `object_store`
(the crate behind DataFusion, Polars and delta-rs), instead of boto3, google-cloud-storage and
azure-storage-blob. It reads each store's standard environment (AWS_*, GOOGLE_*, AZURE_*), so
a Secret's keys given to the conversion Job as variables, a workload identity and a laptop's
shell all configure it the same way, and it retries a request on 5xx, dropped connections and
timeouts with exponential backoff, resuming a body cut short from its last byte. A key is
streamed to disk in chunks; a prefix (a SavedModel directory, an IR pair) is downloaded object by
object. Without any credential variable a request is anonymous (a public bucket): the library
would otherwise ask the cloud's instance metadata service, which outside that cloud only times
out; MODELKILN_WORKLOAD_IDENTITY (set for spec.source.serviceAccountName) lets it ask.
Failures are one line naming the bucket and the variable or Secret at fault, never a value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import pathlib
import re
import time
import urllib.parse
from typing import Iterator, TextIO

import obstore
from obstore.exceptions import BaseError, NotFoundError, PermissionDeniedError, UnauthenticatedError
from obstore.store import AzureStore, GCSStore, S3Store

from modelkiln.runtime.conversion.errors import ConversionFailed
from modelkiln.runtime.conversion.downloads import (BACKOFF_SECONDS, CHUNK_BYTES, RETRIES, TIMEOUT_SECONDS,
                                                    DownloadLimits, ProgressMeter, over_size_cap, past_deadline)

# The Secret that the operator gave the Job as variables (spec.source.credentials), to name in causes.
CREDENTIALS_SECRET = "MODELKILN_SOURCE_CREDENTIALS"
WORKLOAD_IDENTITY = "MODELKILN_WORKLOAD_IDENTITY"
LONGEST_DOWNLOAD = datetime.timedelta(hours=2)     # the conversion Job's own deadline


@dataclasses.dataclass(frozen=True)
class Kind:
    """What differs between the stores: their variables and how they name a bucket."""

    store: type
    bucket_word: str
    credentials: tuple[str, ...]        # any one set: the requests are signed
    pairs: tuple[tuple[str, str], ...]  # (variable, the one it needs alongside)
    endpoints: tuple[str, ...]          # an http:// one here allows plain HTTP
    hint: str


KINDS = {
    "s3": Kind(S3Store, "bucket",
               ("AWS_ACCESS_KEY_ID", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
               (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")),
               ("AWS_ENDPOINT_URL", "AWS_ENDPOINT"),
               "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    "gs": Kind(GCSStore, "bucket",
               ("GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH", "GOOGLE_SERVICE_ACCOUNT_KEY",
                "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_BEARER_TOKEN"),
               (), ("GOOGLE_BASE_URL",),
               "GOOGLE_SERVICE_ACCOUNT_KEY (a service account's JSON key) or GOOGLE_APPLICATION_CREDENTIALS"),
    "az": Kind(AzureStore, "container",
               ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_SAS_KEY",
                "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE",
                "AZURE_STORAGE_USE_EMULATOR"),
               (("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCOUNT_NAME"),),
               ("AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"),
               "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN"),
}
SCHEMES = tuple(KINDS)
S3_ERROR_CODE = re.compile(r"<Code>(\w+)</Code>")


@dataclasses.dataclass(frozen=True)
class Location:
    uri: str
    scheme: str
    bucket: str
    key: str

    @property
    def kind(self) -> Kind:
        return KINDS[self.scheme]

    @property
    def where(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"


def parse(uri: str) -> Location:
    parts = urllib.parse.urlsplit(uri)
    key = urllib.parse.unquote(parts.path).lstrip("/")
    if not parts.netloc or not key:
        word = KINDS[parts.scheme].bucket_word
        raise ConversionFailed(f"source {uri} must name a {word} and a key or prefix: "
                               f"{parts.scheme}://{word.upper()}/path/to/model")
    return Location(uri=uri, scheme=parts.scheme, bucket=parts.netloc, key=key)


def download(uri: str, *, download_dir: pathlib.Path, limits: DownloadLimits, progress: TextIO) -> pathlib.Path:
    """The object `uri` as a file in `download_dir`, or the objects under it as a directory; the size
    cap holds for the object, or for all the objects under a prefix together, and the deadline for all."""
    location = parse(uri)
    store = open_store(location)
    with explained(location):
        # A GET, not a HEAD: it starts the body at once, and a refusal carries the store's error code.
        single = None if location.key.endswith("/") else get(store, location.key)
        if single is not None:
            destination = download_dir / pathlib.PurePosixPath(location.key).name
            return download_object(store, single.meta, response=single, destination=destination,
                                   shown=location.where, limits=limits, progress=progress)
        prefix = location.key.rstrip("/") + "/"
        objects = [meta for batch in obstore.list(store, prefix=prefix) for meta in batch
                   if not meta["path"].endswith("/")]      # "folder" markers some consoles create
    if not objects:
        raise ConversionFailed(f"source {location.where} not found: {location.kind.bucket_word} "
                               f"{location.bucket} has no object {location.key.rstrip('/')} and none under "
                               f"{prefix}")
    directory = download_dir / pathlib.PurePosixPath(prefix).name
    total = sum(meta["size"] for meta in objects)
    if total > limits.max_bytes:
        raise over_size_cap(location.where, limits=limits, announced=total)
    for meta in objects:
        relative = meta["path"][len(prefix):]
        if any(part in ("", ".", "..") for part in relative.split("/")):
            raise ConversionFailed(f"object {meta['path']!r} under {location.where} has an empty, '.' or '..' "
                                   "path segment and would leave the download directory")
        with explained(location):
            download_object(store, meta, destination=directory / relative,
                            shown=f"{location.scheme}://{location.bucket}/{meta['path']}", limits=limits,
                            progress=progress)
    return directory


def get(store, key: str):
    """The answer to a GET of `key` (its body not read yet), or None when there is no such key."""
    try:
        return obstore.get(store, key)
    except (NotFoundError, FileNotFoundError):   # obstore raises FileNotFoundError for a missing key
        return None


def download_object(store, meta: dict, *, destination: pathlib.Path, shown: str, limits: DownloadLimits,
                    progress: TextIO, response=None) -> pathlib.Path:
    """Stream the object `meta` (from a listing, or of a GET `response` whose body is unread) to
    `destination` through a `.part` file. A body cut short is resumed by the library itself, with
    a Range request from its last byte, within the same retry budget."""
    if meta["size"] > limits.max_bytes:
        raise over_size_cap(shown, limits=limits, announced=meta["size"])
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    meter = ProgressMeter(url=shown, total=meta["size"], done=0, stream=progress)
    response = response or obstore.get(store, meta["path"])
    with partial.open("wb") as out:
        for chunk in response.stream(min_chunk_size=CHUNK_BYTES):
            out.write(chunk)
            meter.advance(len(chunk))
            if time.monotonic() >= limits.deadline:     # each chunk waits at most the store's timeout
                raise past_deadline(shown, limits=limits, partial=partial)
    meter.finish()
    partial.replace(destination)
    return destination


def open_store(location: Location):
    """The store of `location`'s bucket, configured from the environment."""
    kind = location.kind
    environment = os.environ
    for variable, needed in kind.pairs:
        if environment.get(variable) and not environment.get(needed):
            raise ConversionFailed(f"cannot read {location.where}: {variable} is set but {needed} is not"
                                   f"{from_secret(needed)}")
    config: dict = {}
    if not any(environment.get(v) for v in kind.credentials) and not environment.get(WORKLOAD_IDENTITY):
        config["skip_signature"] = True
    if location.scheme == "az" and not (environment.get("AZURE_STORAGE_ACCOUNT_NAME")
                                        or environment.get("AZURE_STORAGE_USE_EMULATOR")):
        raise ConversionFailed(f"cannot read {location.where}: set AZURE_STORAGE_ACCOUNT_NAME to the storage account "
                               f"that holds container {location.bucket}{from_secret('AZURE_STORAGE_ACCOUNT_NAME')}")
    # Plain HTTP only when asked for: an http:// endpoint (MinIO, Ceph, an emulator) asks for it.
    allow_http = any(environment.get(v, "").startswith("http://") for v in kind.endpoints)
    client = {"connect_timeout": datetime.timedelta(seconds=TIMEOUT_SECONDS),
              "read_timeout": datetime.timedelta(seconds=TIMEOUT_SECONDS), "timeout": LONGEST_DOWNLOAD}
    if allow_http:
        client["allow_http"] = True
    retry = {"max_retries": RETRIES, "retry_timeout": datetime.timedelta(minutes=3),
             "backoff": {"init_backoff": datetime.timedelta(seconds=BACKOFF_SECONDS)}}
    try:
        return kind.store(location.bucket, client_options=client, retry_config=retry, **config)
    except BaseError as error:
        raise ConversionFailed(f"cannot configure access to {location.where}: {first_line(error)}") from None


@contextlib.contextmanager
def explained(location: Location) -> Iterator[None]:
    """The library's errors as one-line causes that name the bucket and the credential."""
    try:
        yield
    except (BaseError, FileNotFoundError) as error:  # obstore raises FileNotFoundError for a missing key
        raise cause_of(error, location) from None


def cause_of(error: BaseException, location: Location) -> ConversionFailed:
    where = location.where
    text = str(error)
    if isinstance(error, (PermissionDeniedError, UnauthenticatedError)) or " 403 " in text or " 401 " in text:
        code = S3_ERROR_CODE.search(text)
        why = f" ({code.group(1)})" if code else ""
        return ConversionFailed(f"access to {where} denied{why}: {credentials_used(location)}")
    if isinstance(error, (NotFoundError, FileNotFoundError)) or "NoSuchBucket" in text or " 404 " in text:
        return ConversionFailed(f"source {where} not found: {location.kind.bucket_word} {location.bucket} "
                                "does not exist or holds no such key")
    return ConversionFailed(f"cannot read {where}: {redact(first_line(error))}", transient=True)


def credentials_used(location: Location) -> str:
    kind = location.kind
    present = [v for v in kind.credentials if os.environ.get(v)]
    secret = os.environ.get(CREDENTIALS_SECRET)
    origin = f" from Secret {secret!r} (spec.source.credentials)" if secret else ""
    if present:
        return f"the credentials in {', '.join(present)}{origin} are not accepted for {kind.bucket_word} " \
               f"{location.bucket}"
    if os.environ.get(WORKLOAD_IDENTITY):
        return (f"the workload identity of ServiceAccount {os.environ[WORKLOAD_IDENTITY]!r} "
                f"(spec.source.serviceAccountName) may not read {kind.bucket_word} {location.bucket}")
    if secret:
        return f"Secret {secret!r} (spec.source.credentials) sets none of {', '.join(kind.credentials)}; " \
               f"expected {kind.hint}"
    return (f"the request was anonymous: no credentials are set; set {kind.hint} (in a cluster: a Secret "
            "named by spec.source.credentials, or spec.source.serviceAccountName for workload identity)")


def from_secret(variable: str) -> str:
    secret = os.environ.get(CREDENTIALS_SECRET)
    return f" (Secret {secret!r} of spec.source.credentials has no key {variable})" if secret else ""


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def redact(text: str) -> str:
    """`text` without the value of any credential variable (a library may echo a request)."""
    for kind in KINDS.values():
        for variable in (*kind.credentials, *(needed for _, needed in kind.pairs)):
            value = os.environ.get(variable, "")
            if len(value) >= 4:
                text = text.replace(value, "***")
    return text
