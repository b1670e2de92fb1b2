"""Names, versions and values a hostile client sends: a 4xx, no new state, nothing forged in logs.

Model names and versions reach the log, the error message, gRPC trailers and the metric labels;
each of these must stay bounded and one line whatever a client sends, and a repository entry
that is not a version must not stop the others from being served.
"""

from __future__ import annotations

import re
import time

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from runtime_helpers import mlp_graph, publish
from test_bad_input import INFER, grpc_request, rest_input
from tritonclient.grpc import service_pb2 as pb

METADATA = "/inference.GRPCInferenceService/ModelMetadata"
READY = "/inference.GRPCInferenceService/ModelReady"
BOGUS = 200  # requests per kind: enough to see growth, a few seconds on loopback
FORGED = "2030-01-01 00:00:00,000 ERROR modelkiln.forged: FORGED"


def grpc_call(server, method: str, request) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary(method)(request.SerializeToString()
                                        if hasattr(request, "SerializeToString") else request,
                                        timeout=30)
    return raised.value


def assert_still_served(server) -> None:
    good = httpx.post(f"{server.http}/v2/models/mlp/infer", json={"inputs": [rest_input()]})
    assert good.status_code == 200, good.text


def metrics(server) -> str:
    return httpx.get(f"{server.http}/metrics").text


@pytest.mark.parametrize("path", [
    "/v2/models/mlp/versions/²", "/v2/models/mlp/versions/²/ready",
    "/v1/models/mlp/versions/²", "/v1/models/mlp/versions/²/metadata"])
def test_a_unicode_digit_version_is_a_400_on_every_route(served, path):
    response = httpx.get(served.http + path)
    assert response.status_code == 400, response.text
    assert "version '²' is not valid" in response.json()["error"]
    assert_still_served(served)


@pytest.mark.parametrize("method, request_message", [
    (METADATA, pb.ModelMetadataRequest(name="mlp", version="²")),
    (READY, pb.ModelReadyRequest(name="mlp", version="1.5"))])
