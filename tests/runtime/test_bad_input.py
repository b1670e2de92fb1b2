"""Every client mistake gets a specific 4xx / gRPC code and message, and the server keeps serving.

One contract: each case is sent through KServe v2 REST and KServe v2 gRPC, and both must agree
on the outcome (HTTP status, gRPC code) and name what was wrong and what was expected.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field

import grpc
import httpx
import numpy as np
import pytest
from conftest import MAX_REQUEST_BYTES
from tritonclient.grpc import service_pb2 as pb

INFER = "/inference.GRPCInferenceService/ModelInfer"
X = np.arange(8, dtype=np.float32).reshape(2, 4)


def rest_input(name="x", datatype="FP32", shape=(2, 4), data=None):
    return {"name": name, "datatype": datatype, "shape": list(shape),
            "data": X.ravel().tolist() if data is None else data}


def grpc_request(model="mlp", version="", inputs=None, raw=None) -> bytes:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape in inputs or [("x", "FP32", (2, 4))]:
        request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    request.raw_input_contents.extend(raw if raw is not None else [X.tobytes()])
    return request.SerializeToString()


BINARY_HEADER = (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2,4],'
                 b'"parameters":{"binary_data_size":32}}]}')


@dataclass
class Case:
    http_status: int
    grpc_code: grpc.StatusCode
    says: list[str]  # every one of these must be in the message, through both protocols
    rest_path: str = "/v2/models/mlp/infer"
    rest_body: dict | bytes | None = None
    rest_headers: dict = field(default_factory=dict)
    grpc_body: bytes | None = None  # None: this case has no gRPC form


CASES = {
    "unknown model": Case(
        404, grpc.StatusCode.NOT_FOUND, ["model 'nope' is not served", "available: ", "mlp"],
        rest_path="/v2/models/nope/infer", rest_body={"inputs": [rest_input()]},
        grpc_body=grpc_request(model="nope")),
    "unknown version": Case(
        404, grpc.StatusCode.NOT_FOUND, ["model 'mlp' has no version '9'", "versions: 1"],
        rest_path="/v2/models/mlp/versions/9/infer", rest_body={"inputs": [rest_input()]},
        grpc_body=grpc_request(version="9")),
    "wrong input name": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["unknown input 'z'", "'x' FP32 [-1,4]"],
        rest_body={"inputs": [rest_input(name="z")]},
        grpc_body=grpc_request(inputs=[("z", "FP32", (2, 4))])),
    "missing input": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["missing input(s) 'd'", "'d' INT32 [-1,2]"],
        rest_path="/v2/models/mixed/infer",
        rest_body={"inputs": [rest_input(name=n, datatype=t, shape=(1, w), data=v)
                              for n, t, w, v in [("a", "INT64", 2, [1, 2]),
                                                 ("c", "BOOL", 2, [True, False]),
                                                 ("f", "FP16", 3, [1, 2, 3]),
                                                 ("u", "UINT8", 2, [1, 2])]]},
        grpc_body=grpc_request(model="mixed", inputs=[("a", "INT64", (1, 2)),
                                                      ("c", "BOOL", (1, 2)),
                                                      ("f", "FP16", (1, 3)),
                                                      ("u", "UINT8", (1, 2))],
                               raw=[np.zeros(2, np.int64).tobytes(), bytes(2),
                                    np.zeros(3, np.float16).tobytes(), bytes(2)])),
    "wrong datatype is not cast": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["input 'x'", "expected datatype FP32",
                                                "'FP64'"],
        rest_body={"inputs": [rest_input(datatype="FP64")]},
        grpc_body=grpc_request(inputs=[("x", "FP64", (2, 4))],
                               raw=[X.astype(np.float64).tobytes()])),
    "wrong shape": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["input 'x'", "expected shape [-1,4]",
                                                "got [2,5]"],
        rest_body={"inputs": [rest_input(shape=(2, 5), data=list(range(10)))]},
        grpc_body=grpc_request(inputs=[("x", "FP32", (2, 5))],
                               raw=[np.zeros(10, np.float32).tobytes()])),
    "wrong element count": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["input 'x'", "shape [2,4]", "needs", "got"],
        rest_body={"inputs": [rest_input(data=[1, 2, 3, 4, 5, 6])]},
        grpc_body=grpc_request(raw=[np.zeros(6, np.float32).tobytes()])),
    "non-numeric data": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["input 'x'", "FP32"],
        rest_body={"inputs": [rest_input(data=["a", "b", "c", "d", "e", "f", "g", "h"])]},
        grpc_body=pb.ModelInferRequest(model_name="mlp", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=[2, 4],
            contents=pb.InferTensorContents(bytes_contents=[b"a"] * 8))]).SerializeToString()),
    "floats for an integer input": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["input 'a'", "expected INT64 data",
                                                "floating-point"],
        rest_path="/v2/models/mixed/infer",
        rest_body={"inputs": [rest_input(name="a", datatype="INT64", shape=(1, 2),
                                         data=[1.5, 2.0])]}),
    "out of range for the datatype": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["input 'u'", "out of range", "UINT8"],
        rest_path="/v2/models/mixed/infer",
        rest_body={"inputs": [rest_input(name="u", datatype="UINT8", shape=(1, 2),
                                         data=[1, 300])]}),
    "version that is not ASCII digits": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["version '²' is not valid", "ASCII digits"],
        rest_path="/v2/models/mlp/versions/²/infer", rest_body={"inputs": [rest_input()]},
        grpc_body=grpc_request(version="²")),
    "model name no directory can have": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["model name 'mmmm", "...", "(300 characters)",
                                                "expected 1 to 255 characters"],
        rest_path=f"/v2/models/{'m' * 300}/infer", rest_body={"inputs": [rest_input()]},
        grpc_body=grpc_request(model="m" * 300)),
    "FP32 value too large for FP32": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["input 'x'", "out of range for FP32"],
        rest_body={"inputs": [rest_input(data=[1e39] + [0.0] * 7)]}),
    "FP16 value too large for FP16": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["input 'f'", "out of range for FP16 [-65504, 65504]"],
        rest_path="/v2/models/mixed/infer",
        rest_body={"inputs": [rest_input(name="f", datatype="FP16", shape=(1, 3),
                                         data=[1, 2, 70000])]}),
    "INT32 value too large for INT32": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["input 'd'", "out of range for INT32"],
        rest_path="/v2/models/mixed/infer",
        rest_body={"inputs": [rest_input(name="d", datatype="INT32", shape=(1, 2),
                                         data=[1, 2**40])]}),
    "malformed JSON / protobuf": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["malformed"],
        rest_body=b'{"inputs": [', grpc_body=b"\xff\xff\xff\xff not a protobuf"),
    "malformed binary header": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["malformed binary header",
                                                "Inference-Header-Content-Length"],
        rest_body=b'{"inputs": []}', rest_headers={"Inference-Header-Content-Length": "999"}),
    "binary sizes that do not add up": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["malformed binary body", "input 'x'"],
        rest_body=BINARY_HEADER + bytes(8),
        rest_headers={"Inference-Header-Content-Length": str(len(BINARY_HEADER))}),
    "raw contents for fewer inputs": Case(
        400, grpc.StatusCode.INVALID_ARGUMENT, ["raw_input_contents has 2 entries for 1 inputs"],
        grpc_body=grpc_request(raw=[X.tobytes(), X.tobytes()])),
    "body over the limit": Case(
        413, grpc.StatusCode.RESOURCE_EXHAUSTED, [str(MAX_REQUEST_BYTES)],
        rest_body=b"0" * (MAX_REQUEST_BYTES + 1),
        grpc_body=grpc_request(inputs=[("x", "FP32", (MAX_REQUEST_BYTES // 16, 4))],
                               raw=[bytes(MAX_REQUEST_BYTES + 16)])),
}


def send_rest(server, case: Case) -> httpx.Response:
    body = case.rest_body
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return httpx.post(server.http + case.rest_path, content=content, headers=case.rest_headers)


@pytest.mark.parametrize("name", CASES)
def test_rest_and_grpc_give_the_same_specific_error(served, name):
    case = CASES[name]
    if case.rest_body is not None:
        response = send_rest(served, case)
        assert response.status_code == case.http_status, response.text
        message = response.json()["error"]
        for words in case.says:
            assert words in message, message
        assert "Traceback" not in response.text
    if case.grpc_body is not None:
        with grpc.insecure_channel(served.grpc) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                channel.unary_unary(INFER)(case.grpc_body, timeout=30)
        assert raised.value.code() == case.grpc_code, raised.value.details()
        for words in case.says:
            assert words in raised.value.details(), raised.value.details()
    # and everyone else is still served
    good = httpx.post(f"{served.http}/v2/models/mlp/infer", json={"inputs": [rest_input()]})
    assert good.status_code == 200


def test_oversize_body_is_refused_before_it_is_read(served):
    # Content-Length says 100 MB; the server answers 413 without waiting for a single byte
    with socket.create_connection(("127.0.0.1", served.http_port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: test\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n")
        status_line = sock.recv(4096).split(b"\r\n")[0]
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"


def test_chunked_body_is_refused_once_it_passes_the_limit(served):
    # No Content-Length to check up front: the server counts the chunks as they come and answers
    # 413 as soon as the limit is passed, while the client is still sending (no final chunk sent).
    chunk = b"0" * 4096
    with socket.create_connection(("127.0.0.1", served.http_port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: test\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(MAX_REQUEST_BYTES // len(chunk) + 1):    # just over: nothing left unread
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        response = b""
        while b"}" not in response:
            data = sock.recv(4096)
            if not data:
                break
            response += data
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 413 Request Entity Too Large"
    assert json.loads(body) == {"error": f"request body is over the limit of {MAX_REQUEST_BYTES} bytes"}
    good = httpx.post(f"{served.http}/v2/models/mlp/infer", json={"inputs": [rest_input()]})
    assert good.status_code == 200


def test_unknown_route_and_method_are_named(served):
    response = httpx.get(f"{served.http}/v2/nothing/here")
    assert response.status_code == 404 and "no route for GET '/v2/nothing/here'" in response.json()["error"]
    response = httpx.get(f"{served.http}/v2/models/mlp/infer")
    assert response.status_code == 405 and "use POST" in response.json()["error"]
