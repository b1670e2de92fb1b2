"""Clients we did not write, calling models through their Services: what a caller sees while the
autoscaler changes the pods under it (the autoscaling e2e tests and bench/autoscaling.py).

Every loop is bounded in count and time, and sends only to the test cluster's own addresses.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from control_plane import eventually


@dataclasses.dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic() when sent
    seconds: float
    error: str = ""  # "" when answered


def digits_input(module=httpclient):
    inp = module.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    return inp


class Load:
    """`clients` threads, each sending KServe v2 REST requests one after another with tritonclient
    to `address` (host:port of a Service), until stopped, `max_seconds` or `max_requests` each;
    with `pace`, a client sends at most one request per `pace` seconds (a user with think time)."""

    def __init__(self, address: str, model: str, *, clients: int, max_seconds: float = 600,
                 max_requests: int = 100_000, timeout: float = 60, pace: float = 0) -> None:
        self.address, self.model, self.timeout, self.pace = address, model, timeout, pace
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.outcomes: list[Outcome] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        client = httpclient.InferenceServerClient(self.address, connection_timeout=self.timeout,
                                                  network_timeout=self.timeout)
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.max_requests):
            if self.stopping.is_set() or time.monotonic() > deadline:
                break
            start = time.monotonic()
            try:
                client.infer(self.model, [digits_input()])
            except Exception as exc:  # noqa: BLE001 - every failure a caller would see counts
                self.outcomes.append(Outcome(start, time.monotonic() - start, f"{type(exc).__name__}: {exc}"))
            else:
                self.outcomes.append(Outcome(start, time.monotonic() - start))
            self.stopping.wait(max(0.0, start + self.pace - time.monotonic()))

    def start(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(self.timeout + 10)
        return self.outcomes

    def failures(self) -> list[str]:
        return [o.error for o in self.outcomes if o.error]

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def routed(address: str, model: str) -> None:
    """Wait until a new Service answers: kube-proxy programs it a moment after its first pod is
    Ready (until then it refuses connections, or a SYN sent before its rules leaves the host and
    is lost). A new client each time: a connection tracked before the rules existed stays unrouted."""
    def ready() -> bool:
        try:
            return httpclient.InferenceServerClient(address, connection_timeout=2).is_model_ready(model)
        except Exception:  # noqa: BLE001 - not routed yet
            return False
    eventually(f"{address} routed to {model}", ready, timeout=60)


def percentiles(outcomes: list[Outcome], start: float = 0, end: float = float("inf")) -> dict[str, float]:
    """p50 and p99 latency (ms) of the answered requests sent in [start, end), and their count."""
    seconds = [o.seconds for o in outcomes if not o.error and start <= o.started < end]
    if not seconds:
        return {"requests": 0}
    p50, p99 = (float(v) for v in np.percentile(seconds, [50, 99]))
    return {"requests": len(seconds), "p50_ms": round(p50 * 1000, 1), "p99_ms": round(p99 * 1000, 1)}


def rest_infer_with_host(address: str, host: str, model: str, *, timeout: float) -> str:
    """One KServe v2 REST request to `address` (the interceptor's Service) for the name `host` a
    client in the cluster would call: the model's version, as it answered."""
    client = httpclient.InferenceServerClient(address, connection_timeout=timeout, network_timeout=timeout)
    return client.infer(model, [digits_input()], headers={"Host": host}).get_response()["model_version"]


def sagemaker_invocations_with_host(address: str, host: str, *, timeout: float) -> bytes:
    """SageMaker's POST /invocations (a JSON instances body), as `host`."""
    body = b'{"instances": [' + b",".join([b"0.0"] * 64).join((b"[", b"]")) + b"]}"
    request = urllib.request.Request(f"http://{address}/invocations", data=body, method="POST",
                                     headers={"Host": host, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def grpc_infer_with_authority(address: str, authority: str, model: str, *, timeout: float) -> str:
    """One KServe v2 gRPC request to `address` with `authority` (HTTP/2's Host): the version that answered."""
    client = grpcclient.InferenceServerClient(address, channel_args=[("grpc.default_authority", authority)])
    try:
        return client.infer(model, [digits_input(grpcclient)], client_timeout=timeout).get_response().model_version
    finally:
        client.close()
