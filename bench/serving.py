"""Serving benchmark: ModelKiln's runtime against in-process OpenVINO and the peers a user would pick.

Closed-loop load (each of C clients sends its next request when the previous answer is in) at
concurrency 1, 8 and 32, over REST JSON, REST binary (KServe v2 binary tensor extension) and
gRPC raw contents, for two models built here with random weights: an image model (ResNet-50
shaped, 1x3x224x224) and a tiny MLP (1x16, measures server overhead). In the same run:

- in-process: OpenVINO's AsyncInferQueue on the same IR with the same settings (the limit);
- KServe's Python ModelServer 0.21 and MLServer 1.7, each serving the same IR through a minimal
  OpenVINO model class, installed by this script into their own venvs under
  ~/.cache/modelkiln/bench (they are not project dependencies);
- do-nothing servers, one gRPC (grpc.aio) and one HTTP (uvicorn), run as ModelKiln's are, that
  answer every request with the same bytes: what the transport alone costs. At c=1 on the image
  model they pause between requests as long as an inference takes, as a server does.

Prints req/s, p50 and p99 per cell and the ratios the targets are about, and writes them as JSON;
first, the CPU the server's KServe v2 JSON decoding costs per element of the image input.

    python bench/serving.py [--peers kserve,mlserver] [--seconds 6] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

from modelkiln import telemetry
from machine import cpu_model  # noqa: E402

telemetry.off()  # before openvino loads it (modelkiln/telemetry.py)
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import openvino as ov  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

CACHE = pathlib.Path.home() / ".cache" / "modelkiln" / "bench"
PEERS = {
    "kserve": ("kserve-0.21", ["kserve==0.21.0"]),
    "mlserver": ("mlserver-1.7", ["mlserver==1.7.1", "uvloop<0.22"]),
}
CONCURRENCY = (1, 8, 32)
PROTOCOLS = ("rest-json", "rest-binary", "grpc-raw")
RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- models

def _conv(nodes, inits, name, source, c_in, c_out, k, stride, relu=True):
    weight = (RNG.standard_normal((c_out, c_in, k, k)) * np.sqrt(2 / (c_in * k * k)))
    inits += [numpy_helper.from_array(weight.astype(np.float32), f"{name}.w"),
              numpy_helper.from_array(np.zeros(c_out, np.float32), f"{name}.b")]
    nodes.append(helper.make_node("Conv", [source, f"{name}.w", f"{name}.b"], [name],
                                  kernel_shape=[k, k], strides=[stride, stride],
                                  pads=[k // 2] * 4))
    if not relu:
        return name
    nodes.append(helper.make_node("Relu", [name], [f"{name}.r"]))
    return f"{name}.r"


def resnet50_graph() -> onnx.ModelProto:
    """ResNet-50's layers and shapes (bottlenecks 3-4-6-3) with random weights, BN folded."""
    nodes, inits = [], []
    x = _conv(nodes, inits, "stem", "input", 3, 64, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[1, 1, 1, 1]))
    x, c_in = "pool", 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            name = f"s{stage}b{block}"
            y = _conv(nodes, inits, f"{name}.1", x, c_in, width, 1, 1)
            y = _conv(nodes, inits, f"{name}.2", y, width, width, 3, stride)
            y = _conv(nodes, inits, f"{name}.3", y, width, width * 4, 1, 1, relu=False)
            shortcut = x if block else _conv(nodes, inits, f"{name}.down", x, c_in, width * 4, 1,
                                             stride, relu=False)
            nodes.append(helper.make_node("Add", [y, shortcut], [f"{name}.sum"]))
            nodes.append(helper.make_node("Relu", [f"{name}.sum"], [f"{name}.out"]))
            x, c_in = f"{name}.out", width * 4
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits += [numpy_helper.from_array((RNG.standard_normal((2048, 1000)) * 0.02)
                                      .astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(1000, np.float32), "fc.b")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"]))
    graph = helper.make_graph(
        nodes, "resnet50", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                          [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def mlp_graph() -> onnx.ModelProto:
    inits = [numpy_helper.from_array(RNG.standard_normal((16, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(RNG.standard_normal(32).astype(np.float32), "b1"),
             numpy_helper.from_array(RNG.standard_normal((32, 4)).astype(np.float32), "w2"),
             numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "b2")]
    nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [-1, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [-1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


MODELS = {"image": (resnet50_graph, (1, 3, 224, 224)), "tiny": (mlp_graph, (1, 16))}


def build_repository(root: pathlib.Path) -> None:
    for name, (graph, _) in MODELS.items():
        version = root / name / "1"
        if (version / "model.xml").exists():
            continue
        version.mkdir(parents=True, exist_ok=True)
        onnx.save(graph(), version / "source.onnx")
        ov.save_model(ov.convert_model(str(version / "source.onnx")), version / "model.xml",
                      compress_to_fp16=False)
        (version / "source.onnx").unlink()


# ---------------------------------------------------------------- requests on the wire

def rest_json_request(model: str, x: np.ndarray) -> tuple[str, bytes, dict]:
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}]}).encode()
    return f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"}


def rest_binary_request(model: str, x: np.ndarray) -> tuple[str, bytes, dict]:
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return (f"/v2/models/{model}/infer", header + x.tobytes(),
            {"Content-Type": "application/octet-stream",
             "Inference-Header-Content-Length": str(len(header))})


def grpc_request(model: str, x: np.ndarray) -> bytes:
    # the KServe v2 wire format, from our own stubs (same package and field numbers)
    from modelkiln.runtime.proto import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


class HttpConnection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client connection that sends a prebuilt request, lean as can be."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) >= end + 4 + length:
            status = int(self.buffer[9:12])
            del self.buffer[:end + 4 + length]
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(status)

    def connection_lost(self, exc) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    async def send(self, raw: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


async def closed_loop(make_client, concurrency: int, seconds: float, warmup: float, pause: float = 0.0):
    """Run `concurrency` clients for `seconds`; returns (req/s, p50 ms, p99 ms, errors, calls made
    in all, warm-up included). With a `pause`, each client waits that long after each answer (the
    time a model would have taken)."""
    latencies: list[float] = []
    errors = calls = 0
    stop_at = time.perf_counter() + warmup + seconds
    measure_from = time.perf_counter() + warmup

    async def client():
        nonlocal errors, calls
        call = await make_client()
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            try:
                ok = await call()
            except ConnectionError:  # the server closed on us (MLServer on a binary body)
                errors += 1
                return
            ended = time.perf_counter()
            calls += 1
            if started >= measure_from:
                latencies.append(ended - started)
                errors += not ok
            if pause:
                await asyncio.sleep(pause)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    if not latencies:
        return 0.0, float("nan"), float("nan"), errors, calls
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    return len(latencies) / seconds, float(p50), float(p99), errors, calls


def process_tree_cpu(pid: int) -> float:
    """CPU seconds used so far by a process and all its descendants (a server's workers too)."""
    parents, times = {}, {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        child = int(stat.parent.name)
        parents[child], times[child] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree, grown = {pid}, True
    while grown:
        children = {child for child, parent in parents.items() if parent in tree} - tree
        tree, grown = tree | children, bool(children)
    return sum(times.get(member, 0) for member in tree) / os.sysconf("SC_CLK_TCK")


def timed_cell(factory, concurrency: int, seconds: float, warmup: float, pause: float, server_pid: int):
    """closed_loop, plus the CPU each request cost the client (this process) and the server, in µs."""
    client, server = time.process_time(), process_tree_cpu(server_pid)
    rate, p50, p99, errors, calls = asyncio.run(closed_loop(factory, concurrency, seconds, warmup, pause))
    per_call = 1e6 / max(calls, 1)
    return (rate, p50, p99, errors, (time.process_time() - client) * per_call,
            (process_tree_cpu(server_pid) - server) * per_call)


def http_client_factory(port: int, path: str, body: bytes, headers: dict):
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def make():
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(HttpConnection, "127.0.0.1", port)

        async def call() -> bool:
            return await connection.send(raw) == 200
        return call
    return make


def grpc_client_factory(port: int, body: bytes):
    import grpc

    channels = []

    async def make():
        # one channel (one HTTP/2 connection) per client, as separate client processes would have
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_receive_message_length", 1 << 28), ("grpc.max_send_message_length", 1 << 28),
            ("grpc.use_local_subchannel_pool", 1)])
        channels.append(channel)
        method = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def call() -> bool:
            try:
                await method(body)
                return True
            except grpc.aio.AioRpcError:
                return False
        return call
    return make


# ---------------------------------------------------------------- in-process limit

def in_process(compiled: ov.CompiledModel, shape, concurrency: int, seconds: float,
               warmup: float):
    """The limit: AsyncInferQueue kept full, with as many requests as the server may queue."""
    optimal = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    queue = ov.AsyncInferQueue(compiled, min(concurrency, 2 * optimal))
    x = RNG.standard_normal(shape).astype(np.float32)
    latencies: list[float] = []

    def done(request, started):
        latencies.append(time.perf_counter() - started)

    def run_for(duration: float) -> None:
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            queue.get_idle_request_id()  # wait for a free request: the clock starts with it
            queue.start_async({0: x}, time.perf_counter())
        queue.wait_all()

    queue.set_callback(done)
    run_for(warmup)
    latencies.clear()
    began, cpu = time.perf_counter(), time.process_time()
    run_for(seconds)
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    # no client here; all of this process's CPU is the "server's"
    return len(latencies) / elapsed, float(p50), float(p99), 0, 0.0, 1e6 * cpu / len(latencies)


def json_decode_cost(compiled: ov.CompiledModel, shape, rounds: int = 20) -> dict:
    """CPU time the server spends turning the rest-json cells' KServe v2 body into the input
    array (its split_body + decode_request, called here in-process, on this thread), per element.
    """
    from modelkiln.runtime.engine import Engine
    from modelkiln.runtime.serving import kserve_rest
    from modelkiln.runtime.serving.http_app import Request
    from modelkiln.runtime.serving.repository import ServedVersion

    served = ServedVersion(model="image", version=1, path=pathlib.Path("."))
    served.inputs, served.outputs = Engine.describe(compiled)
    served.inputs_by_name = {spec.name: spec for spec in served.inputs}
    served.outputs_by_name = {spec.name: spec for spec in served.outputs}
    x = RNG.standard_normal(shape).astype(np.float32)
    path, body, _ = rest_json_request("image", x)
    request = Request("POST", path, {b"content-type": b"application/json"}, body)
    times = []
    for _ in range(rounds):
        started = time.thread_time()
        decoded = kserve_rest.decode_request(served, *kserve_rest.split_body(request))
        times.append(time.thread_time() - started)
    assert np.array_equal(decoded.decoded.arrays[0], x)
    return {"ns_per_element": float(np.median(times)) * 1e9 / x.size, "elements": int(x.size),
            "body_bytes": len(body)}


# ---------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(port: int, path: str, process: subprocess.Popen) -> None:
    from modelkiln.operator.local import wait_until_ready

    wait_until_ready(process, f"http://127.0.0.1:{port}", timeout=180, path=path)


KSERVE_SERVER = '''
import sys
sys.modules["openvino_telemetry"] = None  # no telemetry (modelkiln/telemetry.py)
import numpy as np, openvino as ov, kserve
from kserve import InferRequest, InferResponse, InferOutput
from kserve.utils.utils import generate_uuid

class OpenVINOModel(kserve.Model):
    def __init__(self, name, xml):
        super().__init__(name)
        self.xml = xml
        self.load()

    def load(self):
        self.compiled = ov.Core().compile_model(self.xml, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
        self.request = self.compiled.create_infer_request()
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers=None):
        x = payload.inputs[0].as_numpy()
        y = self.request.infer({0: x})[self.compiled.outputs[0]]
        output = InferOutput(name="logits", shape=list(y.shape), datatype="FP32")
        output.set_data_from_numpy(y, binary_data=payload.use_binary_outputs)
        return InferResponse(model_name=self.name, infer_outputs=[output],
                             response_id=payload.id or generate_uuid())

if __name__ == "__main__":
    repo, http_port, grpc_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    models = [OpenVINOModel(name, f"{repo}/{name}/1/model.xml") for name in ("image", "tiny")]
    kserve.ModelServer(http_port=http_port, grpc_port=grpc_port).start(models)
'''

MLSERVER_RUNTIME = '''
import sys
sys.modules["openvino_telemetry"] = None  # no telemetry (modelkiln/telemetry.py)
import numpy as np, openvino as ov
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

class OpenVINOModel(MLModel):
    async def load(self) -> bool:
        xml = self.settings.parameters.uri
        self.compiled = ov.Core().compile_model(xml, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
        self.request = self.compiled.create_infer_request()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self.request.infer({0: x})[self.compiled.outputs[0]]
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output("logits", y)])
'''


def ensure_peer(name: str) -> pathlib.Path:
    directory, packages = PEERS[name]
    venv = CACHE / directory
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists():
        print(f"installing {name} into {venv} ...", flush=True)
        base_python = shutil.which("python3.11") or sys.executable
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages,
                        f"openvino=={ov.__version__.split('-')[0]}"], check=True)
        stamp.touch()
    return python


def start_modelkiln(repo: pathlib.Path, work: pathlib.Path, *extra: str, log_name: str = "modelkiln",
                    env: dict | None = None):
    http, grpc_port = free_port(), free_port()
    log = open(work / f"{log_name}.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "modelkiln.cli", "serve", "--repository",
                                str(repo), "--host", "127.0.0.1", "--http-port", str(http),
                                "--grpc-port", str(grpc_port), "--log-level", "WARNING", *extra],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_http(http, "/v2/health/ready", process)
    return process, http, grpc_port


def start_modelkiln_shadow(repo: pathlib.Path, work: pathlib.Path):
    """ModelKiln in a Shadow rollout of every model at a 100% sample: version 2 (the same IR as
    version 1) runs a copy of each request after version 1 answered it. The queue is deep enough
    that no copy is dropped (printed at the end): the cost measured is the second inference's."""
    rollout_repo = CACHE / "rollout-repository"
    for name in MODELS:
        for version in ("1", "2"):
            if not (rollout_repo / name / version / "model.xml").exists():
                shutil.copytree(repo / name / "1", rollout_repo / name / version, dirs_exist_ok=True)
    plans = [["--rollout", json.dumps({"model": name, "strategy": "Shadow", "stable": 1, "candidate": 2,
                                       "sample": 1.0, "queue": 100000})] for name in MODELS]
    return start_modelkiln(rollout_repo, work, "--version-policy", '{"specific": [1, 2]}', *sum(plans, []),
                           log_name="modelkiln-shadow")


def start_modelkiln_baseline(checkout: pathlib.Path):
    """ModelKiln from another checkout (say the main branch): no rollout active, before and after."""
    def start(repo: pathlib.Path, work: pathlib.Path):
        path = os.pathsep.join(str(checkout / part) for part in ("runtime", "operator"))
        return start_modelkiln(repo, work, log_name="modelkiln-baseline",
                               env={**os.environ, "PYTHONPATH": path})
    return start


def shadow_counts(http: int) -> str:
    """What the Shadow server compared and dropped, from its /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    wanted = ("modelkiln_rollout_compared_total{", "modelkiln_rollout_shadow_dropped_total{")
    return ", ".join(line for line in lines if line.startswith(wanted))


def start_kserve(repo: pathlib.Path, work: pathlib.Path):
    python = ensure_peer("kserve")
    script = work / "kserve_server.py"
    script.write_text(textwrap.dedent(KSERVE_SERVER))
    http, grpc_port = free_port(), free_port()
    log = open(work / "kserve.log", "wb")
    process = subprocess.Popen([str(python), str(script), str(repo), str(http), str(grpc_port)],
                               stdout=log, stderr=subprocess.STDOUT, cwd=work)
    wait_http(http, "/v2/models/tiny/ready", process)
    wait_http(http, "/v2/models/image/ready", process)
    return process, http, grpc_port


def start_mlserver(repo: pathlib.Path, work: pathlib.Path):
    python = ensure_peer("mlserver")
    root = work / "mlserver"
    root.mkdir(exist_ok=True)
    (root / "openvino_runtime.py").write_text(textwrap.dedent(MLSERVER_RUNTIME))
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    (root / "settings.json").write_text(json.dumps(
        {"http_port": http, "grpc_port": grpc_port, "metrics_port": metrics, "host": "127.0.0.1"}))
    for name in MODELS:
        (root / name).mkdir(exist_ok=True)
        (root / name / "model-settings.json").write_text(json.dumps(
            {"name": name, "implementation": "openvino_runtime.OpenVINOModel",
             "parameters": {"uri": str(repo / name / "1" / "model.xml")}}))
    log = open(work / "mlserver.log", "wb")
    process = subprocess.Popen([str(python.parent / "mlserver"), "start", str(root)],
                               stdout=log, stderr=subprocess.STDOUT, cwd=root,
                               env={**os.environ, "PYTHONPATH": str(root)})
    wait_http(http, "/v2/models/tiny/ready", process)
    wait_http(http, "/v2/models/image/ready", process)
    return process, http, grpc_port


GRPC_FLOOR_SERVER = '''
import asyncio, sys, grpc, uvloop

async def main(port: int, response: bytes) -> None:
    async def infer(data, context):
        return response
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1 << 28)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()

uvloop.run(main(int(sys.argv[1]), bytes.fromhex(sys.argv[2])))
'''


HTTP_FLOOR_SERVER = '''
import sys, uvicorn

BODY = b'{"model_name":"tiny","outputs":[{"name":"logits","datatype":"FP32","shape":[1,4],"data":[0,0,0,0]}]}'

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    message = {"more_body": True}
    while message.get("more_body"):
        message = await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools", log_level="warning")
'''


def start_grpc_floor(repo: pathlib.Path, work: pathlib.Path):
    """What grpc.aio alone costs: a server that answers every ModelInfer with the same bytes and
    does nothing else (gRPC only), run as ModelKiln's is (this Python, uvloop, the same grpcio)."""
    from modelkiln.runtime.proto import grpc_service_pb2 as pb

    response = pb.ModelInferResponse(model_name="tiny", model_version="1")
    response.outputs.add(name="logits", datatype="FP32", shape=[1, 4])
    response.raw_output_contents.append(bytes(16))
    grpc_port = free_port()
    process = start_script(work / "grpc_floor.py", GRPC_FLOOR_SERVER, grpc_port,
                           response.SerializeToString().hex())
    return process, None, grpc_port


def start_http_floor(repo: pathlib.Path, work: pathlib.Path):
    """What HTTP alone costs: uvicorn with httptools and uvloop, as ModelKiln's REST runs, around
    an ASGI app that reads the whole body and answers 200 with the same small JSON."""
    http = free_port()
    return start_script(work / "http_floor.py", HTTP_FLOOR_SERVER, http), http, None


def start_script(script: pathlib.Path, text: str, port: int, *args: str) -> subprocess.Popen:
    """Run a server script with this Python; return once its port accepts connections."""
    script.write_text(textwrap.dedent(text))
    process = subprocess.Popen([sys.executable, str(script), str(port), *args])
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"{script.name} did not start") from None
            time.sleep(0.1)


