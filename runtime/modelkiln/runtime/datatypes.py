"""The tensor datatypes the protocols name, and how each maps to numpy and OpenVINO.

One table, built at import: KServe v2 datatype names ("FP32"), numpy dtypes (little-endian, as
the binary extension and raw gRPC contents are), OpenVINO element types, TF-Serving's names for
model metadata, and which typed field of gRPC `InferTensorContents` carries each datatype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov


@dataclass(frozen=True)
class Datatype:
    name: str  # KServe v2 name, e.g. "FP32"
    dtype: np.dtype  # little-endian numpy dtype
    tf_name: str  # TF-Serving signature dtype, e.g. "DT_FLOAT"
    contents_field: str | None  # gRPC InferTensorContents field; None when only raw bytes carry it
    # numpy kinds a JSON array may arrive as and still be this datatype without losing anything
    json_kinds: str


_TABLE = [
    Datatype("BOOL", np.dtype("?"), "DT_BOOL", "bool_contents", "b"),
    Datatype("UINT8", np.dtype("<u1"), "DT_UINT8", "uint_contents", "ui"),
    Datatype("UINT16", np.dtype("<u2"), "DT_UINT16", "uint_contents", "ui"),
    Datatype("UINT32", np.dtype("<u4"), "DT_UINT32", "uint_contents", "ui"),
    Datatype("UINT64", np.dtype("<u8"), "DT_UINT64", "uint64_contents", "ui"),
    Datatype("INT8", np.dtype("<i1"), "DT_INT8", "int_contents", "ui"),
    Datatype("INT16", np.dtype("<i2"), "DT_INT16", "int_contents", "ui"),
    Datatype("INT32", np.dtype("<i4"), "DT_INT32", "int_contents", "ui"),
    Datatype("INT64", np.dtype("<i8"), "DT_INT64", "int64_contents", "ui"),
    Datatype("FP16", np.dtype("<f2"), "DT_HALF", None, "uif"),
    Datatype("FP32", np.dtype("<f4"), "DT_FLOAT", "fp32_contents", "uif"),
    Datatype("FP64", np.dtype("<f8"), "DT_DOUBLE", "fp64_contents", "uif"),
]

BY_NAME: dict[str, Datatype] = {d.name: d for d in _TABLE}
BY_DTYPE: dict[np.dtype, Datatype] = {d.dtype: d for d in _TABLE}


def from_openvino(element_type: ov.Type) -> Datatype:
    """The protocol datatype of an OpenVINO element type; raises ValueError when it has none."""
    try:
        return BY_DTYPE[np.dtype(element_type.to_dtype())]
    except (KeyError, RuntimeError, TypeError) as error:
        raise ValueError(f"element type {element_type} has no KServe v2 datatype") from error
