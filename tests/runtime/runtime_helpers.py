"""Helpers for the serving runtime's tests: models built here, a real `modelkiln serve` on loopback.

Models are ONNX graphs made with onnx.helper and converted with OpenVINO into a temporary OVMS
repository, the way the converter publishes them (but without depending on it). The server is
the real command in a subprocess, on free loopback ports, with FP32 inference precision so its
results can be compared with OpenVINO run directly on the same IR.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import onnx
import openvino as ov
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(7)
MLP_W = RNG.standard_normal((4, 3)).astype(np.float32)
MLP_B = RNG.standard_normal(3).astype(np.float32)


def _value(name: str, elem_type: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def mlp_graph(*, offset: float = 0.0) -> onnx.ModelProto:
    """x FP32 [N,4] -> scores FP32 [N,3] = x @ W + b + offset, label INT64 [N] = argmax."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)]
    initializers = [numpy_helper.from_array(MLP_W, "W"),
                    numpy_helper.from_array(MLP_B + np.float32(offset), "b")]
    graph = helper.make_graph(nodes, "mlp", [_value("x", TensorProto.FLOAT, ["N", 4])],
                              [_value("scores", TensorProto.FLOAT, ["N", 3]),
                               _value("label", TensorProto.INT64, ["N"])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mixed_graph() -> onnx.ModelProto:
    """One input and one output per datatype: INT64, INT32, BOOL, FP16, UINT8."""
    nodes = [helper.make_node("Add", ["a", "a"], ["a2"]),
             helper.make_node("Neg", ["d"], ["dn"]),
             helper.make_node("Not", ["c"], ["cn"]),
             helper.make_node("Relu", ["f"], ["fr"]),
             helper.make_node("Mul", ["u", "two"], ["u2"])]
    two = numpy_helper.from_array(np.array(2, np.uint8), "two")
    types = [("a", "a2", TensorProto.INT64, 2), ("d", "dn", TensorProto.INT32, 2),
             ("c", "cn", TensorProto.BOOL, 2), ("f", "fr", TensorProto.FLOAT16, 3),
             ("u", "u2", TensorProto.UINT8, 2)]
    graph = helper.make_graph(nodes, "mixed",
                              [_value(i, t, ["N", w]) for i, _, t, w in types],
                              [_value(o, t, ["N", w]) for _, o, t, w in types], [two])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def image_graph() -> onnx.ModelProto:
    """image FP32 [1,3,8,8] -> scores FP32 [1,3]: the mean of each colour channel."""
    nodes = [helper.make_node("ReduceMean", ["image"], ["scores"], axes=[2, 3], keepdims=0)]
    graph = helper.make_graph(nodes, "image", [_value("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [_value("scores", TensorProto.FLOAT, [1, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def reshape_graph() -> onnx.ModelProto:
    """x FP32 [N,4] reshaped to [2,4]: valid by its signature for any N, runs only for N=2."""
    target = numpy_helper.from_array(np.array([2, 4], np.int64), "target")
    nodes = [helper.make_node("Reshape", ["x", "target"], ["y"])]
    graph = helper.make_graph(nodes, "reshape", [_value("x", TensorProto.FLOAT, ["N", 4])],
                              [_value("y", TensorProto.FLOAT, [2, 4])], [target])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def slow_graph() -> onnx.ModelProto:
    """x FP32 [N,512] through eight 512x512 matmuls: as slow as the client makes N."""
    weight = numpy_helper.from_array(
        (RNG.standard_normal((512, 512)) / 23).astype(np.float32), "W")
    nodes, previous = [], "x"
    for i in range(8):
        nodes.append(helper.make_node("MatMul", [previous, "W"], [f"h{i}"]))
        previous = f"h{i}"
    nodes.append(helper.make_node("ReduceSum", [previous], ["y"], keepdims=0))
    graph = helper.make_graph(nodes, "slow", [_value("x", TensorProto.FLOAT, ["N", 512])],
                              [_value("y", TensorProto.FLOAT, [])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def publish(repository: pathlib.Path, name: str, version: int, graph: onnx.ModelProto) -> pathlib.Path:
    """Convert an ONNX graph to IR and publish it as REPO/NAME/VERSION atomically."""
    temporary = repository / name / f".tmp-{version}"
    temporary.mkdir(parents=True)
    onnx_path = temporary / "source.onnx"
    onnx.save(graph, onnx_path)
    ov.save_model(ov.convert_model(str(onnx_path)), temporary / "model.xml",
                  compress_to_fp16=False)
    onnx_path.unlink()
    final = repository / name / str(version)
    temporary.rename(final)
    return final


def run_directly(model_xml: pathlib.Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference: OpenVINO on the same IR, FP32 precision, no server."""
    compiled = ov.Core().compile_model(str(model_xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    results = compiled(inputs)
    return {port.get_any_name(): np.asarray(value) for port, value in results.items()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running `modelkiln serve` subprocess."""

    def __init__(self, repository: pathlib.Path, *extra: str, log: pathlib.Path) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.log_path = log
        command = [sys.executable, "-m", "modelkiln.cli", "serve", "--repository",
                   str(repository), "--host", "127.0.0.1", "--http-port", str(self.http_port),
                   "--grpc-port", str(self.grpc_port), "--inference-precision", "f32",
                   "--poll-interval", "0.5", *extra]
        self._log = open(log, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_until(self, path: str, status: int = 200, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.http + path, timeout=2).status_code == status:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{path} never answered {status}:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode




@contextlib.contextmanager
def serving(repository: pathlib.Path, *extra: str, log: pathlib.Path):
    """A server that is ready (health/ready answers 200) inside the block, stopped after it."""
    server = Server(repository, *extra, log=log)
    try:
        server.wait_until("/v2/health/ready")
        yield server
    finally:
        server.stop()
