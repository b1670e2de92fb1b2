"""KServe v2 (Open Inference Protocol) over REST, with the binary tensor data extension.

Wire format only: JSON (and the binary extension's raw tensor bytes) in, validated arrays to
the data plane, arrays back to JSON or raw bytes. The extension: a request whose JSON header is
followed by raw tensors says the header's length in `Inference-Header-Content-Length`, and each
such input says its size in `parameters.binary_data_size`; outputs come back raw when the
request asks with `parameters.binary_data_output` or an output's `parameters.binary_data`.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass

import numpy as np

from modelkiln.runtime.serving import json_tensors, tensors
from modelkiln.runtime.serving.dataplane import DataPlane, Decoded, Result
from modelkiln.runtime.errors import InvalidInput
from modelkiln.runtime.serving.http_app import (Request, Response, Router, json_response,
                                                readiness_response)
from modelkiln.runtime.names import shown
from modelkiln.runtime.serving.repository import ServedVersion

HEADER_LENGTH = b"inference-header-content-length"
SERVER_NAME = "modelkiln"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_repository_versions"]
# Generated request ids: unique per process start (random prefix) and cheap per request (counter).
_ID_PREFIX = uuid.uuid4().hex[:12]
_ID_COUNTER = itertools.count(1)
VERSIONED = r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"


def tensor_metadata(spec) -> dict:
    return {"name": spec.name, "datatype": spec.datatype.name,
            "shape": [] if spec.rank_is_dynamic else list(spec.shape)}


def model_metadata(dataplane: DataPlane, served: ServedVersion) -> dict:
    model = dataplane.repository.model(served.model)
    return {"name": served.model,
            "versions": [str(v) for v, s in sorted(model.versions.items())
                         if s.state.value == "AVAILABLE"],
            "platform": served.platform,
            "inputs": [tensor_metadata(s) for s in served.inputs],
            "outputs": [tensor_metadata(s) for s in served.outputs]}


def _flag(parameters, key: str, where: str) -> bool | None:
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{where}parameters: expected an object, got {parameters!r:.80}")
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"{where}parameters.{key}: expected true or false, got {value!r:.80}")
    return value


@dataclass
class KServeRequest:
    """What the response needs from the request: its id and which outputs go back raw."""

    decoded: Decoded
    as_binary: list[bool]
    id: str


def decode_request(served: ServedVersion, document, binary: memoryview) -> KServeRequest:
    """Validated arrays for `served` from a KServe v2 JSON body (plus the binary tail)."""
    if not isinstance(document, dict):
        raise InvalidInput("malformed request: expected a JSON object with 'inputs'")
    wire_inputs = document.get("inputs")
    if not isinstance(wire_inputs, list) or not wire_inputs:
        raise InvalidInput(f"malformed request: 'inputs' must be a non-empty list; expected "
                           f"inputs: {tensors.expected_inputs(served)}")
    # Every input's name, datatype, shape and size is checked before any data is decoded.
    sources = []
    offset = 0
    for wire in wire_inputs:
        if not isinstance(wire, dict):
            raise InvalidInput(f"malformed request: each input must be an object, got {wire!r:.80}")
        spec = tensors.input_spec(served, wire.get("name"), wire.get("datatype"))
        if "datatype" not in wire:
            raise InvalidInput(f"input '{spec.name}': 'datatype' is required "
                               f"(expected {spec.datatype.name})")
        shape = tensors.check_shape(spec, wire.get("shape"))
        parameters = wire.get("parameters")
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input '{spec.name}': binary_data_size must be a "
                                   f"non-negative integer, got {size!r:.80}")
            if offset + size > len(binary):
                raise InvalidInput(f"malformed binary body: input '{spec.name}' needs {size} "
                                   f"bytes at offset {offset}, only {len(binary) - offset} "
                                   f"follow the JSON header")
            sources.append((spec, shape, binary[offset:offset + size]))
            offset += size
        elif "data" in wire:
            sources.append((spec, shape, wire["data"]))
        else:
            raise InvalidInput(f"input '{spec.name}': has neither 'data' nor "
                               f"parameters.binary_data_size")
    if offset != len(binary):
        raise InvalidInput(f"malformed binary body: {len(binary) - offset} bytes after the JSON "
                           f"header are not claimed by any input's binary_data_size")
    default_binary = bool(_flag(document.get("parameters"), "binary_data_output", ""))
    wire_outputs = document.get("outputs")
    if wire_outputs is not None and not isinstance(wire_outputs, list):
        raise InvalidInput(f"malformed request: 'outputs' must be a list, got {wire_outputs!r:.80}")
    names = None
    binary_flags = {}
    if wire_outputs:
        names = []
        for wire in wire_outputs:
            name = wire.get("name") if isinstance(wire, dict) else None
            names.append(name)
            flag = _flag(wire.get("parameters"), "binary_data", f"output {shown(name)}: ") \
                if isinstance(wire, dict) else None
            binary_flags[name] = default_binary if flag is None else flag
    outputs = tensors.output_specs(served, names)
    as_binary = [binary_flags.get(s.name, default_binary) for s in outputs]
    arrays: dict[int, np.ndarray] = {}
    for spec, shape, source in sources:
        if isinstance(source, memoryview):
            array = tensors.array_from_bytes(spec, shape, source)
        else:
            array = json_tensors.array_from_json(spec, shape, source)
        tensors.add_input(arrays, spec, array)
    tensors.check_complete(served, arrays)
    request_id = document.get("id")
    if not isinstance(request_id, str) or not request_id:
        request_id = f"{_ID_PREFIX}-{next(_ID_COUNTER)}"  # so that logs and clients correlate
    return KServeRequest(Decoded(arrays=arrays, outputs=outputs), as_binary, request_id)


def encode_response(result: Result, request: KServeRequest) -> Response:
    wire_outputs = []
    blobs = []
    for spec, array, binary in zip(result.outputs, result.arrays, request.as_binary):
        wire = {"name": spec.name, "datatype": spec.datatype.name, "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            wire["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            wire["data"] = np.ascontiguousarray(array).ravel()
        wire_outputs.append(wire)
    document = {"model_name": result.served.model, "model_version": result.served.label,
                "id": request.id, "outputs": wire_outputs}
    response = json_response(document)
    if blobs:
        header_length = len(response.body)
        response.body = b"".join([response.body, *blobs])
        response.content_type = b"application/octet-stream"
        response.extra_headers = ((HEADER_LENGTH, str(header_length).encode()),)
    return response


def split_body(request: Request, tensor_paths=json_tensors.KSERVE_TENSORS
               ) -> tuple[object, memoryview]:
    """The JSON document and the binary tail of a KServe v2 request body."""
    declared = request.header(HEADER_LENGTH)
    body = request.body
    if declared is None:
        return json_tensors.loads(body, tensor_paths), memoryview(b"")
    try:
        length = int(declared)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise InvalidInput(f"malformed binary header: Inference-Header-Content-Length "
                           f"{shown(declared.decode(errors='replace'))} must be an integer "
                           f"between 0 and the body size {len(body)}")
    return json_tensors.loads(body[:length], tensor_paths), memoryview(body)[length:]


def large_json(request: Request) -> bool:
    """Whether the request's JSON (the header alone, with binary tensors) is large."""
    declared = request.header(HEADER_LENGTH)
    length = int(declared) if declared is not None and declared.isdigit() else len(request.body)
    return json_tensors.is_large(min(length, len(request.body)))


