"""TensorFlow Serving's REST API: model status, metadata and `:predict` (row and columnar).

TF-Serving requests carry no datatype or shape: values take the model's input datatype (JSON
integers are fine for a float input; floats for an integer input are refused) and their nesting
is the shape, checked against the model's. `instances` is the row format (one entry per batch
item, a dict of inputs when the model has several); `inputs` is the columnar one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from modelkiln.runtime.serving import json_tensors, tensors
from modelkiln.runtime.serving.dataplane import DataPlane, Decoded, Result
from modelkiln.runtime.errors import InvalidInput
from modelkiln.runtime.serving.http_app import Request, Response, Router, json_response
from modelkiln.runtime.serving.json_tensors import Span
from modelkiln.runtime.serving.repository import ServedVersion, State

VERSIONED = r"/v1/models/(?P<model>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
ROW, COLUMNAR = "instances", "inputs"


def decode_predict(served: ServedVersion, document) -> tuple[Decoded, str]:
    if not isinstance(document, dict) or (ROW in document) == (COLUMNAR in document):
        raise InvalidInput("malformed request: expected a JSON object with either 'instances' "
                           f"(row format) or 'inputs' (columnar format); model inputs: "
                           f"{tensors.expected_inputs(served)}")
    style = ROW if ROW in document else COLUMNAR
    values = document[style]
    single = len(served.inputs) == 1
    if style == ROW:
        if values.empty if isinstance(values, Span) else not (isinstance(values, list) and values):
            raise InvalidInput("malformed request: 'instances' must be a non-empty list")
        if single and (isinstance(values, Span) or not isinstance(values[0], dict)):
            by_name = {served.inputs[0].name: values}
        elif isinstance(values, list) and all(isinstance(item, dict) for item in values):
            by_name = {name: [item.get(name) for item in values] for name in values[0]}
            for item in values:
                if item.keys() != values[0].keys():
                    raise InvalidInput("malformed request: every instance must name the same "
                                       "inputs")
        else:
            raise InvalidInput(f"malformed request: with several inputs each instance must be "
                               f"an object of {tensors.expected_inputs(served)}")
    elif single and not isinstance(values, dict):
        by_name = {served.inputs[0].name: values}
    elif isinstance(values, dict):
        by_name = values
    else:
        raise InvalidInput(f"malformed request: with several inputs 'inputs' must be an object "
                           f"of {tensors.expected_inputs(served)}")
    specs = {name: tensors.input_spec(served, name, None) for name in by_name}
    arrays: dict[int, np.ndarray] = {}
    for name, value in by_name.items():
        spec = specs[name]
        if isinstance(value, list) and any(isinstance(row, Span) for row in value):
            array = _stack_rows(spec, value)
        else:
            array = json_tensors.array_from_json(spec, None, value)
        tensors.add_input(arrays, spec, array)
    tensors.check_complete(served, arrays)
    return Decoded(arrays=arrays, outputs=served.outputs), style


def _stack_rows(spec, rows: list) -> np.ndarray:
    """One input of row-format instances (objects), each row's data left as bytes."""
    row_spec = spec
    if not spec.rank_is_dynamic and spec.shape:
        row_spec = dataclasses.replace(spec, shape=spec.shape[1:])
    decoded = [json_tensors.array_from_json(row_spec, None, row) for row in rows]
    if len({row.shape for row in decoded}) > 1:
        raise InvalidInput(f"input '{spec.name}': data is not a rectangular array of numbers")
    return tensors.check_shape_of(spec, np.stack(decoded))


def encode_predict(result: Result, style: str) -> Response:
    named = {spec.name: array for spec, array in zip(result.outputs, result.arrays)}
    if style == COLUMNAR:
        if len(named) == 1:
            return json_response({"outputs": result.arrays[0].tolist()})
        return json_response({"outputs": {k: v.tolist() for k, v in named.items()}})
    if len(named) == 1:
        return json_response({"predictions": result.arrays[0].tolist()})
    batch = min(len(a) if a.ndim else 1 for a in result.arrays)
    return json_response({"predictions": [{k: v[i].tolist() for k, v in named.items()}
                                          for i in range(batch)]})


def _version_status(served: ServedVersion) -> dict:
    failed = served.state is State.FAILED
    # TF-Serving has no FAILED state: a version that could not load has ended with an error
    return {"version": served.label, "state": "END" if failed else served.state.value,
            "status": {"error_code": "UNKNOWN" if failed else "OK",
                       "error_message": served.reason if failed else ""}}


def _signature(specs) -> dict:
    return {s.name: {"dtype": s.datatype.tf_name, "name": s.name,
                     "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in s.shape],
                                      "unknown_rank": s.rank_is_dynamic}}
            for s in specs}


class TFServingRoutes:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def install(self, router: Router) -> None:
        router.add("GET", VERSIONED, self.status)
        router.add("GET", VERSIONED + r"/metadata", self.metadata)
        router.add("POST", VERSIONED + r":predict", self.predict)

    async def status(self, request: Request, model: str, version: str | None) -> Response:
        found = self.dataplane.repository.model(model)
        if version is not None:
            versions = [self.dataplane.repository.resolve_any(model, version)]
        else:
            versions = [v for _, v in sorted(found.versions.items(), reverse=True)]
        return json_response({"model_version_status": [_version_status(v) for v in versions]})

    async def metadata(self, request: Request, model: str, version: str | None) -> Response:
        served = self.dataplane.resolve(model, version)
        return json_response({
            "model_spec": {"name": model, "signature_name": "", "version": served.label},
            "metadata": {"signature_def": {"signature_def": {"serving_default": {
                "inputs": _signature(served.inputs), "outputs": _signature(served.outputs),
                "method_name": "tensorflow/serving/predict"}}}}})

    async def predict(self, request: Request, model: str, version: str | None) -> Response:
        style = ROW

        def decode(served: ServedVersion) -> Decoded:
            nonlocal style
            document = json_tensors.loads(request.body, json_tensors.TFSERVING_TENSORS)
            decoded, style = decode_predict(served, document)
            return decoded

        result = await self.dataplane.infer(model=model, version=version, protocol="tfserving",
                                            decode=decode,
                                            offload=json_tensors.is_large(len(request.body)))
        return encode_predict(result, style)
