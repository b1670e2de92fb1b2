"""`modelkiln predict`: send a file to a running endpoint and print what the model answered.

A smoke test for people: `modelkiln predict --url http://localhost:8080 --model digits
--input digit.npy`. Inputs come from .npy, .npz (arrays named after inputs), .json (numbers,
or an object of them by input name) or an image (.png/.jpg/.bmp, resized to the model's input
and laid out NCHW or NHWC as the model's shape says). JSON and images take the model's datatype;
.npy/.npz arrays are sent as they are, so the server's datatype check applies. An input one
dimension short of the model's gets a batch dimension of 1. Outputs are printed with argmax and
top-k for classifier-shaped ones (2-D floats).

Only runtime dependencies: the standard library for REST (KServe v2 binary extension) and our
own gRPC stubs for gRPC.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import urllib.error
import urllib.request

import numpy as np

from modelkiln.runtime.datatypes import BY_NAME

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
HEADER_LENGTH = "Inference-Header-Content-Length"


class PredictError(Exception):
    """Something the user should read: a bad file, or the server's own error message."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelkiln predict",
        description="Send an input file to a running ModelKiln (or any KServe v2) endpoint and "
                    "print the outputs.")
    parser.add_argument("--url", default="http://localhost:8080",
                        help="http://HOST:PORT for REST, HOST:PORT for gRPC")
    parser.add_argument("--model", required=True, help="name of the model to call")
    parser.add_argument("--version", default="", help="model version (default: the server's)")
    parser.add_argument("--protocol", choices=["rest", "grpc"], default="rest",
                        help="KServe v2 over REST (default) or gRPC")
    parser.add_argument("--input", action="append", required=True, metavar="[NAME=]FILE",
                        help=".npy, .npz, .json or an image; NAME may be omitted for a "
                             "single-input model or an .npz")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per row")
    parser.add_argument("--labels", type=pathlib.Path, metavar="FILE",
                        help="class names, one per line (line N+1 names class N), printed "
                             "next to the class numbers of classifier outputs")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for an answer (default: 60)")
    return parser


# ---- the two transports: metadata and infer ----

class RestClient:
    def __init__(self, url: str, timeout: float) -> None:
        self.base = url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"
        self.timeout = timeout

    def _call(self, path: str, body: bytes | None = None, headers: dict | None = None):
        request = urllib.request.Request(self.base + path, data=body, headers=headers or {},
                                         method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(), response.headers
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise PredictError(f"server answered {error.code}: {detail}") from None
        except urllib.error.URLError as error:
            raise PredictError(f"cannot reach {self.base}: {error.reason}") from None

    def _path(self, model: str, version: str) -> str:
        return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")

    def metadata(self, model: str, version: str) -> dict:
        body, _ = self._call(self._path(model, version))
        return json.loads(body)

    def infer(self, model: str, version: str, arrays: dict[str, tuple[str, np.ndarray]]):
        inputs = [{"name": name, "datatype": datatype, "shape": list(array.shape),
                   "parameters": {"binary_data_size": array.nbytes}}
                  for name, (datatype, array) in arrays.items()]
        header = json.dumps({"inputs": inputs,
                             "parameters": {"binary_data_output": True}}).encode()
        body = b"".join([header] + [np.ascontiguousarray(a).tobytes()
                                    for _, a in arrays.values()])
        content, headers = self._call(self._path(model, version) + "/infer", body, {
            HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"})
        length = int(headers.get(HEADER_LENGTH) or len(content))
        document = json.loads(content[:length])
        offset, outputs = length, {}
        for output in document["outputs"]:
            dtype = BY_NAME[output["datatype"]].dtype
            size = (output.get("parameters") or {}).get("binary_data_size")
            if size is None:
                array = np.asarray(output["data"], dtype=dtype)
            else:
                array = np.frombuffer(content, dtype=dtype, count=size // dtype.itemsize,
                                      offset=offset)
                offset += size
            outputs[output["name"]] = (output["datatype"], array.reshape(output["shape"]))
        return document.get("model_version", ""), outputs


class GrpcClient:
    def __init__(self, url: str, timeout: float) -> None:
        import grpc

        from modelkiln.runtime.proto import grpc_service_pb2 as pb
        from modelkiln.runtime.proto import grpc_service_pb2_grpc as pb_grpc

        self.grpc, self.pb = grpc, pb
        target = url.split("://", 1)[-1].rstrip("/")
        limit = 1 << 30
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)])
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.timeout = timeout
        self.target = target

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except self.grpc.RpcError as error:
            raise PredictError(f"server answered {error.code().name}: {error.details()}") from None

    def metadata(self, model: str, version: str) -> dict:
        response = self._call(self.stub.ModelMetadata,
                              self.pb.ModelMetadataRequest(name=model, version=version))
        tensors = lambda items: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                                 for t in items]
        return {"name": response.name, "inputs": tensors(response.inputs),
                "outputs": tensors(response.outputs)}

    def infer(self, model: str, version: str, arrays: dict[str, tuple[str, np.ndarray]]):
        request = self.pb.ModelInferRequest(model_name=model, model_version=version)
        for name, (datatype, array) in arrays.items():
            request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
        response = self._call(self.stub.ModelInfer, request)
        outputs = {}
        for output, raw in zip(response.outputs, response.raw_output_contents):
            dtype = BY_NAME[output.datatype].dtype
            outputs[output.name] = (output.datatype,
                                    np.frombuffer(raw, dtype=dtype).reshape(list(output.shape)))
        return response.model_version, outputs