class KServeRoutes:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def install(self, router: Router) -> None:
        router.add("GET", r"/v2/?", self.server_metadata)
        router.add("GET", r"/v2/health/live", self.live)
        router.add("GET", r"/v2/health/ready", self.ready)
        router.add("GET", VERSIONED + r"/?", self.model_metadata)
        router.add("GET", VERSIONED + r"/ready", self.model_ready)
        router.add("POST", VERSIONED + r"/infer", self.infer)

    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": SERVER_NAME, "version": SERVER_VERSION,
                              "extensions": EXTENSIONS})

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        return readiness_response(self.dataplane.ready)

    async def model_metadata(self, request: Request, model: str,
                             version: str | None) -> Response:
        served = self.dataplane.resolve(model, version)
        return json_response(model_metadata(self.dataplane, served))

    async def model_ready(self, request: Request, model: str, version: str | None) -> Response:
        self.dataplane.resolve(model, version)  # raises 404, or 503 with the reason
        return json_response({"name": model, "ready": True})

    async def infer(self, request: Request, model: str, version: str | None) -> Response:
        decoded: list[KServeRequest] = []

        def decode(served: ServedVersion) -> Decoded:
            decoded.append(decode_request(served, *split_body(request)))
            return decoded[0].decoded

        result = await self.dataplane.infer(model=model, version=version, protocol="rest",
                                            decode=decode, offload=large_json(request))
        return encode_response(result, decoded[0])

