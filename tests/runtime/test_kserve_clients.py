"""tritonclient (HTTP and gRPC, JSON and binary) gets the same results as OpenVINO run directly."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from runtime_helpers import run_directly

MIXED_INPUTS = {
    "a": np.array([[1, -2], [2**40, 7]], np.int64),
    "d": np.array([[3, -4], [5, 6]], np.int32),
    "c": np.array([[True, False], [False, True]]),
    "f": np.array([[-1.5, 0.25, 2.0], [3.0, -0.5, 1.0]], np.float16),
    "u": np.array([[1, 100], [7, 127]], np.uint8),
}
DATATYPES = {"a": "INT64", "d": "INT32", "c": "BOOL", "f": "FP16", "u": "UINT8"}
OUTPUTS = {"a2": "a", "dn": "d", "cn": "c", "fr": "f", "u2": "u"}


def _http_infer(server, model, inputs, datatypes, *, binary, outputs=None, request_id=""):
    client = triton_http.InferenceServerClient(server.http.removeprefix("http://"))
    wire = []
    for name, array in inputs.items():
        tensor = triton_http.InferInput(name, list(array.shape), datatypes[name])
        tensor.set_data_from_numpy(array, binary_data=binary)
        wire.append(tensor)
    requested = [triton_http.InferRequestedOutput(name, binary_data=binary)
                 for name in outputs] if outputs else None
    return client.infer(model, wire, outputs=requested, request_id=request_id)


def _grpc_infer(server, model, inputs, datatypes, outputs=None, request_id=""):
    client = triton_grpc.InferenceServerClient(server.grpc)
    wire = []
    for name, array in inputs.items():
        tensor = triton_grpc.InferInput(name, list(array.shape), datatypes[name])
        tensor.set_data_from_numpy(array)
        wire.append(tensor)
    requested = [triton_grpc.InferRequestedOutput(name) for name in outputs] if outputs else None
    return client.infer(model, wire, outputs=requested, request_id=request_id)


@pytest.mark.parametrize("batch", [1, 5, 64])
@pytest.mark.parametrize("transport", ["http-binary", "http-json", "grpc"])
def test_mlp_matches_openvino_for_any_batch(served, model_repository, transport, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
    expected = run_directly(model_repository / "mlp/1/model.xml", {"x": x})
    if transport == "grpc":
        result = _grpc_infer(served, "mlp", {"x": x}, {"x": "FP32"})
    else:
        result = _http_infer(served, "mlp", {"x": x}, {"x": "FP32"},
                             binary=transport == "http-binary")
    np.testing.assert_allclose(result.as_numpy("scores"), expected["scores"], rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    assert result.as_numpy("scores").dtype == np.float32
    assert result.as_numpy("label").dtype == np.int64


@pytest.mark.parametrize("transport", ["http-binary", "http-json", "grpc"])
def test_every_datatype_round_trips_exactly(served, model_repository, transport):
    expected = run_directly(model_repository / "mixed/1/model.xml", MIXED_INPUTS)
    if transport == "grpc":
        result = _grpc_infer(served, "mixed", MIXED_INPUTS, DATATYPES)
    else:
        result = _http_infer(served, "mixed", MIXED_INPUTS, DATATYPES,
                             binary=transport == "http-binary")
    for output, source in OUTPUTS.items():
        got = result.as_numpy(output)
        assert got.dtype == MIXED_INPUTS[source].dtype, output
        np.testing.assert_array_equal(got, expected[output])


def test_grpc_typed_contents_are_read_like_raw_bytes(served, model_repository):
    # tritonclient always sends raw bytes; build typed `contents` by hand with its own stubs
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    import grpc

    x = np.array([[0.5, -1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
    request = service_pb2.ModelInferRequest(model_name="mlp", id="typed")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    request.outputs.add(name="label")
    with grpc.insecure_channel(served.grpc) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert response.id == "typed" and response.model_version == "1"
    assert [o.name for o in response.outputs] == ["label"]
    label = np.frombuffer(response.raw_output_contents[0], np.int64)
    expected = run_directly(model_repository / "mlp/1/model.xml", {"x": x})
    np.testing.assert_array_equal(label, expected["label"])


@pytest.mark.parametrize("transport", ["http-binary", "http-json", "grpc"])
def test_requested_outputs_only_are_returned_and_id_is_echoed(served, transport):
    x = np.ones((2, 4), np.float32)
    if transport == "grpc":
        result = _grpc_infer(served, "mlp", {"x": x}, {"x": "FP32"}, outputs=["label"],
                             request_id="req-42")
        names = [o.name for o in result.get_response().outputs]
        request_id = result.get_response().id
    else:
        result = _http_infer(served, "mlp", {"x": x}, {"x": "FP32"},
                             binary=transport == "http-binary", outputs=["label"],
                             request_id="req-42")
        names = [o["name"] for o in result.get_response()["outputs"]]
        request_id = result.get_response()["id"]
    assert names == ["label"]
    assert request_id == "req-42"


def test_request_id_is_generated_when_absent(served):
    result = _http_infer(served, "mlp", {"x": np.ones((1, 4), np.float32)}, {"x": "FP32"},
                         binary=False)
    first = result.get_response()["id"]
    second = _http_infer(served, "mlp", {"x": np.ones((1, 4), np.float32)}, {"x": "FP32"},
                         binary=False).get_response()["id"]
    assert first and second and first != second


def test_binary_output_can_be_asked_per_output(served):
    import httpx

    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                        "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "scores", "parameters": {"binary_data": True}},
                        {"name": "label"}]}
    response = httpx.post(f"{served.http}/v2/models/mlp/infer", json=body)
    assert response.status_code == 200
    header_length = int(response.headers["Inference-Header-Content-Length"])
    import json
    header = json.loads(response.content[:header_length])
    scores, label = header["outputs"]
    assert scores["parameters"]["binary_data_size"] == 12 and "data" not in scores
    assert label["data"] == [int(np.argmax(np.frombuffer(response.content[header_length:],
                                                         np.float32)))]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_metadata_tells_real_names_datatypes_and_dynamic_shapes(served, protocol):
    if protocol == "http":
        client = triton_http.InferenceServerClient(served.http.removeprefix("http://"))
        metadata = client.get_model_metadata("mlp")
        server = client.get_server_metadata()
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    else:
        client = triton_grpc.InferenceServerClient(served.grpc)
        metadata = client.get_model_metadata("mlp", as_json=True)
        server = client.get_server_metadata(as_json=True)
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
        for tensor in metadata["inputs"] + metadata["outputs"]:
            tensor["shape"] = [int(d) for d in tensor["shape"]]
    assert server["name"] == "modelkiln" and "binary_tensor_data" in server["extensions"]
    assert metadata["name"] == "mlp" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]},
                                   {"name": "label", "datatype": "INT64", "shape": [-1]}]


def test_per_version_routes_answer_for_that_version(served):
    import httpx

    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}
    response = httpx.post(f"{served.http}/v2/models/mlp/versions/1/infer", json=body)
    assert response.status_code == 200 and response.json()["model_version"] == "1"
    assert httpx.get(f"{served.http}/v2/models/mlp/versions/1").json()["name"] == "mlp"
    assert httpx.get(f"{served.http}/v2/models/mlp/versions/1/ready").status_code == 200