SERVERS = {"modelkiln": start_modelkiln, "modelkiln-shadow": start_modelkiln_shadow, "kserve": start_kserve,
           "mlserver": start_mlserver, "grpc-floor": start_grpc_floor, "http-floor": start_http_floor}
OURS = ("modelkiln", "modelkiln-shadow", "modelkiln-baseline")
# do-nothing servers: what the transport alone costs, each over its own protocols
FLOORS = {"grpc-floor": ("grpc-raw",), "http-floor": ("rest-json", "rest-binary")}


def client_factories(model: str, http: int, grpc_port: int) -> dict:
    x = RNG.standard_normal(MODELS[model][1]).astype(np.float32)
    return {"rest-json": http_client_factory(http, *rest_json_request(model, x)),
            "rest-binary": http_client_factory(http, *rest_binary_request(model, x)),
            "grpc-raw": grpc_client_factory(grpc_port, grpc_request(model, x))}


def measure(servers: dict, repo: pathlib.Path, args) -> dict:
    """Every cell, for every server back to back, so that they share the machine's weather; each
    cell `args.rounds` times (the rounds one after the other), reported as the medians."""
    samples: dict[tuple[str, str], list] = {}
    core = ov.Core()
    for model in args.models:
        seconds = args.seconds * (2 if model == "image" else 1)
        compiled = core.compile_model(str(repo / model / "1" / "model.xml"), "CPU",
                                      {"PERFORMANCE_HINT": "THROUGHPUT"})
        factories = {name: client_factories(model, http, grpc_port)
                     for name, (_, http, grpc_port) in servers.items()}
        for concurrency in args.concurrency:
            for _ in range(args.rounds):
                cell = in_process(compiled, MODELS[model][1], concurrency, seconds, args.warmup)
                in_process_p50 = cell[1]
                samples.setdefault(("in-process", f"{model}/in-process/c{concurrency}"), []).append(cell)
                report("in-process", model, "AsyncInferQueue", concurrency, cell)
                for protocol in args.protocols:
                    for name in servers:
                        if protocol not in FLOORS.get(name, (protocol,)):
                            continue
                        # At c=1 on the image model a do-nothing server idles between requests as
                        # long as an inference lasts: its latency is then the transport's own share.
                        pause = in_process_p50 / 1000 if name in FLOORS and model == "image" and concurrency == 1 else 0
                        cell = timed_cell(factories[name][protocol], concurrency, seconds,
                                          args.warmup, pause, servers[name][0].pid)
                        samples.setdefault((name, f"{model}/{protocol}/c{concurrency}"), []).append(cell)
                        report(name, model, protocol, concurrency, cell)
        del compiled
    results: dict[str, dict] = {name: {} for name in ["in-process", *servers]}
    for (name, key), cells in samples.items():
        rate, p50, p99, _, client, server = (float(np.median(column)) for column in zip(*cells))
        results[name][key] = (rate, p50, p99, sum(cell[3] for cell in cells), client, server)
    return results


