"""docs/metrics.md and dashboards/modelkiln.json name only metrics that a real `modelkiln serve` exposes.

A small model is built and served by the real command; requests over REST and gRPC (one of them
failing) fill the metrics in, and the live /metrics page is the reference. The operator's metrics
are checked the same way against a real `modelkiln operator` in e2e/test_e2e_helm.py.
"""

from __future__ import annotations

import sys

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from chart_helpers import (ROOT, dashboard_queries, documented_families, documented_metrics, live_series,
                           unknown_names_and_labels)

sys.path.insert(0, str(ROOT / "tests" / "runtime"))
from runtime_helpers import Server, mlp_graph, publish  # noqa: E402  (tests/runtime: a real server)

RUNTIME = "modelkiln_"
OPERATOR = "modelkiln_operator_"


@pytest.fixture(scope="module")
def runtime_series(tmp_path_factory) -> dict[str, set[str]]:
    """The live /metrics of a server that answered REST and gRPC requests, one of them an error,
    in a Shadow rollout of its model (the rollout metrics exist only then)."""
    repository = tmp_path_factory.mktemp("repository")
    publish(repository, "mlp", 1, mlp_graph())
    publish(repository, "mlp", 2, mlp_graph())
    server = Server(repository, "--version-policy", '{"specific": [1, 2]}', "--rollout",
                    '{"model": "mlp", "strategy": "Shadow", "stable": 1, "candidate": 2}',
                    log=tmp_path_factory.mktemp("logs") / "server.log")
    try:
        server.wait_until("/v2/models/mlp/versions/2/ready")
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
        assert httpx.post(f"{server.http}/v2/models/mlp/infer", json=body).status_code == 200
        assert httpx.post(f"{server.http}/v2/models/nope/infer", json=body).status_code == 404
        client = triton_grpc.InferenceServerClient(server.grpc)
        x = triton_grpc.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        assert client.infer("mlp", [x]).as_numpy("label").shape == (1,)
        client.close()
        return live_series(httpx.get(f"{server.http}/metrics").text)
    finally:
        server.stop()


def runtime_only(names: set[str]) -> set[str]:
    return {name for name in names if not name.startswith(OPERATOR)}


def test_the_dashboard_queries_only_metrics_and_labels_the_server_exposes(runtime_series):
    queries = [q for q in dashboard_queries() if OPERATOR not in q]
    assert queries
    assert unknown_names_and_labels(queries, runtime_series, prefix=RUNTIME) == []


def test_every_server_metric_is_documented_and_every_documented_one_is_live(runtime_series):
    assert documented_families(runtime_series, prefix=RUNTIME) == runtime_only(documented_metrics())


def test_the_dashboard_shows_requests_latency_inflight_replicas_and_phases():
    queries = " ".join(dashboard_queries())
    for metric in ("modelkiln_requests_total", "modelkiln_request_duration_seconds_bucket",
                   "modelkiln_inflight_requests", "modelkiln_model_ready", "modelkiln_operator_models",
                   "modelkiln_rollout_agreements_total", "modelkiln_rollout_shadow_dropped_total"):
        assert metric in queries
    assert "histogram_quantile(0.99" in queries