def test_a_malformed_version_is_invalid_argument_over_grpc(served, method, request_message):
    error = grpc_call(served, method, request_message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "is not valid: expected a version number" in error.details()


def test_tfserving_prediction_too_large_for_fp32_is_a_400(served):
    response = httpx.post(f"{served.http}/v1/models/mlp:predict",
                          json={"instances": [[1e39, 0, 0, 0]]})
    assert response.status_code == 400
    assert response.json()["error"] == ("input 'x': values out of range for FP32 "
                                        "[-3.40282e+38, 3.40282e+38]")
    assert_still_served(served)


def test_bogus_models_and_versions_add_no_metric_series(served):
    def send_bogus(i: int) -> None:
        assert httpx.post(f"{served.http}/v2/models/mlp/versions/{1000 + i}/infer",
                          json={"inputs": [rest_input()]}).status_code == 404
        assert httpx.post(f"{served.http}/v2/models/nope-{i}/infer",
                          json={"inputs": [rest_input()]}).status_code == 404
        assert httpx.post(f"{served.http}/v2/models/mlp/versions/x{i}/infer",
                          json={"inputs": [rest_input()]}).status_code == 400
        assert httpx.post(f"{served.http}/v1/models/mlp/versions/{1000 + i}:predict",
                          json={"instances": [[0, 0, 0, 0]]}).status_code == 404
        with grpc.insecure_channel(served.grpc) as channel:
            with pytest.raises(grpc.RpcError):
                channel.unary_unary(INFER)(grpc_request(version=str(1000 + i)), timeout=30)

    send_bogus(0)  # the placeholder series exist from the first one on
    before = metrics(served)
    for i in range(1, BOGUS + 1):
        send_bogus(i)
    after = metrics(served)
    assert after.count("\n") == before.count("\n")
    assert len(after) - len(before) < 200  # counters' digits, not series
    assert 'modelkiln_requests_total{code="404",model="mlp",protocol="rest",version="_unknown"}' \
        in after
    assert 'modelkiln_requests_total{code="404",model="_unknown",protocol="rest",' \
        'version="_unknown"}' in after
    labels = {value for family in text_string_to_metric_families(after) for sample in family.samples
              for value in sample.labels.values()}
    assert {"_unknown", "mlp"} <= labels
    assert f"{1000 + BOGUS}" not in labels and f"nope-{BOGUS}" not in labels and f"x{BOGUS}" not in labels
    assert_still_served(served)


def test_a_model_name_with_crlf_forges_no_log_line_and_is_not_an_error(served):
    before = len(served.log())
    name = f"x\r\n{FORGED}"
    response = httpx.post(f"{served.http}/v2/models/x%0D%0A{FORGED.replace(' ', '%20')}/infer",
                          json={"inputs": [rest_input()]})
    assert response.status_code == 400  # a control character: no model directory has it
    assert response.json()["error"].startswith(r"model name 'x\r\n2030-01-01")
    error = grpc_call(served, INFER, grpc_request(model=name))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "\n" not in error.details() and "\r" not in error.details()
    assert_still_served(served)
    time.sleep(0.2)  # the server's log is written by another process
    log = served.log()[before:]
    assert not re.search(r"^2030-01-01", log, re.MULTILINE), log
    assert r"x\r\n2030-01-01" in log  # escaped, on the line that reports it
    assert not re.search(r"^\S+ \S+ ERROR ", log, re.MULTILINE) and "Traceback" not in log, log


def test_a_one_mebibyte_model_name_is_cut_everywhere(model_repository, start_server):
    served = start_server(model_repository)  # the default message limit, over 1 MiB
    served.wait_until("/v2/health/ready")
    before = len(served.log())
    name = "m" * (1 << 20)
    error = grpc_call(served, INFER, grpc_request(model=name))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"({1 << 20} characters)" in error.details() and len(error.details()) < 300
    error = grpc_call(served, METADATA, pb.ModelMetadataRequest(name=name))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and len(error.details()) < 300
    long_path = "m" * 15_000  # under the request head's cap (16 KiB), far over a name's 255
    response = httpx.post(f"{served.http}/v2/models/{long_path}/infer",
                          json={"inputs": [rest_input()]})
    assert response.status_code == 400 and len(response.content) < 400, response.text[:300]
    response = httpx.post(f"{served.http}/invocations", json={"inputs": [rest_input()]},
                          headers={"X-Amzn-SageMaker-Target-Model": long_path})
    assert response.status_code == 400 and len(response.content) < 400, response.text[:300]
    assert_still_served(served)
    time.sleep(0.2)
    log = served.log()[before:]
    assert len(log) < 4000 and not re.search(r"^\S+ \S+ ERROR ", log, re.MULTILINE), log[:2000]


def test_directories_that_are_not_versions_are_skipped_and_polling_goes_on(tmp_path,
                                                                           start_server):
    repository = tmp_path / "repo"
    publish(repository, "mlp", 1, mlp_graph())
    for name in ("²", "abc", "1.5", "99999999999999999999"):
        (repository / "mlp" / name).mkdir()
    server = start_server(repository)
    server.wait_until("/v2/health/ready")
    x = np.ones((2, 4), np.float32).tolist()
    answer = httpx.post(f"{server.http}/v1/models/mlp:predict", json={"instances": x})
    assert answer.status_code == 200
    publish(repository, "mlp", 2, mlp_graph(offset=1))  # polling must still see new versions
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.http}/v2/models/mlp").json().get("versions") != ["2"]:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    answer = httpx.post(f"{server.http}/v2/models/mlp/infer",
                        json={"inputs": [rest_input(data=sum(x, []))]})
    assert answer.status_code == 200 and answer.json()["model_version"] == "2"
    log = server.log()
    for name in ("'²'", "'abc'", "'1.5'", "'99999999999999999999'"):
        warnings = [line for line in log.splitlines()
                    if f"skipping directory {name}" in line]
        assert len(warnings) == 1 and " WARNING " in warnings[0], log  # once, not every poll
    assert "Traceback" not in log
