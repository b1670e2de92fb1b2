"""TF-Serving REST, the SageMaker contract and /metrics, called with plain HTTP."""

from __future__ import annotations

import io

import httpx
import numpy as np
from runtime_helpers import image_graph, publish, run_directly

X = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)


def expected(model_repository, x=X):
    return run_directly(model_repository / "mlp/1/model.xml", {"x": x})


def test_tfs_row_format_predicts_each_instance(served, model_repository):
    response = httpx.post(f"{served.http}/v1/models/mlp:predict",
                          json={"instances": X.tolist()})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    reference = expected(model_repository)
    assert [p["label"] for p in predictions] == reference["label"].tolist()
    np.testing.assert_allclose([p["scores"] for p in predictions], reference["scores"],
                               rtol=1e-6)


def test_tfs_columnar_format_and_version_route(served, model_repository):
    response = httpx.post(f"{served.http}/v1/models/mlp/versions/1:predict",
                          json={"inputs": {"x": X.tolist()}})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    np.testing.assert_allclose(outputs["scores"], expected(model_repository)["scores"],
                               rtol=1e-6)


def test_tfs_multi_input_row_format(served):
    instances = [{"a": [1, 2], "d": [3, 4], "c": [True, False], "f": [0.5, -1, 2], "u": [1, 2]},
                 {"a": [5, 6], "d": [7, 8], "c": [False, False], "f": [1, 1, 1], "u": [3, 4]}]
    response = httpx.post(f"{served.http}/v1/models/mixed:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    assert first["a2"] == [2, 4] and second["dn"] == [-7, -8] and first["cn"] == [False, True]


def test_tfs_status_and_metadata(served):
    status = httpx.get(f"{served.http}/v1/models/mlp").json()
    assert status == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    metadata = httpx.get(f"{served.http}/v1/models/mlp/metadata").json()
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["x"]["tensor_shape"]["dim"]] == ["-1", "4"]
    assert signature["outputs"]["label"]["dtype"] == "DT_INT64"


def test_tfs_bad_requests_name_the_problem(served):
    response = httpx.post(f"{served.http}/v1/models/mlp:predict", json={"instances": [[1, 2, 3]]})
    assert response.status_code == 400
    assert response.json()["error"] == "input 'x': expected shape [-1,4], got [1,3]"
    response = httpx.post(f"{served.http}/v1/models/mlp:predict", json={"rows": [[1, 2, 3, 4]]})
    assert response.status_code == 400 and "'instances' (row format)" in response.json()["error"]
    response = httpx.get(f"{served.http}/v1/models/nope")
    assert response.status_code == 404 and "model 'nope' is not served" in response.json()["error"]


def test_sagemaker_ping_is_ok_when_every_model_is_ready(served):
    assert httpx.get(f"{served.http}/ping").status_code == 200


def test_sagemaker_invocations_in_every_body_format(served, model_repository):
    reference = expected(model_repository)
    target = {"X-Amzn-SageMaker-Target-Model": "mlp"}
    tfs = httpx.post(f"{served.http}/invocations", json={"instances": X.tolist()}, headers=target)
    assert tfs.status_code == 200, tfs.text
    assert [p["label"] for p in tfs.json()["predictions"]] == reference["label"].tolist()

    kserve = httpx.post(f"{served.http}/invocations", headers=target, json={
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": X.ravel().tolist()}],
        "outputs": [{"name": "label"}]})
    assert kserve.status_code == 200, kserve.text
    assert kserve.json()["outputs"][0]["data"] == reference["label"].tolist()

    buffer = io.BytesIO()
    np.save(buffer, X)
    npy = httpx.post(f"{served.http}/invocations", content=buffer.getvalue(),
                     headers={**target, "Content-Type": "application/x-npy"})
    assert npy.status_code == 200, npy.text
    np.testing.assert_allclose(npy.json()["predictions"][0]["scores"], reference["scores"][0],
                               rtol=1e-6)


def test_sagemaker_needs_a_target_when_several_models_are_served(served):
    response = httpx.post(f"{served.http}/invocations", json={"instances": X.tolist()})
    assert response.status_code == 400
    assert "X-Amzn-SageMaker-Target-Model" in response.json()["error"]


def test_sagemaker_npy_needs_the_model_dtype(served):
    buffer = io.BytesIO()
    np.save(buffer, X.astype(np.float64))
    response = httpx.post(f"{served.http}/invocations", content=buffer.getvalue(),
                          headers={"X-Amzn-SageMaker-Target-Model": "mlp",
                                   "Content-Type": "application/x-npy"})
    assert response.status_code == 400
    assert response.json()["error"] == "input 'x': expected FP32 [-1,4], got FP64 [3,4]"


def test_metrics_count_requests_by_model_version_protocol_and_code(served):
    httpx.post(f"{served.http}/v1/models/mlp:predict", json={"instances": X.tolist()})
    httpx.post(f"{served.http}/v1/models/mlp:predict", json={"instances": [[1]]})
    text = httpx.get(f"{served.http}/metrics").text
    assert 'modelkiln_requests_total{code="200",model="mlp",protocol="tfserving",version="1"}' in text
    assert 'modelkiln_requests_total{code="400",model="mlp",protocol="tfserving",version="1"}' in text
    for name in ("modelkiln_request_duration_seconds_bucket", "modelkiln_queue_duration_seconds_bucket",
                 "modelkiln_inference_duration_seconds_bucket", "modelkiln_inflight_requests",
                 "modelkiln_model_load_duration_seconds_bucket"):
        assert name + "{" in text, name
    assert 'modelkiln_model_ready{model="mlp",version="1"} 1.0' in text


def test_sagemaker_invocations_go_to_the_only_model_and_answer_npy(tmp_path, start_server):
    repository = tmp_path / "repo"
    publish(repository, "image", 1, image_graph())
    server = start_server(repository)
    server.wait_until("/ping")
    image = np.random.default_rng(5).random((1, 3, 8, 8), dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, image)
    response = httpx.post(f"{server.http}/invocations", content=buffer.getvalue(),
                          headers={"Content-Type": "application/x-npy",
                                   "Accept": "application/x-npy"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npy"
    scores = np.load(io.BytesIO(response.content))
    np.testing.assert_allclose(scores, image.mean(axis=(2, 3)), rtol=1e-5)


def test_sagemaker_npy_answer_needs_a_single_output(served):
    buffer = io.BytesIO()
    np.save(buffer, X)
    response = httpx.post(f"{served.http}/invocations", content=buffer.getvalue(),
                          headers={"X-Amzn-SageMaker-Target-Model": "mlp",
                                   "Content-Type": "application/x-npy",
                                   "Accept": "application/x-npy"})
    assert response.status_code == 400
    assert response.json()["error"] == ("Accept: application/x-npy needs one output; model 'mlp' "
                                        "answers with 'scores', 'label'")
