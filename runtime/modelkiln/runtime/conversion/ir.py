"""Building the IR of a prepared model: INT8 quantization from the command's arguments, the
IR saved (weights compressed to FP16 or not), and the signature read back from it.

Shared by one-precision conversions (convert.py) and precision Auto's candidates (auto.py).
"""

from __future__ import annotations

import argparse
import errno
import os
import pathlib
import shutil

import openvino as ov

from modelkiln.redaction import redacted
from modelkiln.runtime.conversion import calibration
from modelkiln.runtime.conversion.calibration import SampleSet
from modelkiln.runtime.conversion.errors import ConversionFailed
from modelkiln.runtime.conversion.sources import FetchedSource

# OpenVINO's element types as KServe v2 names them.
DATATYPES = {ov.Type.f32: "FP32", ov.Type.f16: "FP16", ov.Type.f64: "FP64", ov.Type.i64: "INT64",
             ov.Type.i32: "INT32", ov.Type.i8: "INT8", ov.Type.u8: "UINT8", ov.Type.boolean: "BOOL",
             ov.Type.i16: "INT16", ov.Type.u16: "UINT16", ov.Type.bf16: "BF16", ov.Type.u32: "UINT32",
             ov.Type.u64: "UINT64"}

def quantize(args: argparse.Namespace, *, model: ov.Model, samples: SampleSet | None,
             calibration_data: FetchedSource | None) -> tuple[ov.Model, dict, SampleSet]:
    """INT8 model, its calibration record, and the samples to verify on (real ones when given)."""
    from modelkiln.runtime.conversion.quantization import quantize_int8   # NNCF: only for INT8

    if args.synthetic_calibration:
        calibration_set = calibration.synthetic_samples(model, count=args.calibration_samples)
        record = {"source": "synthetic", "samples": calibration_set.rows(), "synthetic": True}
    else:
        calibration_set = samples
        record = {"source": redacted(args.calibration), "sha256": calibration_data.sha256,
                  "samples": samples.rows(), "synthetic": False}
    print(f"quantizing to INT8 on {calibration_set.rows()} calibration samples", flush=True)
    keep_float = {kind: values for kind, values in (("types", args.keep_float_type), ("names", args.keep_float_name),
                                                    ("patterns", args.keep_float_pattern)) if values}
    model, how = quantize_int8(model, calibration=calibration_set, max_accuracy_drop=args.max_accuracy_drop,
                               keep_float=keep_float)
    return model, {**record, **how}, samples if samples is not None else calibration_set


def save_ir(model: ov.Model, *, xml: pathlib.Path, compress_to_fp16: bool) -> None:
    try:
        ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    except RuntimeError as error:
        # OpenVINO reports a full disk as a generic write error: make it say so.
        if shutil.disk_usage(xml.parent).free < (1 << 20):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(xml.parent)) from error
        raise ConversionFailed(f"cannot save the IR: {str(error).strip().splitlines()[-1]}") from error


def signatures(xml: pathlib.Path) -> dict:
    saved = ov.Core().read_model(str(xml))
    return {"inputs": signature(saved.inputs), "outputs": signature(saved.outputs)}


def signature(ports: list[ov.Output]) -> list[dict]:
    return [{"name": port.get_any_name(),
             "datatype": DATATYPES.get(port.get_element_type(), str(port.get_element_type())),
             "shape": [dim.get_length() if dim.is_static else -1 for dim in port.get_partial_shape()]}
            for port in ports]
