"""Hostile JSON bodies cost a bounded amount: refused with a 400 that says why, in memory a small
multiple of the body, off the event loop (a good client is answered meanwhile).

Each body is sent to a real `modelkiln serve` with its default 64 MiB body limit; its peak RSS
(VmHWM, reset before each) is read from /proc before and after.
"""

from __future__ import annotations

import http.client
import json
import threading

import httpx
import numpy as np
import pytest
from runtime_helpers import Server

MiB = 1024 * 1024
SIZE = 60 * MiB  # under the default 64 MiB limit
X = np.arange(8, dtype=np.float32).reshape(2, 4)
GOOD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.ravel().tolist()}]}


def kserve(data: bytes, shape=(2, 4)) -> bytes:
    head = b'{"inputs":[{"name":"x","datatype":"FP32","shape":%s,"data":' % json.dumps(
        list(shape)).encode()
    return head + data + b"}]}"


def tfserving(instances: bytes) -> bytes:
    return b'{"instances":' + instances + b"}"


def repeated(unit: bytes, size: int = SIZE) -> bytes:
    return unit * (size // len(unit))


HOSTILE = {
    "64 MiB of nested empty arrays": (
        "/v2/models/mlp/infer",
        kserve(b"[" + repeated(b"[],") + b"[]]"),
        f"input 'x': data is nested as [{SIZE // 3 + 1},0], not as its shape [2,4]"),
    "nesting 30 million levels deep": (
        "/v2/models/mlp/infer",
        kserve(repeated(b"[", SIZE // 2) + repeated(b"]", SIZE // 2)),
        f"input 'x': data is nested {SIZE // 2} levels deep, shape [2,4] has 2"),
    "more elements than declared": (
        "/v2/models/mlp/infer",
        kserve(b"[" + repeated(b"0.5,") + b"0]"),
        "input 'x': shape [2,4] needs 8 elements, got more (element 9 is past it)"),
    "nested deeper than the shape": (
        "/v2/models/mlp/infer",
        kserve(b"[[" + b",".join([b"[1,2,3,4]"] * 2) + b"]]" + b" " * MiB),
        "input 'x': data is nested 3 levels deep, shape [2,4] has 2"),
    "a number too large for FP32": (
        "/v2/models/mlp/infer",
        kserve(b"[1e39,0,0,0,0,0,0,0]" + b" " * MiB),
        "input 'x': values out of range for FP32 [-3.40282e+38, 3.40282e+38]"),
    "a number with a million digits": (
        "/v2/models/mlp/infer",
        kserve(b"[1,2,3,4,5,6,7," + b"9" * MiB + b"]"),
        "input 'x': values out of range for FP32"),
    "TF-Serving instances of nested empty arrays": (
        "/v1/models/mlp:predict",
        tfserving(b"[" + repeated(b"[],") + b"[]]"),
        f"input 'x': expected shape [-1,4], got [{SIZE // 3 + 1},0]"),
    "TF-Serving rows of different lengths": (
        "/v1/models/mlp:predict",
        tfserving(b"[" + repeated(b"[1,2,3,4],", 2 * MiB) + b"[1,2,3]]"),
        "input 'x': data is not a rectangular array of numbers"),
    "64 MiB of values outside tensor data": (
        "/v2/models/mlp/infer",
        b'{"parameters":{"p":[' + repeated(b"0,") + b'0]},"inputs":[]}',
        "malformed request: more than 100000 JSON values besides tensor data"),
}


def reset_peak_rss(server: Server) -> None:
    with open(f"/proc/{server.process.pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # VmHWM := current RSS (Linux 4.0+)


def peak_rss(server: Server) -> int:
    for line in open(f"/proc/{server.process.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def server(model_repository, tmp_path_factory) -> Server:
    """The default body limit (64 MiB): what a deployment has."""
    server = Server(model_repository, log=tmp_path_factory.mktemp("logs") / "server.log")
    try:
        server.wait_until("/v2/health/ready")
        httpx.post(f"{server.http}/v2/models/mlp/infer", json=GOOD).raise_for_status()
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_body_is_refused_in_bounded_memory(server, name):
    path, body, message = HOSTILE[name]
    assert len(body) <= 64 * MiB
    reset_peak_rss(server)
    before = peak_rss(server)
    response = httpx.post(server.http + path, content=body, timeout=120,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    # the server holds the body (and, while it reads it, its chunks) and at most one copy of
    # its brackets; decoding it into Python objects took 2.6 GB for a 64 MiB body
    assert peak_rss(server) - before < 4 * len(body), (peak_rss(server) - before) / len(body)
    good = httpx.post(f"{server.http}/v2/models/mlp/infer", json=GOOD)
    assert good.status_code == 200


def test_good_client_is_answered_while_a_hostile_body_is_decoded(server):
    path, body, message = HOSTILE["64 MiB of nested empty arrays"]
    good = httpx.Client(base_url=server.http)
    assert good.post("/v2/models/mlp/infer", json=GOOD).status_code == 200  # connected
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    hostile: dict = {}

    def wait_for_answer() -> None:
        response = connection.getresponse()
        hostile["status"], hostile["body"] = response.status, response.read()

    waiter = threading.Thread(target=wait_for_answer)
    waiter.start()  # the whole body is sent: from here on the server reads and decodes it
    answered_meanwhile = 0
    for _ in range(1000):
        if not waiter.is_alive():
            break
        assert good.post("/v2/models/mlp/infer", json=GOOD).status_code == 200
        answered_meanwhile += waiter.is_alive()
    waiter.join(timeout=120)
    good.close()
    connection.close()
    assert hostile["status"] == 400 and message in json.loads(hostile["body"])["error"]
    assert answered_meanwhile >= 1  # before, the event loop decoded the body: nobody was


# The same request, padded with whitespace past the size where bodies are scanned instead of
# parsed whole, must get the same answer: results, and every error message.
PADDING = b" " * (64 * 1024)
MIXED_ROWS = [{"a": [1, 2], "d": [3, 4], "c": [True, False], "f": [0.5, -1, 2], "u": [1, 2]},
              {"a": [5, 6], "d": [7, 8], "c": [False, False], "f": [1, 1, 1], "u": [3, 4]}]
VALID = {
    "KServe flat": ("/v2/models/mlp/infer", GOOD),
    "KServe nested": ("/v2/models/mlp/infer", {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.tolist()}]}),
    "KServe every datatype": ("/v2/models/mixed/infer", {"inputs": [
        {"name": "a", "datatype": "INT64", "shape": [1, 2], "data": [-(2**62), 2**62]},
        {"name": "d", "datatype": "INT32", "shape": [1, 2], "data": [[-(2**31), 2**31 - 1]]},
        {"name": "c", "datatype": "BOOL", "shape": [1, 2], "data": [True, False]},
        {"name": "f", "datatype": "FP16", "shape": [1, 3], "data": [0.5, -65504, 1e-3]},
        {"name": "u", "datatype": "UINT8", "shape": [1, 2], "data": [0, 127]}]}),
    "KServe empty batch": ("/v2/models/mlp/infer", {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [0, 4], "data": []}]}),
    "TF-Serving rows": ("/v1/models/mlp:predict", {"instances": X.tolist()}),
    "TF-Serving columns": ("/v1/models/mlp:predict", {"inputs": {"x": X.tolist()}}),
    "TF-Serving rows of objects": ("/v1/models/mixed:predict", {"instances": MIXED_ROWS}),
    "SageMaker, TF-Serving body": ("/invocations", {"instances": X.tolist()}),
    "SageMaker, KServe body": ("/invocations", GOOD),
}


def padded_pair(server, path: str, document: dict):
    body = json.dumps(document).encode()
    headers = {"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": "mlp"}
    return [httpx.post(server.http + path, content=content, headers=headers)
            for content in (body, body + PADDING)]


@pytest.mark.parametrize("name", VALID)
def test_large_body_decodes_as_a_small_one(served, name):
    small, large = padded_pair(served, *VALID[name])
    assert small.status_code == large.status_code == 200, (small.text, large.text)
    small_json, large_json = small.json(), large.json()
    small_json.pop("id", None), large_json.pop("id", None)
    assert small_json == large_json


def mistakes():
    from test_bad_input import CASES
    found = {name: (case.rest_path, case.rest_body) for name, case in CASES.items()
             if isinstance(case.rest_body, dict) and not case.rest_headers}
    found.update({
        "nested as another shape": ("/v2/models/mlp/infer", {"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.reshape(4, 2).tolist()}]}),
        "nested deeper": ("/v2/models/mlp/infer", {"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [X.tolist()]}]}),
        "ragged": ("/v2/models/mlp/infer", {"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 4],
             "data": [[1, 2, 3, 4], [5, 6, 7]]}]}),
        "booleans for FP32": ("/v2/models/mlp/infer", {"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [True, 1, 2, 3]}]}),
        "integers for BOOL": ("/v2/models/mixed/infer", {"inputs": [
            {"name": "c", "datatype": "BOOL", "shape": [1, 2], "data": [1, 0]}]}),
        "UINT8 below zero": ("/v2/models/mixed/infer", {"inputs": [
            {"name": "u", "datatype": "UINT8", "shape": [1, 2], "data": [-1, 0]}]}),
        "TF-Serving ragged rows": ("/v1/models/mlp:predict", {"instances": [[1, 2, 3, 4], [1]]}),
        "TF-Serving wrong shape": ("/v1/models/mlp:predict", {"instances": [[1, 2, 3]]}),
        "TF-Serving empty": ("/v1/models/mlp:predict", {"instances": []}),
        "TF-Serving strings": ("/v1/models/mlp:predict", {"instances": [["a", "b", "c", "d"]]}),
    })
    return found


@pytest.mark.parametrize("name", mistakes())
def test_large_body_is_refused_as_a_small_one(served, name):
    small, large = padded_pair(served, *mistakes()[name])
    assert small.status_code == large.status_code and small.status_code >= 400, small.text
    assert small.json()["error"] == large.json()["error"]
