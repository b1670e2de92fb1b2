"""Wire values to validated numpy arrays, with the messages every protocol shares.

Each adapter (KServe REST, gRPC, TF-Serving, SageMaker) hands the raw pieces of an input here:
its name, the datatype it claims, its shape and its data (JSON values or raw bytes). What comes
back is an array of exactly the model's dtype and a shape the model accepts, keyed by input
index, or an `InvalidInput` naming the input, what it expected and what it got. Nothing is ever
cast silently: FP64 data for an FP32 input is an error, not a conversion.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from modelkiln.runtime import datatypes
from modelkiln.runtime.engine import TensorSpec
from modelkiln.runtime.errors import InvalidInput
from modelkiln.runtime.serving.repository import ServedVersion


def describe_shape(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def describe_spec(spec: TensorSpec) -> str:
    shape = "[...]" if spec.rank_is_dynamic else describe_shape(spec.shape)
    return f"{spec.datatype.name} {shape}"


def expected_inputs(served: ServedVersion) -> str:
    return ", ".join(f"'{s.name}' {describe_spec(s)}" for s in served.inputs)


def input_spec(served: ServedVersion, name: Any, datatype: Any | None) -> TensorSpec:
    """The model input a wire input names, checking the datatype it claims (None: unstated)."""
    spec = served.inputs_by_name.get(name) if isinstance(name, str) else None
    if spec is None:
        raise InvalidInput(f"unknown input {name!r:.80} for model '{served.model}'; "
                           f"expected inputs: {expected_inputs(served)}")
    if datatype is not None and datatype != spec.datatype.name:
        raise InvalidInput(f"input '{spec.name}': expected datatype {spec.datatype.name}, "
                           f"got {datatype!r:.20} (data is not converted; send "
                           f"{spec.datatype.name})")
    return spec


def check_shape(spec: TensorSpec, shape: Any) -> tuple[int, ...]:
    """The request's shape as a tuple, if it is one the model accepts."""
    if (not isinstance(shape, (list, tuple))
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise InvalidInput(f"input '{spec.name}': shape must be a list of non-negative "
                           f"integers, got {shape!r:.80}")
    shape = tuple(shape)
    if spec.rank_is_dynamic:
        return shape
    if len(shape) != len(spec.shape) or any(
            want != -1 and want != got for want, got in zip(spec.shape, shape)):
        raise InvalidInput(f"input '{spec.name}': expected shape {describe_shape(spec.shape)}, "
                           f"got {describe_shape(shape)}")
    return shape


def _element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def array_from_bytes(spec: TensorSpec, shape: tuple[int, ...], buffer) -> np.ndarray:
    """A read-only view of raw little-endian bytes (binary extension, gRPC raw contents)."""
    dtype = spec.datatype.dtype
    count = _element_count(shape)
    if len(buffer) != count * dtype.itemsize:
        raise InvalidInput(f"input '{spec.name}': shape {describe_shape(shape)} of "
                           f"{spec.datatype.name} needs {count * dtype.itemsize} bytes, "
                           f"got {len(buffer)}")
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def array_from_values(spec: TensorSpec, shape: tuple[int, ...] | None, values: Any, *,
                      from_json: bool = False) -> np.ndarray:
    """An array from JSON numbers (flat or nested) or a typed gRPC field.

    With `shape` None the values' own nesting is the shape (TF-Serving has no shape field);
    JSON values (`from_json`) nested must be nested exactly as `shape`.
    """
    try:
        array = np.asarray(values)
    except ValueError:
        raise InvalidInput(f"input '{spec.name}': data is not a rectangular array of "
                           f"numbers") from None
    datatype = spec.datatype
    if array.dtype.kind not in datatype.json_kinds:
        got = kind_name(array)
        raise InvalidInput(f"input '{spec.name}': expected {datatype.name} data, got {got}")
    if shape is None:
        return check_shape_of(spec, cast_checked(spec, array))
    if from_json and array.ndim > 1:
        check_nesting(spec, shape, array.shape)
    count = _element_count(shape)
    if array.size != count:
        raise InvalidInput(f"input '{spec.name}': shape {describe_shape(shape)} needs "
                           f"{count} elements, got {array.size}")
    return cast_checked(spec, array).reshape(shape)


def check_nesting(spec: TensorSpec, shape: tuple[int, ...], nesting: tuple[int, ...]) -> None:
    """Nested data (KServe JSON) must be nested exactly as its declared shape."""
    if len(nesting) != len(shape):
        raise InvalidInput(f"input '{spec.name}': data is nested {len(nesting)} levels deep, "
                           f"shape {describe_shape(shape)} has {len(shape)}")
    if tuple(nesting) != tuple(shape):
        raise InvalidInput(f"input '{spec.name}': data is nested as {describe_shape(nesting)}, "
                           f"not as its shape {describe_shape(shape)}; send it flat or nested "
                           f"as the shape")


def out_of_range(spec: TensorSpec) -> InvalidInput:
    """The error for a value the datatype cannot hold."""
    target = spec.datatype.dtype
    if target.kind == "f":
        limit = float(np.finfo(target).max)
        bounds = f"[{-limit:g}, {limit:g}]"
    else:
        info = np.iinfo(target)
        bounds = f"[{info.min}, {info.max}]"
    return InvalidInput(f"input '{spec.name}': values out of range for {spec.datatype.name} "
                        f"{bounds}")


def cast_checked(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """`array` as the model's dtype, refusing values the dtype cannot hold (never wrapped or inf)."""
    target = spec.datatype.dtype
    if array.dtype.kind in "ui" and target.kind in "ui" and array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise out_of_range(spec)
    with np.errstate(over="ignore"):  # an overflow is refused just below, not warned about
        converted = array.astype(target, copy=False)
    # A finite value that became inf is too large for the dtype (1e39 in FP32, 70000 in FP16);
    # an inf sent as one (gRPC float contents) is left as it is.
    if (target.kind == "f" and converted is not array and np.isinf(converted).any()
            and (np.isinf(converted) & ~np.isinf(array)).any()):
        raise out_of_range(spec)
    return converted


def check_shape_of(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """An array whose shape comes from its data (TF-Serving, .npy), checked against the model."""
    check_shape(spec, list(array.shape))
    return array


def array_of_dtype(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """A whole array received as is (a .npy body): its dtype must be the model's."""
    if array.dtype != spec.datatype.dtype:
        got = datatypes.BY_DTYPE.get(array.dtype)
        raise InvalidInput(f"input '{spec.name}': expected {describe_spec(spec)}, got "
                           f"{got.name if got else array.dtype} "
                           f"{describe_shape(array.shape)}")
    return np.ascontiguousarray(check_shape_of(spec, array), dtype=spec.datatype.dtype)


def kind_name(array: np.ndarray) -> str:
    return {"f": "floating-point numbers", "i": "integers", "u": "integers", "b": "booleans",
            "U": "strings", "S": "bytes", "O": "non-numeric values"}.get(array.dtype.kind,
                                                                         str(array.dtype))


def check_complete(served: ServedVersion, arrays: dict[int, np.ndarray]) -> None:
    if len(arrays) != len(served.inputs):
        missing = [s.name for s in served.inputs if s.index not in arrays]
        raise InvalidInput(f"missing input(s) {', '.join(repr(m) for m in missing)} for model "
                           f"'{served.model}'; expected inputs: {expected_inputs(served)}")


def add_input(arrays: dict[int, np.ndarray], spec: TensorSpec, array: np.ndarray) -> None:
    if spec.index in arrays:
        raise InvalidInput(f"input '{spec.name}' is given more than once")
    arrays[spec.index] = array


def output_specs(served: ServedVersion, names: Iterable[Any] | None) -> list[TensorSpec]:
    """The outputs a request asked for, in its order; all of them when it named none."""
    if names is None:
        return served.outputs
    specs = []
    for name in names:
        spec = served.outputs_by_name.get(name) if isinstance(name, str) else None
        if spec is None:
            raise InvalidInput(f"unknown output {name!r:.80} for model '{served.model}'; "
                               f"expected outputs: "
                               f"{', '.join(repr(s.name) for s in served.outputs)}")
        specs.append(spec)
    return specs or served.outputs
