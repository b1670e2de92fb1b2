"""INT8 with some operations kept in floating point (`--keep-float-*`, NNCF's ignored scope)."""

from __future__ import annotations

import numpy as np
import openvino as ov
from onnx import TensorProto, helper, numpy_helper

from conftest import metadata, save_onnx, version_dirs


def mobile_block(path):
    """[-1,3,16,16] -> 1x1 Conv(8) -> ReLU -> depthwise 3x3 Conv -> ReLU -> 1x1 Conv(4) -> pool -> [-1,4]."""
    rng = np.random.default_rng(0)
    weights = {"expand": (8, 3, 1, 1), "depthwise": (8, 1, 3, 3), "project": (4, 8, 1, 1)}
    initializers = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
                    for name, shape in weights.items()]
    return save_onnx(
        path,
        nodes=[helper.make_node("Conv", ["image", "expand"], ["a"], name="expand_conv"),
               helper.make_node("Relu", ["a"], ["b"]),
               helper.make_node("Conv", ["b", "depthwise"], ["c"], group=8, pads=[1, 1, 1, 1],
                                name="depthwise_conv"),
               helper.make_node("Relu", ["c"], ["d"]),
               helper.make_node("Conv", ["d", "project"], ["e"], name="project_conv"),
               helper.make_node("GlobalAveragePool", ["e"], ["f"]),
               helper.make_node("Flatten", ["f"], ["scores"])],
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, [-1, 3, 16, 16])],
        outputs=[helper.make_tensor_value_info("scores", TensorProto.FLOAT, [-1, 4])],
        initializers=initializers)


def calibration(path):
    np.savez(path, image=np.random.default_rng(1).uniform(0, 1, size=(32, 3, 16, 16)).astype(np.float32))
    return path


def quantized_inputs(xml) -> dict[str, bool]:
    """For each convolution type in the IR: is its data input fake-quantized (runs in INT8)?"""
    found = {}
    for op in ov.Core().read_model(xml).get_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution"):
            producer = op.input_value(0).get_node().get_type_name()
            found.setdefault(op.get_type_name(), []).append(producer == "FakeQuantize")
    return {kind: all(flags) for kind, flags in found.items()}


def test_kept_types_stay_float_and_the_rest_is_quantized(convert, repo, tmp_path):
    source, data = mobile_block(tmp_path / "block.onnx"), calibration(tmp_path / "cal.npz")
    plain = convert("--source", source, "--output", repo / "plain", "--precision", "INT8", "--calibration", data)
    kept = convert("--source", source, "--output", repo / "kept", "--precision", "INT8", "--calibration", data,
                   "--keep-float-type", "GroupConvolution")

    assert quantized_inputs(repo / "plain" / "1" / "model.xml") == {"Convolution": True, "GroupConvolution": True}
    assert quantized_inputs(repo / "kept" / "1" / "model.xml") == {"Convolution": True, "GroupConvolution": False}
    assert metadata(kept.summary["path"])["calibration"]["keepFloat"] == {"types": ["GroupConvolution"]}
    assert "keepFloat" not in metadata(plain.summary["path"])["calibration"]
    assert kept.summary["artifactKey"] != plain.summary["artifactKey"]


def test_kept_names_and_patterns_stay_float(convert, repo, tmp_path):
    source, data = mobile_block(tmp_path / "block.onnx"), calibration(tmp_path / "cal.npz")
    result = convert("--source", source, "--output", repo / "m", "--precision", "INT8", "--calibration", data,
                     "--keep-float-pattern", "^depthwise.*", "--keep-float-name", "expand_conv")

    model = ov.Core().read_model(repo / "m" / "1" / "model.xml")
    fed_by_fake_quantize = {op.get_friendly_name(): op.input_value(0).get_node().get_type_name() == "FakeQuantize"
                            for op in model.get_ops() if op.get_type_name().endswith("Convolution")}
    assert fed_by_fake_quantize == {"expand_conv": False, "depthwise_conv": False, "project_conv": True}
    assert metadata(result.summary["path"])["calibration"]["keepFloat"] == {
        "names": ["expand_conv"], "patterns": ["^depthwise.*"]}


def test_keep_float_mistakes_fail_with_one_line_naming_them(convert, repo, tmp_path):
    source, data = mobile_block(tmp_path / "block.onnx"), calibration(tmp_path / "cal.npz")
    int8 = ("--source", source, "--output", repo / "m", "--precision", "INT8", "--calibration", data)

    unknown = convert(*int8, "--keep-float-type", "DepthwiseConvolution")
    assert unknown.returncode == 1
    assert unknown.cause.startswith("keep-float: ") and "['DepthwiseConvolution']" in unknown.cause
    assert "operation types in this model: " in unknown.cause and "GroupConvolution" in unknown.cause

    bad_regex = convert(*int8, "--keep-float-pattern", "([")
    assert bad_regex.cause.startswith("--keep-float-pattern '([' is not a valid regular expression")

    fp16 = convert("--source", source, "--output", repo / "m", "--precision", "FP16",
                   "--keep-float-type", "GroupConvolution")
    assert fp16.cause == "--keep-float-* only applies to precision INT8 or AUTO (got FP16)"
    assert version_dirs(repo / "m") == []
