"""A running `modelkiln up` for the local-mode tests."""

from __future__ import annotations

import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Up:
    """A running `modelkiln up`, its output collected line by line."""

    def __init__(self, *args: str, repository: pathlib.Path):
        self.http_port, self.grpc_port = free_port(), free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelkiln.cli", "up", *args, "--repository", str(repository),
             "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.process.poll() is None, f"up exited early:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout}s:\n{self.output}"
            time.sleep(0.1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.reader.join(timeout=5)
        return code


@pytest.fixture
def repository(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "repository"


@pytest.fixture
def start_up() -> Iterator:
    """Starts `modelkiln up ARGS` on free ports; whatever a test leaves running is stopped."""
    started: list[Up] = []

    def start(*args: str, repository: pathlib.Path) -> Up:
        started.append(Up(*args, repository=repository))
        return started[-1]

    yield start
    for up in started:
        up.stop()