# ---- files to arrays ----

def _image(path: pathlib.Path, shape: list[int], dtype: np.dtype) -> np.ndarray:
    from PIL import Image

    if len(shape) != 4:
        raise PredictError(f"{path}: an image needs a 4-D model input (NCHW or NHWC), the "
                           f"model's is {shape}")
    channels_first = shape[1] in (1, 3)
    height, width, channels = (shape[2], shape[3], shape[1]) if channels_first else \
        (shape[1], shape[2], shape[3])
    if height <= 0 or width <= 0:
        raise PredictError(f"{path}: the model's input {shape} has no fixed height and width")
    image = Image.open(path).convert("L" if channels == 1 else "RGB").resize((width, height))
    pixels = np.asarray(image, dtype=np.float32).reshape(height, width, channels)
    if channels_first:
        pixels = pixels.transpose(2, 0, 1)
    return pixels[None].astype(dtype)


def read_inputs(specs: list[str], metadata: dict) -> dict[str, tuple[str, np.ndarray]]:
    model_inputs = {t["name"]: t for t in metadata["inputs"]}
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        name, _, file = spec.rpartition("=")
        path = pathlib.Path(file)
        if not path.is_file():
            raise PredictError(f"--input {spec}: no such file {path}")
        if not name and path.suffix != ".npz":
            if len(model_inputs) != 1:
                raise PredictError(f"--input {spec}: name the input (NAME=FILE); the model has "
                                   f"{', '.join(model_inputs)}")
            name = next(iter(model_inputs))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                found = {key: archive[key] for key in archive.files}
            arrays.update({name: found[name]} if name and name in found else found)
            continue
        if name not in model_inputs:
            raise PredictError(f"--input {spec}: the model has no input {name!r}; it has "
                               f"{', '.join(model_inputs)}")
        dtype = BY_NAME[model_inputs[name]["datatype"]].dtype
        if path.suffix == ".npy":
            arrays[name] = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            document = json.loads(path.read_text())
            values = document.get(name) if isinstance(document, dict) else document
            arrays[name] = np.asarray(values, dtype=dtype)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            arrays[name] = _image(path, model_inputs[name]["shape"], dtype)
        else:
            raise PredictError(f"--input {spec}: unknown file type {path.suffix!r}; expected "
                               f".npy, .npz, .json or an image")
    result = {}
    for name, array in arrays.items():
        if name not in model_inputs:
            raise PredictError(f"the model has no input {name!r}; it has "
                               f"{', '.join(model_inputs)}")
        model_shape = model_inputs[name]["shape"]
        if array.ndim == len(model_shape) - 1:
            array = array[None]  # one sample: add the batch dimension
        got = next((d.name for d in BY_NAME.values() if d.dtype == array.dtype), str(array.dtype))
        result[name] = (got, array)
    return result


# ---- printing ----

def read_labels(path: pathlib.Path | None) -> list[str]:
    if path is None:
        return []
    try:
        return path.read_text().splitlines()
    except OSError as error:
        raise PredictError(f"--labels {path}: {error.strerror}") from None


def describe_output(name: str, datatype: str, array: np.ndarray, top_k: int,
                    labels: list[str]) -> list[str]:
    lines = [f"{name} {datatype} {list(array.shape)}"]
    with np.printoptions(threshold=50, edgeitems=5, precision=5, suppress=True):
        lines.append("  " + str(array).replace("\n", "\n  "))
    if array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind == "f":
        for row, scores in enumerate(array[:16]):
            order = np.argsort(scores)[::-1][:top_k]
            ranked = ", ".join(f"{class_name(i, labels)} ({scores[i]:.4g})" for i in order)
            lines.append(f"  row {row}: argmax {class_name(order[0], labels)}; "
                         f"top-{len(order)}: {ranked}")
    return lines


def class_name(index: int, labels: list[str]) -> str:
    return f"{index} {labels[index]!r}" if index < len(labels) else str(index)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        labels = read_labels(args.labels)
        client = (GrpcClient if args.protocol == "grpc" else RestClient)(args.url, args.timeout)
        metadata = client.metadata(args.model, args.version)
        arrays = read_inputs(args.input, metadata)
        version, outputs = client.infer(args.model, args.version, arrays)
    except PredictError as error:
        print(f"modelkiln predict: {error}", file=sys.stderr)
        return 1
    print(f"model {args.model} version {version}")
    for name, (datatype, array) in outputs.items():
        print("\n".join(describe_output(name, datatype, array, args.top_k, labels)))
    return 0
