"""A rollout inside one `modelkiln serve`: who answers the clients, what the shadow copy counts.

Two versions of a model are published in the repository and served with `--rollout`; clients call
over KServe v2 REST and gRPC, and /metrics is read the way the operator reads it.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from onnx import numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from runtime_helpers import MLP_B, MLP_W, Server, mlp_graph, publish, slow_graph

from modelkiln.runtime.serving.rollout import RolloutPlan, compare

X = [[1.0, 2.0, 3.0, 4.0]]


def other_mlp():
    """The mlp's signature with other weights: it answers other classes."""
    graph = mlp_graph()
    graph.graph.initializer[0].CopyFrom(numpy_helper.from_array(-MLP_W[:, ::-1].copy(), "W"))
    return graph


def expected_scores(x) -> np.ndarray:
    return np.asarray(x, np.float32) @ MLP_W + MLP_B


def infer_rest(server: Server, version: str | None = None, x=X) -> dict:
    path = "/v2/models/mlp" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(x), 4], "data": sum(x, [])}]}
    response = httpx.post(server.http + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def samples(server: Server) -> dict[tuple, float]:
    """Every sample of /metrics by (name, sorted labels)."""
    text = httpx.get(server.http + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(server: Server, name: str, **labels) -> float:
    return sum(v for (n, l), v in samples(server).items() if n == name and labels.items() <= dict(l).items())


def wait_for_compared(server: Server, count: int) -> None:
    """The shadow copies run after the clients have their answers: wait until they are counted."""
    deadline = time.monotonic() + 60
    while value(server, "modelkiln_rollout_compared_total") + value(
            server, "modelkiln_rollout_shadow_dropped_total") < count:
        assert time.monotonic() < deadline, samples(server)
        time.sleep(0.05)


@pytest.fixture
def two_versions(tmp_path):
    def publish_two(candidate):
        repository = tmp_path / "repository"
        publish(repository, "mlp", 1, mlp_graph())
        publish(repository, "mlp", 2, candidate)
        return repository
    return publish_two


def start_rollout(start_server, repository, **plan) -> Server:
    rollout = {"model": "mlp", "stable": 1, "candidate": 2, **plan}
    server = start_server(repository, "--version-policy", '{"specific": [1, 2]}', "--rollout", json.dumps(rollout))
    server.wait_until("/v2/models/mlp/versions/2/ready")
    return server


def test_in_shadow_mode_clients_get_the_stable_answers_and_every_request_is_compared(start_server, two_versions):
    server = start_rollout(start_server, two_versions(mlp_graph()), strategy="Shadow")
    for _ in range(20):
        answer = infer_rest(server)
        assert answer["model_version"] == "1"
    client = triton_grpc.InferenceServerClient(server.grpc)
    x = triton_grpc.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.asarray(X, np.float32))
    for _ in range(10):
        assert client.infer("mlp", [x]).get_response().model_version == "1"
    client.close()
    wait_for_compared(server, 30)
    assert value(server, "modelkiln_rollout_compared_total", model="mlp") == 30
    assert value(server, "modelkiln_rollout_agreements_total", model="mlp") == 30
    assert value(server, "modelkiln_rollout_cosine_sum", model="mlp") == pytest.approx(30)
    assert value(server, "modelkiln_rollout_requests_total", version="1", role="stable", path="client",
                 outcome="ok") == 30
    assert value(server, "modelkiln_rollout_requests_total", version="2", role="candidate", path="shadow",
                 outcome="ok") == 30
    assert value(server, "modelkiln_rollout_inference_duration_seconds_count", role="candidate") == 30
    assert value(server, "modelkiln_rollout_info", strategy="Shadow", stable="1", candidate="2") == 1


def test_a_different_model_in_shadow_disagrees_and_no_client_gets_its_answers(start_server, two_versions):
    server = start_rollout(start_server, two_versions(other_mlp()), strategy="Shadow")
    rows = [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 2.0, -3.0], [4.0, -2.0, 1.0, 0.0]]
    for _ in range(10):
        answer = infer_rest(server, x=rows)
        assert answer["model_version"] == "1"
        scores = next(o for o in answer["outputs"] if o["name"] == "scores")
        np.testing.assert_allclose(np.reshape(scores["data"], (3, 3)), expected_scores(rows), rtol=1e-5)
    wait_for_compared(server, 10)
    assert value(server, "modelkiln_rollout_agreements_total") < 10
    cosine_mean = value(server, "modelkiln_rollout_cosine_sum") / value(server, "modelkiln_rollout_cosine_count")
    assert cosine_mean < 0.99


