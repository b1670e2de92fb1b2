"""Versions come and go under load, broken models stay contained, SIGTERM drains."""

from __future__ import annotations

import json
import multiprocessing
import re
import signal
import threading
import time

import httpx
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from runtime_helpers import MLP_B, MLP_W, mlp_graph, publish, reshape_graph, slow_graph

X = np.ones((2, 4), np.float32)


def _scores(offset: float) -> np.ndarray:
    return X @ MLP_W + MLP_B + np.float32(offset)


def _wait_for(condition, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


def test_new_version_takes_over_under_load_with_zero_failed_requests(tmp_path, start_server):
    repository = tmp_path / "repo"
    publish(repository, "mlp", 1, mlp_graph(offset=0))
    server = start_server(repository)
    server.wait_until("/v2/health/ready")
    outcomes: list[tuple[str, str, str]] = []  # (transport, version or error, check)
    stop = threading.Event()

    def http_caller():
        client = triton_http.InferenceServerClient(server.http.removeprefix("http://"))

        def infer():
            tensor = triton_http.InferInput("x", [2, 4], "FP32")
            tensor.set_data_from_numpy(X)
            result = client.infer("mlp", [tensor])
            return result.get_response()["model_version"], result.as_numpy("scores")
        return infer

    def grpc_caller():
        client = triton_grpc.InferenceServerClient(server.grpc)

        def infer():
            tensor = triton_grpc.InferInput("x", [2, 4], "FP32")
            tensor.set_data_from_numpy(X)
            result = client.infer("mlp", [tensor])
            return result.get_response().model_version, result.as_numpy("scores")
        return infer

    def load_loop(transport, make_caller):  # each thread has its own client
        infer = make_caller()
        while not stop.is_set():
            try:
                version, scores = infer()
            except Exception as error:
                outcomes.append((transport, f"error: {error}", ""))
                continue
            ok = np.allclose(scores, _scores(100 * (int(version) - 1)), rtol=1e-5)
            outcomes.append((transport, version, "ok" if ok else "wrong result"))

    threads = [threading.Thread(target=load_loop, args=args)
               for args in (("http", http_caller), ("http", http_caller), ("grpc", grpc_caller))]
    for thread in threads:
        thread.start()
    try:
        _wait_for(lambda: len(outcomes) > 50, what="load before the new version")
        publish(repository, "mlp", 2, mlp_graph(offset=100))
        _wait_for(lambda: len(outcomes) > 50 and all(v == "2" for _, v, _ in outcomes[-50:]),
                  what="version 2 answering every request")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    failures = [o for o in outcomes if o[1].startswith("error") or o[2] != "ok"]
    assert failures == []
    assert {v for _, v, _ in outcomes} == {"1", "2"}
    # version 1 was unloaded once its requests were done
    _wait_for(lambda: httpx.get(f"{server.http}/v2/models/mlp/versions/1/ready").status_code
              == 404, what="version 1 unloaded")
    assert 'modelkiln_model_ready{model="mlp",version="1"} 0.0' in httpx.get(
        f"{server.http}/metrics").text
    assert "model mlp version 1 unloaded" in server.log()


def test_version_policy_all_serves_every_version_and_caches_compiled_models(tmp_path,
                                                                          start_server):
    repository = tmp_path / "repo"
    publish(repository, "mlp", 1, mlp_graph(offset=0))
    publish(repository, "mlp", 3, mlp_graph(offset=200))
    config = tmp_path / "serving.json"
    config.write_text(json.dumps({"models": {"mlp": {"versionPolicy": {"all": {}}}}}))
    cache = tmp_path / "cache"
    server = start_server(repository, "--config", str(config), "--cache-dir", str(cache))
    server.wait_until("/v2/health/ready")
    assert list(cache.glob("*.blob")), "OpenVINO's model cache (CACHE_DIR) stays empty"
    client = triton_http.InferenceServerClient(server.http.removeprefix("http://"))
    for version, offset in (("1", 0), ("3", 200), ("", 200)):
        tensor = triton_http.InferInput("x", [2, 4], "FP32")
        tensor.set_data_from_numpy(X)
        result = client.infer("mlp", [tensor], model_version=version)
        np.testing.assert_allclose(result.as_numpy("scores"), _scores(offset), rtol=1e-5)
    assert client.get_model_metadata("mlp")["versions"] == ["1", "3"]


def test_broken_model_is_not_ready_while_a_good_one_serves(tmp_path, start_server):
    repository = tmp_path / "repo"
    publish(repository, "mlp", 1, mlp_graph())
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "1" / "model.xml").write_text("<net>this is not a model</net>")
    server = start_server(repository)
    server.wait_until("/v2/models/mlp/ready")

    ready = httpx.get(f"{server.http}/v2/models/broken/ready")
    assert ready.status_code == 503
    assert ready.json()["error"].startswith("model 'broken' version 1 failed to load: ")
    metadata = httpx.get(f"{server.http}/v2/models/broken")
    assert metadata.status_code == 503 and "failed to load" in metadata.json()["error"]
    status = httpx.get(f"{server.http}/v1/models/broken").json()["model_version_status"][0]
    assert status["state"] == "END" and status["status"]["error_code"] == "UNKNOWN"
    assert status["status"]["error_message"]
    assert not triton_grpc.InferenceServerClient(server.grpc).is_model_ready("broken")
    assert httpx.get(f"{server.http}/v2/health/ready").status_code == 503
    assert httpx.get(f"{server.http}/ping").status_code == 503
    assert re.search(r"model broken version 1 failed to load: \S", server.log())

    response = httpx.post(f"{server.http}/v2/models/mlp/infer", json={"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.ravel().tolist()}]})
    assert response.status_code == 200
    np.testing.assert_allclose(response.json()["outputs"][0]["data"], _scores(0).ravel(),
                               rtol=1e-5)

    # a fixed version published next to the broken one is picked up and serves
    publish(repository, "broken", 2, mlp_graph())
    server.wait_until("/v2/models/broken/ready")
    assert httpx.get(f"{server.http}/v2/health/ready").status_code == 200


def test_sigterm_lets_in_flight_requests_finish_then_exits_zero(tmp_path, start_server):
    repository = tmp_path / "repo"
    publish(repository, "slow", 1, slow_graph())
    server = start_server(repository, "--drain-timeout", "60")
    server.wait_until("/v2/health/ready")
    x = np.ones((12000, 512), np.float32)  # a few seconds of matmuls on a small machine
    result: dict = {}

    def slow_request():
        client = triton_http.InferenceServerClient(server.http.removeprefix("http://"),
                                                   network_timeout=120)
        tensor = triton_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        try:
            result["value"] = client.infer("slow", [tensor]).as_numpy("y")
        except Exception as error:
            result["error"] = error

    thread = threading.Thread(target=slow_request)
    thread.start()
    _wait_for(lambda: 'modelkiln_inflight_requests{model="slow"} 1.0'
              in httpx.get(f"{server.http}/metrics").text, what="the request in flight")
    server.process.send_signal(signal.SIGTERM)
    thread.join(timeout=120)
    assert "error" not in result and np.isfinite(result["value"])
    assert server.process.wait(timeout=60) == 0
    log = server.log()
    assert "draining in-flight requests" in log and "stopped" in log


def _fast_caller(url: str, until: float) -> None:
    client = triton_http.InferenceServerClient(url)
    while time.time() < until:
        tensor = triton_http.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.full((1, 4), 0.5, np.float32))
        client.infer("fast", [tensor])


def test_concurrent_requests_to_a_fast_model_are_counted_in_flight(tmp_path, start_server):
    # A tiny model's requests run on the loop's thread; the gauge that request-based autoscaling
    # reads must still see the ones waiting for it. Clients in processes of their own, so that
    # they keep the server busy (in one process the GIL would pace them).
    repository = tmp_path / "repo"
    publish(repository, "fast", 1, mlp_graph())
    server = start_server(repository)
    server.wait_until("/v2/health/ready")
    until = time.time() + 10
    callers = [multiprocessing.get_context("spawn").Process(
        target=_fast_caller, args=(server.http.removeprefix("http://"), until)) for _ in range(8)]
    for caller in callers:
        caller.start()
    gauge = re.compile(r'^modelkiln_inflight_requests\{model="fast"\} (\S+)$', re.M)
    seen = []
    try:
        time.sleep(3)  # the callers started
        while time.time() < until - 1:  # bounded by the callers' end
            seen.append(float(gauge.search(httpx.get(f"{server.http}/metrics", timeout=30).text)[1]))
            time.sleep(0.05)
    finally:
        for caller in callers:
            caller.join(timeout=60)
    # 8 busy clients: a few requests are in flight at any time (without the loop's turn before an
    # inline inference, a scrape would see 0 nearly always)
    assert seen and sum(seen) / len(seen) >= 1, f"requests in flight seen by {len(seen)} scrapes: {seen}"


def test_an_engine_failure_is_a_500_with_the_reason_and_the_model_keeps_serving(
        tmp_path, start_server):
    repository = tmp_path / "repo"
    publish(repository, "reshape", 1, reshape_graph())
    server = start_server(repository)
    server.wait_until("/v2/health/ready")

    def infer(rows: int) -> httpx.Response:
        return httpx.post(f"{server.http}/v2/models/reshape/infer", json={"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": [0.5] * rows * 4}]},
            timeout=30)

    assert infer(2).status_code == 200  # a fast model's requests then run on the loop's thread
    for _ in range(3):  # more failures than the model has infer requests: none is lost
        failed = infer(3)
        assert failed.status_code == 500
        assert failed.json()["error"].startswith("inference failed: ")
        assert "Traceback" not in failed.text
    assert infer(2).status_code == 200
    assert "inference failed" in server.log()


def test_readiness_is_false_until_the_expected_model_is_loaded(tmp_path, start_server):
    repository = tmp_path / "repo"
    (repository / "mlp").mkdir(parents=True)  # the model's directory, no version in it yet
    server = start_server(repository, "--model", "mlp")
    server.wait_until("/v2/health/live")
    grpc_client = triton_grpc.InferenceServerClient(server.grpc)
    for _ in range(3):  # as a readiness probe asks, again and again
        assert httpx.get(f"{server.http}/v2/health/ready").status_code == 503
        assert httpx.get(f"{server.http}/ping").status_code == 503
        ready = httpx.get(f"{server.http}/v2/models/mlp/ready")
        assert ready.status_code == 503 and "no version directory" in ready.json()["error"]
        assert not grpc_client.is_server_ready() and not grpc_client.is_model_ready("mlp")

    publish(repository, "mlp", 1, mlp_graph())
    server.wait_until("/v2/health/ready")
    assert httpx.get(f"{server.http}/ping").status_code == 200
    assert grpc_client.is_server_ready() and grpc_client.is_model_ready("mlp")
    # Not being ready yet is a state, not a fault: the probes leave no ERROR in the log.
    assert " ERROR " not in server.log(), server.log()
