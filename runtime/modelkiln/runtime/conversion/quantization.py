"""INT8 post-training quantization with NNCF, accuracy-controlled when labels are at hand.

Plain `nncf.quantize` uses the calibration samples to pick quantization ranges. Transformers
are quantized with NNCF's transformer scheme (no quantizers where attention and layer norms
break with INT8): with the default scheme a MiniLM encoder's INT8 embeddings had cosine 0.17
with FP32. They are recognised by their attention: a MatMul of two activations and a Softmax.

`keep_float` (nncf.IgnoredScope's names, patterns and types) leaves operations in floating
point: the user's lever when a few layers lose too much in INT8. On EfficientNet-Lite0 here,
keeping the depthwise convolutions (GroupConvolution) in float raised INT8-vs-FP32 top-1
agreement on 300 held-out photo crops from 94.7% to 97.0%, for 5% less throughput.

When the calibration data carries labels and a `--max-accuracy-drop` is set, NNCF's
accuracy-aware variant measures top-1 accuracy and keeps the layers that cost most accuracy in
floating point until the drop is within bounds.

CPUs without VNNI (AVX2 and plain AVX-512) multiply u8 by s8 into 16-bit sums that saturate
(NNCF's "overflow issue"). NNCF's default fixes only the first layer; on such a CPU every layer
gets the fix (7-bit weights): EfficientNet-Lite0's INT8-vs-ONNX cosine on an AMD EPYC with AVX2
went from 0.912 (failing the 0.97 gate) to 0.993. With VNNI or AMX nothing saturates and the
fix would only cost precision, so it is left off.
"""

from __future__ import annotations

import pathlib

import numpy as np
import openvino as ov

from modelkiln import extras
from modelkiln.runtime.conversion.calibration import SampleSet
from modelkiln.runtime.conversion.errors import ConversionFailed
from modelkiln.runtime.conversion.verification import classifier_output


def quantize_int8(model: ov.Model, *, calibration: SampleSet, max_accuracy_drop: float | None,
                  keep_float: dict[str, list[str]] | None = None) -> tuple[ov.Model, dict]:
    """The quantized model, and how it was quantized (for modelkiln.json)."""
    try:
        import nncf
    except ImportError as error:
        raise ConversionFailed(extras.needs("INT8 quantization", "int8")) from error

    dataset = nncf.Dataset(calibration.samples)
    subset = len(calibration.samples)
    transformer = is_transformer(model)
    # Measured with bench/precision.py: full bias correction raised EfficientNet-Lite0's INT8-vs-FP32
    # top-1 agreement on held-out photos from 81% to 90%, but lowered MiniLM's embedding cosine
    # from 0.997 to 0.977, so transformers keep NNCF's fast one.
    scheme = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {"fast_bias_correction": False}
    overflow_fix = nncf.OverflowFix.DISABLE if cpu_has_vnni() else nncf.OverflowFix.ENABLE
    advanced = nncf.AdvancedQuantizationParameters(overflow_fix=overflow_fix)
    record = {"modelType": "transformer" if transformer else "default", "accuracyControl": False,
              "overflowFix": overflow_fix.value}
    if keep_float:
        scheme["ignored_scope"] = nncf.IgnoredScope(**keep_float)
        record["keepFloat"] = keep_float
    try:
        if calibration.labels is None or max_accuracy_drop is None:
            return nncf.quantize(model, dataset, subset_size=subset, advanced_parameters=advanced, **scheme), record
        validation = nncf.Dataset(list(zip(calibration.samples, label_batches(calibration))), lambda item: item[0])
        quantized = nncf.quantize_with_accuracy_control(
            model, calibration_dataset=dataset, validation_dataset=validation,
            validation_fn=top1_accuracy, max_drop=max_accuracy_drop, drop_type=nncf.DropType.ABSOLUTE,
            subset_size=subset, advanced_quantization_parameters=advanced, **scheme)
        return quantized, {**record, "accuracyControl": True}
    except (ValueError, RuntimeError, nncf.ValidationError) as error:
        cause = str(error).strip().splitlines()[-1]
        if keep_float and isinstance(error, nncf.ValidationError):
            raise ConversionFailed(f"keep-float: {cause} (operation types in this model: "
                                   f"{', '.join(op_types(model))})") from error
        raise ConversionFailed(f"INT8 quantization failed: {cause}") from error


def cpu_has_vnni(cpuinfo: pathlib.Path = pathlib.Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has 8-bit dot products that do not saturate (AVX-VNNI, AVX512-VNNI, AMX)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False        # unknown: the fix is safe everywhere, only slightly less precise
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return not {"avx_vnni", "avx512_vnni", "amx_int8"}.isdisjoint(flags)


def op_types(model: ov.Model) -> list[str]:
    ignorable = {"Parameter", "Result", "Constant"}
    return sorted({op.get_type_name() for op in model.get_ops()} - ignorable)


def is_transformer(model: ov.Model) -> bool:
    ops = model.get_ops()
    if any(op.get_type_name() == "ScaledDotProductAttention" for op in ops):
        return True
    return any(op.get_type_name() == "MatMul" and not any(is_constant(op.input_value(i).get_node()) for i in (0, 1))
               for op in ops) and any(op.get_type_name() == "Softmax" for op in ops)


def is_constant(node) -> bool:
    # Weights may reach a MatMul through a Convert (decompression) or a Reshape of a Constant.
    while node.get_type_name() in ("Convert", "Reshape", "Transpose") and node.get_input_size():
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def label_batches(calibration: SampleSet) -> list[np.ndarray]:
    batches, start = [], 0
    for sample in calibration.samples:
        rows = len(next(iter(sample.values())))
        batches.append(calibration.labels[start:start + rows])
        start += rows
    return batches


def top1_accuracy(compiled: ov.CompiledModel, validation_data) -> float:
    hits = total = 0
    for inputs, labels in validation_data:
        outputs = [np.asarray(value) for value in compiled(inputs).values()]
        index = classifier_output(outputs)
        if index is None:
            raise ConversionFailed("accuracy-controlled quantization needs a [batch, classes] output")
        hits += int(np.sum(np.argmax(outputs[index], axis=-1) == labels))
        total += len(labels)
    return hits / max(total, 1)