def report(server, model, protocol, concurrency, cell) -> None:
    rate, p50, p99, errors, client, server_cpu = cell
    print(f"{server:10} {model:6} {protocol:12} c={concurrency:<3} {rate:9.1f} req/s  "
          f"p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  errors {errors}  "
          f"CPU per request: client {client:6.0f} µs, server {server_cpu:7.0f} µs", flush=True)


def machine() -> str:
    flags = set()
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    model = cpu_model()
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{os.cpu_count()} cores, {model}, {' '.join(wanted)}, OpenVINO {ov.__version__}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", default="kserve,mlserver",
                        help="comma-separated: kserve, mlserver (empty for none)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements of each cell; medians are reported (default 3)")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="leave out the do-nothing gRPC and HTTP servers (what the transport alone costs)")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")],
                        default=list(CONCURRENCY))
    parser.add_argument("--protocols", type=lambda s: s.split(","), default=list(PROTOCOLS))
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    parser.add_argument("--json", type=pathlib.Path, help="write every number here")
    parser.add_argument("--shadow", action="store_true",
                        help="add ModelKiln in a Shadow rollout at a 100%% sample (modelkiln-shadow)")
    parser.add_argument("--baseline", type=pathlib.Path, metavar="CHECKOUT",
                        help="add ModelKiln from another checkout, e.g. the main branch (modelkiln-baseline)")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    # a SIGTERM'd run still stops the servers it started (the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = pathlib.Path(tempfile.mkdtemp(prefix="modelkiln-bench-"))
    repo = CACHE / "repository"
    build_repository(repo)
    print(f"machine: {machine()}", flush=True)
    compiled = ov.Core().compile_model(str(repo / "image" / "1" / "model.xml"), "CPU")
    decode = json_decode_cost(compiled, MODELS["image"][1])
    del compiled
    print(f"JSON decode (KServe v2, image input, {decode['body_bytes'] / 1e6:.1f} MB): "
          f"{decode['ns_per_element']:.1f} ns of CPU per element (goal: at most 20)", flush=True)
    servers = {}
    starters = dict(SERVERS)
    if args.baseline:
        starters["modelkiln-baseline"] = start_modelkiln_baseline(args.baseline)
    try:
        for name in ["modelkiln", *(["modelkiln-baseline"] if args.baseline else []),
                     *(["modelkiln-shadow"] if args.shadow else []),
                     *[p for p in args.peers.split(",") if p], *(FLOORS if args.floor else [])]:
            servers[name] = starters[name](repo, work)
        results = measure(servers, repo, args)
        if args.shadow:
            print(f"\nmodelkiln-shadow: {shadow_counts(servers['modelkiln-shadow'][1])}")
    finally:
        for process, _, _ in servers.values():
            process.terminate()
            process.wait(timeout=60)
    summarize(results)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "json_decode": decode,
                                         "results": results}, indent=1))
    return 0