def test_a_canary_at_100_percent_answers_from_the_candidate_and_compares_with_the_stable(start_server, two_versions):
    server = start_rollout(start_server, two_versions(mlp_graph()), strategy="Canary", weight=100)
    assert {infer_rest(server)["model_version"] for _ in range(10)} == {"2"}
    wait_for_compared(server, 10)
    assert value(server, "modelkiln_rollout_requests_total", role="candidate", path="client") == 10
    assert value(server, "modelkiln_rollout_requests_total", role="stable", path="shadow") == 10


def test_requests_that_name_a_version_get_it_and_stay_out_of_the_rollout(start_server, two_versions):
    server = start_rollout(start_server, two_versions(other_mlp()), strategy="Canary", weight=0)
    assert infer_rest(server, version="2")["model_version"] == "2"
    assert infer_rest(server, version="1")["model_version"] == "1"
    assert value(server, "modelkiln_rollout_requests_total") == 0


def test_a_full_shadow_queue_drops_copies_and_never_fails_a_client(start_server, tmp_path):
    repository = tmp_path / "repository"
    publish(repository, "mlp", 1, slow_graph())
    publish(repository, "mlp", 2, slow_graph())
    server = start_rollout(start_server, repository, strategy="Shadow", queue=1)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [64, 512], "data": [0.01] * 64 * 512}]}

    def call(_):
        response = httpx.post(server.http + "/v2/models/mlp/infer", json=body, timeout=60)
        return response.status_code, response.json()["model_version"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, range(24)))
    assert outcomes == [(200, "1")] * 24
    wait_for_compared(server, 24)
    assert value(server, "modelkiln_rollout_shadow_dropped_total") > 0


@pytest.mark.parametrize("rollout, message", [
    ('{"model": "mlp", "strategy": "Blue", "stable": 1, "candidate": 2}', "model and strategy are required"),
    ('{"model": "mlp", "strategy": "Canary", "stable": 1, "candidate": 1}', "stable and candidate are both version 1"),
    ('{"model": "mlp", "strategy": "Canary", "stable": 1, "candidate": 2, "weight": 150}',
     "weight: expected a number from 0 to 100, got 150"),
    ('{"model": "mlp", "strategy": "Shadow", "stable": 1, "candidate": 2, "split": 1}', "unknown key(s) ['split']"),
])
def test_a_bad_rollout_flag_is_refused_with_what_was_expected(tmp_path, rollout, message):
    done = subprocess.run([sys.executable, "-m", "modelkiln.cli", "serve", "--repository", str(tmp_path),
                           "--rollout", rollout], capture_output=True, text=True)
    assert done.returncode == 2
    assert message in done.stderr


def test_a_rollout_of_a_model_not_served_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "modelkiln.cli", "serve", "--repository", str(tmp_path),
                           "--model", "mlp", "--rollout",
                           '{"model": "other", "strategy": "Shadow", "stable": 1, "candidate": 2}'],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "--rollout: model(s) ['other'] not among --model ['mlp']" in done.stderr


def test_the_plan_defaults_to_a_full_sample_and_a_bounded_queue():
    plan = RolloutPlan.parse('{"model": "m", "strategy": "Shadow", "stable": 3, "candidate": 4}')
    assert (plan.sample, plan.weight, plan.queue) == (1.0, 0.0, 16)


def test_comparison_counts_rows_whose_top1_agrees_and_the_cosine():
    ours = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert compare(ours, ours) == (1.0, pytest.approx(1.0))
    agreement, cosine = compare(ours, np.array([[0.1, 0.9], [0.2, 0.8]]))
    assert agreement == 0.5 and cosine < 1
    assert compare(np.array([3, 1]), np.array([3, 2]))[0] == 0.5  # labels: equal or not
    assert compare(ours, np.ones((3, 2))) == (0.0, 0.0)  # another shape agrees on nothing
