"""The SageMaker container contract: `GET /ping` and `POST /invocations`.

`/invocations` takes KServe v2 JSON (with or without the binary extension), TF-Serving JSON, or
a `.npy` body (`application/x-npy`) for a single-input model, and answers in kind (`.npy` back
when the client accepts `application/x-npy`). The model is the one named by the
`X-Amzn-SageMaker-Target-Model` header, or the only one served.
"""

from __future__ import annotations

import io

import numpy as np

from modelkiln.runtime.serving import json_tensors, kserve_rest, tensors, tfserving_rest
from modelkiln.runtime.serving.dataplane import DataPlane, Decoded
from modelkiln.runtime.errors import InvalidInput, UnsupportedMediaType
from modelkiln.runtime.serving.http_app import Request, Response, Router, readiness_response
from modelkiln.runtime.names import shown
from modelkiln.runtime.serving.repository import ServedVersion

TARGET_MODEL = b"x-amzn-sagemaker-target-model"
NPY = b"application/x-npy"
TENSORS = json_tensors.KSERVE_TENSORS + json_tensors.TFSERVING_TENSORS


def _is_kserve(document) -> bool:
    inputs = document.get(tfserving_rest.COLUMNAR) if isinstance(document, dict) else None
    return isinstance(inputs, list) and bool(inputs) and all(
        isinstance(item, dict) and "datatype" in item for item in inputs)


def decode_npy(served: ServedVersion, body: bytes) -> Decoded:
    if len(served.inputs) != 1:
        raise InvalidInput(f"an application/x-npy body needs a single-input model; model "
                           f"'{served.model}' has inputs {tensors.expected_inputs(served)}")
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as error:  # numpy raises several types for a bad header
        raise InvalidInput(f"malformed .npy body: {error}") from None
    if not isinstance(array, np.ndarray):
        raise InvalidInput("malformed .npy body: expected one array, got an .npz archive")
    spec = served.inputs[0]
    return Decoded(arrays={spec.index: tensors.array_of_dtype(spec, array)},
                   outputs=served.outputs)


def encode_npy(array: np.ndarray) -> Response:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return Response(200, buffer.getvalue(), content_type=NPY)


class SageMakerRoutes:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def install(self, router: Router) -> None:
        router.add("GET", r"/ping", self.ping)
        router.add("POST", r"/invocations", self.invocations)

    async def ping(self, request: Request) -> Response:
        return readiness_response(self.dataplane.ready)

    def _target(self, request: Request) -> str:
        named = request.header(TARGET_MODEL)
        if named:
            return named.decode(errors="replace").removesuffix(".tar.gz")
        models = sorted(self.dataplane.repository.models)
        if len(models) != 1:
            raise InvalidInput(f"{len(models)} models are served ({', '.join(models)}); name one "
                               f"in the X-Amzn-SageMaker-Target-Model header")
        return models[0]

    async def invocations(self, request: Request) -> Response:
        model = self._target(request)
        content_type = (request.header(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type not in (NPY, b"application/json", b"application/octet-stream", b""):
            shown_type = shown(content_type.decode(errors="replace"))
            raise UnsupportedMediaType(f"Content-Type {shown_type} is not supported; send "
                                       f"application/json or application/x-npy")
        wants_npy = NPY in (request.header(b"accept") or b"")
        answer = {}

        def decode(served: ServedVersion) -> Decoded:
            if content_type == NPY:
                decoded = decode_npy(served, request.body)
            else:
                document, binary = kserve_rest.split_body(request, TENSORS)
                if _is_kserve(document) or binary:
                    answer["kserve"] = kserve_rest.decode_request(served, document, binary)
                    decoded = answer["kserve"].decoded
                else:
                    decoded, answer["tfs"] = tfserving_rest.decode_predict(served, document)
            if wants_npy and len(decoded.outputs) != 1:
                raise InvalidInput(f"Accept: application/x-npy needs one output; model "
                                   f"'{served.model}' answers with "
                                   f"{', '.join(repr(s.name) for s in decoded.outputs)}")
            return decoded

        result = await self.dataplane.infer(
            model=model, version=None, protocol="sagemaker", decode=decode,
            offload=content_type != NPY and kserve_rest.large_json(request))
        if wants_npy:
            return encode_npy(result.arrays[0])
        if "kserve" in answer:
            return kserve_rest.encode_response(result, answer["kserve"])
        return tfserving_rest.encode_predict(result, answer.get("tfs", tfserving_rest.ROW))
