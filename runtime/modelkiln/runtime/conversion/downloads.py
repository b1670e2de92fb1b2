"""What the downloads of one conversion may cost, and how they show progress.

Shared by the http(s) downloads (sources.py) and the object-store ones (object_store.py): the
size cap and the deadline (DownloadLimits), the causes given when either is passed, the retry
settings, and the progress meter that a terminal or a pod's log shows.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
import time
from typing import TextIO

from modelkiln.runtime.conversion.errors import ConversionFailed

CHUNK_BYTES = 1 << 20
# Tunable so that tests of unreachable servers do not wait for a real backoff.
RETRIES = int(os.environ.get("MODELKILN_FETCH_RETRIES", "5"))
BACKOFF_SECONDS = float(os.environ.get("MODELKILN_FETCH_BACKOFF", "1.0"))
TIMEOUT_SECONDS = float(os.environ.get("MODELKILN_FETCH_TIMEOUT", "30"))  # to connect, and per receive
# 20 GiB: above the 2 GiB that ONNX, TensorFlow and TFLite files can hold at most (protobuf,
# flatbuffer), and enough for a PyTorch file or an archive of a model of some 10B parameters in
# FP16, more than the Job's default memory can convert; yet a runaway server cannot fill a disk.
MAX_DOWNLOAD_BYTES = 20 * 2**30
# An hour: 20 GiB at 6 MB/s. Downloads of one conversion (model and calibration data) share it.
DOWNLOAD_TIMEOUT_SECONDS = 3600


@dataclasses.dataclass(frozen=True)
class DownloadLimits:
    """What the downloads of one conversion may cost and reach; the deadline runs from creation."""

    max_bytes: int = MAX_DOWNLOAD_BYTES     # per download
    timeout_seconds: float = DOWNLOAD_TIMEOUT_SECONDS   # for all of them, retries included
    allow_link_local: bool = False
    deadline: float = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "deadline", time.monotonic() + self.timeout_seconds)

    def read_timeout(self) -> float:
        """How long the next connect or receive may wait: the idle timeout, or what is left."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the download deadline has passed")
        return min(TIMEOUT_SECONDS, left)

    def bound(self, sock: socket.socket) -> None:
        """Let the next receive on `sock` wait no longer than read_timeout()."""
        timeout = self.read_timeout()
        if timeout != sock.gettimeout():    # unchanged until the deadline nears: no system call
            sock.settimeout(timeout)


def past_deadline(shown: str, *, limits: DownloadLimits, partial: pathlib.Path) -> ConversionFailed:
    received = partial.stat().st_size if partial.exists() else 0
    return ConversionFailed(f"cannot download {shown}: not finished within the download deadline of "
                            f"{limits.timeout_seconds:g} s ({received} bytes received); give it more time with "
                            "--download-timeout SECONDS (in a cluster, spec.source.timeoutSeconds)")


def over_size_cap(shown: str, *, limits: DownloadLimits, announced: int | None = None) -> ConversionFailed:
    size = f"the server announces {announced} bytes" if announced is not None else \
        f"more than {limits.max_bytes} bytes received"
    return ConversionFailed(f"cannot download {shown}: {size}, over the size cap of {limits.max_bytes} bytes; "
                            "raise it with --max-download-bytes N (in a cluster, spec.source.maxBytes)")


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