def summarize(results: dict) -> None:
    print_tables(results)
    ours = results["modelkiln"]
    limit = results["in-process"]
    floors = {protocol: results.get(name, {}) for name, protocols in FLOORS.items() for protocol in protocols}
    print("\nratios")
    for protocol in ("grpc-raw", "rest-binary"):
        key = f"image/{protocol}/c8"
        if key in ours and "image/in-process/c8" in limit:
            print(f"  image {protocol} c=8 / in-process c=8: "
                  f"{ours[key][0] / limit['image/in-process/c8'][0]:.2f}x")
    for protocol in ("grpc-raw", "rest-binary"):
        key = f"image/{protocol}/c1"
        if key in ours and "image/in-process/c1" in limit:
            print(f"  image {protocol} c=1 p99 - in-process p99: "
                  f"{ours[key][2] - limit['image/in-process/c1'][2]:+.2f} ms")
        if key in floors[protocol]:
            print(f"    a do-nothing server, paced like the model: p50 {floors[protocol][key][1]:.2f} ms, "
                  f"p99 {floors[protocol][key][2]:.2f} ms per request")
    rollout_costs(results)
    peers = [p for p in results if p not in (*OURS, "in-process", *FLOORS)]
    for protocol in PROTOCOLS:
        key = f"tiny/{protocol}/c8"
        best = max((results[p].get(key, (0,))[0] for p in peers), default=0)
        if key in ours and best:
            print(f"  tiny {protocol} c=8 / best peer: {ours[key][0] / best:.2f}x "
                  f"({ours[key][0]:.0f} vs {best:.0f} req/s)")
        floor = floors[protocol].get(key)
        if key in ours and floor:
            print(f"    a do-nothing server: {floor[0]:.0f} req/s; ModelKiln at "
                  f"{ours[key][0] / floor[0]:.0%} of it" + (f"; 2.5x the best peer is {2.5 * best / floor[0]:.0%} of it"
                                                         if best else ""))
        if key in ours:
            # CPU is the bound on a small machine: client and server share its cores
            client, server = ours[key][4:6]
            print(f"    CPU per request: client {client:.0f} µs + ModelKiln {server:.0f} µs"
                  + (f" (do-nothing server {floor[5]:.0f} µs)" if floor else "")
                  + f"; with all {os.cpu_count()} cores busy, however many server processes: at most "
                  f"{os.cpu_count() * 1e6 / (client + server):.0f} req/s")
            inference = limit.get("tiny/in-process/c8")
            if floor and inference:
                least = floor[4] + floor[5] + inference[5]
                print(f"    a server with no code of its own (do-nothing server + client + {inference[5]:.0f} µs "
                      f"for OpenVINO driven from Python, in-process): at most {os.cpu_count() * 1e6 / least:.0f} req/s")


