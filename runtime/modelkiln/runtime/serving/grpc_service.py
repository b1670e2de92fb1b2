"""KServe v2 `inference.GRPCInferenceService` on grpc.aio, sharing the HTTP server's event loop.

Wire format only: protobuf in, validated arrays to the data plane, raw little-endian output
bytes back (`raw_output_contents`, as Triton answers). Requests are parsed here rather than by
grpc, so a malformed protobuf is an INVALID_ARGUMENT naming the message, not an INTERNAL.
"""

from __future__ import annotations

import functools
import logging

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from modelkiln.runtime.serving import tensors
from modelkiln.runtime.serving.dataplane import DataPlane, Decoded
from modelkiln.runtime.errors import InvalidInput, ModelNotReady, ServingError, one_line
from modelkiln.runtime.serving.kserve_rest import EXTENSIONS, SERVER_NAME, SERVER_VERSION, model_metadata
from modelkiln.runtime.proto import grpc_service_pb2 as pb
from modelkiln.runtime.serving.repository import ServedVersion

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"


def _parse(message_class, data: bytes):
    try:
        return message_class.FromString(data)
    except DecodeError as error:
        raise InvalidInput(f"malformed protobuf: not a valid {message_class.DESCRIPTOR.full_name}"
                           f" ({error})") from None


def _typed_values(spec, wire):
    field = spec.datatype.contents_field
    if field is None:
        raise InvalidInput(f"input '{spec.name}': {spec.datatype.name} has no typed contents "
                           f"field; send it in raw_input_contents")
    populated = [descriptor.name for descriptor, _ in wire.contents.ListFields()]
    if populated and populated != [field]:
        raise InvalidInput(f"input '{spec.name}': {spec.datatype.name} data goes in "
                           f"contents.{field}, got {', '.join(populated)}")
    return getattr(wire.contents, field)


def decode_infer(served: ServedVersion, request) -> Decoded:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for "
                           f"{len(request.inputs)} inputs; expected one per input")
    if not request.inputs:
        raise InvalidInput(f"malformed request: no inputs; expected inputs: "
                           f"{tensors.expected_inputs(served)}")
    arrays: dict[int, np.ndarray] = {}
    for position, wire in enumerate(request.inputs):
        spec = tensors.input_spec(served, wire.name, wire.datatype)
        shape = tensors.check_shape(spec, list(wire.shape))
        if raw:
            array = tensors.array_from_bytes(spec, shape, raw[position])
        else:
            array = tensors.array_from_values(spec, shape, _typed_values(spec, wire))
        tensors.add_input(arrays, spec, array)
    tensors.check_complete(served, arrays)
    names = [output.name for output in request.outputs] or None
    return Decoded(arrays=arrays, outputs=tensors.output_specs(served, names))


def _rpc(method):
    """Turn the data plane's errors into gRPC status codes, the same table REST uses."""

    @functools.wraps(method)
    async def wrapper(self, data: bytes, context: grpc.aio.ServicerContext):
        try:
            return await method(self, data)
        except ServingError as error:
            log.log(error.log_level, "gRPC %s: %s", method.__name__, error.message)
            await context.abort(error.grpc_code, error.message)
        except Exception as error:
            log.exception("gRPC %s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {one_line(error)}")

    return wrapper


class InferenceService:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    @_rpc
    async def ServerLive(self, data: bytes):
        _parse(pb.ServerLiveRequest, data)
        return pb.ServerLiveResponse(live=self.dataplane.live)

    @_rpc
    async def ServerReady(self, data: bytes):
        _parse(pb.ServerReadyRequest, data)
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    @_rpc
    async def ModelReady(self, data: bytes):
        request = _parse(pb.ModelReadyRequest, data)
        try:
            self.dataplane.resolve(request.name, request.version or None)
        except ModelNotReady:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_rpc
    async def ServerMetadata(self, data: bytes):
        _parse(pb.ServerMetadataRequest, data)
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION,
                                         extensions=EXTENSIONS)

    @_rpc
    async def ModelMetadata(self, data: bytes):
        request = _parse(pb.ModelMetadataRequest, data)
        served = self.dataplane.resolve(request.name, request.version or None)
        return pb.ModelMetadataResponse(**model_metadata(self.dataplane, served))

    @_rpc
    async def ModelInfer(self, data: bytes):
        request = _parse(pb.ModelInferRequest, data)
        result = await self.dataplane.infer(
            model=request.model_name, version=request.model_version or None, protocol="grpc",
            decode=lambda served: decode_infer(served, request))
        response = pb.ModelInferResponse(model_name=result.served.model,
                                         model_version=result.served.label, id=request.id)
        for spec, array in zip(result.outputs, result.arrays):
            response.outputs.add(name=spec.name, datatype=spec.datatype.name, shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {}
        for name in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                     "ModelMetadata", "ModelInfer"):
            methods[name] = grpc.unary_unary_rpc_method_handler(
                getattr(self, name), response_serializer=lambda m: m.SerializeToString())
        return grpc.method_handlers_generic_handler(SERVICE, methods)


def build_server(*, dataplane: DataPlane, host: str, port: int, max_message_bytes: int,
                 options: tuple[tuple[str, int], ...] = (), max_concurrent_rpcs: int | None = None,
                 credentials: grpc.ServerCredentials | None = None,
                 interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()
                 ) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server bound to host:port (port 0 picks one); returns it and the port.

    `options` are grpc channel arguments (limits), `max_concurrent_rpcs` answers calls past it
    RESOURCE_EXHAUSTED at once, `credentials` serve TLS instead of plaintext.
    """
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes),
               ("grpc.so_reuseport", 0), *options]
    server = grpc.aio.server(options=options, interceptors=interceptors,
                             maximum_concurrent_rpcs=max_concurrent_rpcs)
    server.add_generic_rpc_handlers((InferenceService(dataplane).handler(),))
    address = f"{host}:{port}"
    if credentials is None:
        return server, server.add_insecure_port(address)
    return server, server.add_secure_port(address, credentials)
