"""Nothing phones home: `modelkiln convert` and `modelkiln serve`, run as a user runs them.

Each command runs in a network namespace of its own with only loopback up (whatever it tried
could not leave this machine), under strace, with a fresh HOME and without the variables that
make OpenVINO and NNCF keep quiet on their own (CI, NNCF_CI, ...), so only ModelKiln's doing
counts. It must start no process (OpenVINO's telemetry forks one per event), reach for no address
but loopback (not even a DNS server), and leave no ~/intel (where the telemetry keeps its client
ID and usage count). The last test runs OpenVINO's own conversion the same way without
ModelKiln, to show that these checks see the telemetry when it is on.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
MODELKILN = pathlib.Path(sys.executable).with_name("modelkiln")  # the console script, as installed
QUIETING = ("CI", "TF_BUILD", "JENKINS_URL", "NNCF_CI", "NNCF_DEV")
TRACED = "trace=connect,sendto,sendmsg,clone,clone3,fork,vfork"
_ADDRESS = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')
_NEW_PROCESS = re.compile(r"^(clone3?|v?fork)\(.*\) = [1-9]")


def _isolation_missing() -> str | None:
    tools = [t for t in ("unshare", "strace", "ip", "nsenter", "curl") if shutil.which(t) is None]
    if tools:
        return f"need {', '.join(tools)}"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    return f"cannot make a network namespace: {probe.stderr.strip()}" if probe.returncode else None


@pytest.fixture(scope="module", autouse=True)
def isolation():
    missing = _isolation_missing()
    if missing:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"the no-telemetry tests cannot run in CI: {missing}")
        pytest.skip(f"the no-telemetry tests {missing}")


@dataclass
class Trace:
    new_processes: list[str]  # the clone/fork calls that made a process (threads are not counted)
    remote_addresses: list[str]  # the calls that named an IP address other than loopback

    @classmethod
    def read(cls, directory: pathlib.Path) -> Trace:
        new_processes, remote = [], []
        for path in sorted(directory.glob("trace.*")):
            for line in path.read_text().splitlines():
                if _NEW_PROCESS.match(line) and "CLONE_THREAD" not in line:
                    new_processes.append(line)
                for match in _ADDRESS.finditer(line):
                    address = ipaddress.ip_address(match[1] or match[2])
                    address = getattr(address, "ipv4_mapped", None) or address
                    if not address.is_loopback:
                        remote.append(line)
        return cls(new_processes, remote)


class Isolated:
    """A command in a network namespace that has only loopback, traced by strace, with HOME=`home`."""

    def __init__(self, *command: str | pathlib.Path, work: pathlib.Path) -> None:
        self.home, self.traces = work / "home", work / "traces"
        self.home.mkdir(parents=True)
        self.traces.mkdir()
        traced = ["strace", "-f", "-ff", "-qq", "--seccomp-bpf", "-o", str(self.traces / "trace"), "-e", TRACED,
                  *map(str, command)]
        env = {k: v for k, v in os.environ.items() if k not in QUIETING}
        self.process = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *traced],
            env={**env, "HOME": str(self.home)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def inside(self, *command: str, timeout: float = 10) -> subprocess.CompletedProcess:
        """`command` run in the same network namespace (a client on its loopback)."""
        return subprocess.run(["nsenter", f"--net=/proc/{self.process.pid}/ns/net", *command],
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        """SIGTERM to the traced command (strace's child), as a pod's stop sends it."""
        children = pathlib.Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        for child in (children.read_text().split() if self.process.poll() is None else []):
            os.kill(int(child), signal.SIGTERM)

    def finish(self, timeout: float) -> tuple[int, str, Trace]:
        output, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, output, Trace.read(self.traces)

    def assert_nothing_phoned_home(self, trace: Trace, output: str) -> None:
        started, called = "\n".join(trace.new_processes), "\n".join(trace.remote_addresses)
        assert not started, f"processes were started (OpenVINO's telemetry forks one per event):\n{started}\n{output}"
        assert not called, f"addresses other than loopback were called:\n{called}\n{output}"
        assert not (self.home / "intel").exists(), \
            f"OpenVINO's telemetry was consulted: it wrote {sorted((self.home / 'intel').iterdir())}"


@dataclass
class Finished:
    run: Isolated
    code: int
    output: str
    trace: Trace


@pytest.fixture(scope="module")
def int8_conversion(tmp_path_factory) -> tuple[Finished, pathlib.Path]:
    """`modelkiln convert` to INT8 (OpenVINO's conversion API and NNCF, the two users of OpenVINO's
    telemetry), isolated, into a new repository."""
    repository = tmp_path_factory.mktemp("repository")
    convert = Isolated(MODELKILN, "convert", "--source", DIGITS / "model.onnx", "--output", repository / "digits",
                       "--precision", "INT8", "--calibration", DIGITS / "calibration.npz",
                       "--calibration-samples", "100", work=tmp_path_factory.mktemp("convert"))
    return Finished(convert, *convert.finish(timeout=300)), repository


def test_convert_to_int8_starts_no_process_and_reaches_nothing_but_loopback(int8_conversion):
    finished, _ = int8_conversion
    assert finished.code == 0, finished.output
    assert json.loads(finished.output.strip().splitlines()[-1])["version"] == 1
    finished.run.assert_nothing_phoned_home(finished.trace, finished.output)


def test_serve_answers_curl_and_starts_no_process_and_reaches_nothing_but_loopback(int8_conversion, tmp_path):
    _, repository = int8_conversion
    serve = Isolated(MODELKILN, "serve", "--repository", repository, "--http-port", "8080", "--grpc-port", "8081",
                     work=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while serve.inside("curl", "-sf", "http://127.0.0.1:8080/v2/models/digits/ready").returncode != 0:
            if serve.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the server never got ready")
            time.sleep(0.5)
        sample = np.load(DIGITS / "samples.npz")["input"][:2]
        body = {"inputs": [{"name": "input", "shape": list(sample.shape), "datatype": "FP32",
                            "data": sample.ravel().tolist()}]}
        answer = serve.inside("curl", "-sf", "-H", "Content-Type: application/json", "-d", json.dumps(body),
                              "http://127.0.0.1:8080/v2/models/digits/infer")
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout)["outputs"][0]["shape"][0] == 2
    finally:
        serve.stop()
        code, output, trace = serve.finish(timeout=60)
    assert code == 0, output
    serve.assert_nothing_phoned_home(trace, output)


def test_the_checks_see_openvinos_telemetry_when_it_is_on(tmp_path):
    # OpenVINO's own conversion API without ModelKiln: its telemetry forks senders that look the
    # server up (in this namespace the lookup fails, so nothing leaves) and writes ~/intel.
    script = f"import openvino; openvino.convert_model({str(DIGITS / 'model.onnx')!r})"
    plain = Isolated(sys.executable, "-c", script, work=tmp_path)
    code, output, trace = plain.finish(timeout=120)
    assert code == 0, output
    with pytest.raises(AssertionError) as caught:
        plain.assert_nothing_phoned_home(trace, output)
    assert trace.new_processes and trace.remote_addresses and (plain.home / "intel" / "openvino_ga_cid").is_file(), \
        str(caught.value)