def rollout_costs(results: dict) -> None:
    """What a rollout costs: no rollout against the baseline checkout (nothing, is the goal), and
    Shadow at a 100% sample against no rollout (at most the second inference)."""
    ours, limit = results["modelkiln"], results["in-process"]
    for other, goal in (("modelkiln-baseline", "no rollout, this checkout / the baseline"),
                        ("modelkiln-shadow", "Shadow at 100% / no rollout")):
        if other not in results:
            continue
        print(f"  {goal}:")
        for key in sorted(set(ours) & set(results[other])):
            model, _, concurrency = key.split("/")
            theirs = results[other][key]
            if other == "modelkiln-baseline":
                rate, cpu = ours[key][0] / theirs[0], ours[key][5] - theirs[5]
            else:
                rate, cpu = theirs[0] / ours[key][0], theirs[5] - ours[key][5]
            inference = limit.get(f"{model}/in-process/{concurrency}")
            print(f"    {key}: req/s {rate:.2f}x, server CPU per request {cpu:+.0f} µs"
                  + (f" (one inference in-process: {inference[5]:.0f} µs)" if inference else ""))


def print_tables(results: dict) -> None:
    """One markdown table per model: req/s (p50 / p99 ms) per protocol and concurrency."""
    servers = list(results)
    for model in MODELS:
        keys = sorted({key.split("/", 1)[1] for name in servers for key in results[name]
                       if key.startswith(f"{model}/") and "in-process" not in key},
                      key=lambda k: (PROTOCOLS.index(k.split("/")[0]), int(k.split("/c")[1])))
        if not keys:
            continue
        print(f"\n**{model}** — req/s (p50 / p99 ms)\n")
        print("| protocol | c | " + " | ".join(servers) + " |")
        print("| --- | --- |" + " --- |" * len(servers))
        for key in keys:
            protocol, concurrency = key.split("/c")
            cells = []
            for name in servers:
                cell = results[name].get(f"{model}/in-process/c{concurrency}" if name == "in-process"
                                         else f"{model}/{key}")
                cells.append("—" if cell is None else "fails" if cell[0] == 0 else
                             f"{cell[0]:,.1f} ({cell[1]:.3g} / {cell[2]:.3g})")
            print(f"| {protocol} | {concurrency} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
