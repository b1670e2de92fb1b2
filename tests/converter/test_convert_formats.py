"""Every source format converts, is detected from the file, and answers like its framework did."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from conftest import DIGITS, FIXTURES, conv_classifier, metadata, run_ir, save_onnx

# source path -> (detected format, outputs the framework itself computed on the same inputs)
FRAMEWORK_MODELS = {
    "tf_savedmodel": ("tensorflow", "tf_savedmodel.expected.npz"),
    "tf_frozen.pb": ("tensorflow", "tf_frozen.expected.npz"),
    "model.tflite": ("tflite", "tflite.expected.npz"),
    "paddle/model.pdmodel": ("paddle", "paddle.expected.npz"),
}


@pytest.mark.parametrize("source", list(FRAMEWORK_MODELS))
def test_framework_model_converts_and_matches_the_framework_outputs(convert, repo, source):
    expected_format, expected_file = FRAMEWORK_MODELS[source]
    result = convert("--source", FIXTURES / source, "--output", repo / "m", "--precision", "FP32")

    meta = metadata(result.summary["path"])
    assert meta["source"]["format"] == expected_format
    assert meta["inputs"][0]["shape"] == [-1, 8]
    expected = np.load(FIXTURES / expected_file)
    got = run_ir(repo / "m" / "1" / "model.xml", {meta["inputs"][0]["name"]: expected["input"]})[0]
    np.testing.assert_allclose(got, expected["output"], atol=1e-5)


def test_paddle_directory_source_finds_its_model_file(convert, repo):
    result = convert("--source", FIXTURES / "paddle", "--output", repo / "m", "--precision", "FP16")
    assert metadata(result.summary["path"])["source"]["format"] == "paddle"


def test_declared_format_that_contradicts_the_file_is_refused(convert, repo):
    result = convert("--source", FIXTURES / "model.tflite", "--output", repo / "m", "--precision", "FP32",
                     "--format", "onnx")
    assert result.cause == "--format onnx does not match the source model.tflite, which looks like tflite"
    assert result.returncode == 1


def test_unknown_file_names_the_formats_expected(convert, repo, tmp_path):
    source = tmp_path / "weights.dat"
    source.write_bytes(b"\x01\x02 not a model")
    result = convert("--source", source, "--output", repo / "m", "--precision", "FP32")
    assert "cannot tell the format of weights.dat" in result.cause
    assert "onnx, tensorflow, tflite, paddle, pytorch, ir" in result.cause


def test_input_shape_fixes_a_dynamic_dimension(convert, repo):
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "m", "--precision", "FP32",
                     "--input-shape", "input=4,64")
    assert metadata(result.summary["path"])["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [4, 64]}]


def test_dynamic_dimensions_with_question_mark_and_unnamed_single_input(convert, repo, tmp_path):
    source = conv_classifier(tmp_path / "conv.onnx")
    result = convert("--source", source, "--output", repo / "m", "--precision", "FP32",
                     "--input-shape", "?,3,-1,16")
    assert metadata(result.summary["path"])["inputs"][0]["shape"] == [-1, 3, -1, 16]


def test_input_shape_for_a_missing_input_names_the_real_ones(convert, repo):
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "m", "--precision", "FP32",
                     "--input-shape", "pixels=1,64")
    assert result.cause == "--input-shape: the model has no input 'pixels'; its inputs are input"


def test_embedded_preprocessing_takes_raw_bgr_pixels(convert, repo, tmp_path):
    """Mean, scale and channel reversal live in the IR: raw BGR input gives the source's answer on
    normalized RGB input (computed here with ONNX Runtime, independently of the converter)."""
    import onnxruntime

    source = conv_classifier(tmp_path / "conv.onnx")
    mean, scale = [120.0, 110.0, 100.0], [60.0, 50.0, 40.0]
    result = convert("--source", source, "--output", repo / "m", "--precision", "FP32",
                     "--layout", "image=NCHW", "--mean", "image=" + ",".join(map(str, mean)),
                     "--scale", "image=" + ",".join(map(str, scale)), "--reverse-channels")

    meta = metadata(result.summary["path"])
    assert meta["preprocessing"]["reverseChannels"] is True and meta["preprocessing"]["mean"] == {"image": mean}
    assert meta["verification"]["maxAbsError"] < 1e-4
    raw_bgr = np.random.default_rng(3).uniform(0, 255, size=(5, 3, 8, 8)).astype(np.float32)
    rgb = raw_bgr[:, ::-1]
    normalized = (rgb - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(scale, (1, 3, 1, 1))
    want = onnxruntime.InferenceSession(str(source)).run(None, {"image": normalized.astype(np.float32)})[0]
    got = run_ir(repo / "m" / "1" / "model.xml", {"image": raw_bgr})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_per_channel_mean_without_layout_asks_for_it(convert, repo, tmp_path):
    source = conv_classifier(tmp_path / "conv.onnx")
    result = convert("--source", source, "--output", repo / "m", "--precision", "FP32", "--mean", "1,2,3")
    assert result.cause == ("per-channel preprocessing of input 'image' needs its layout: "
                            "pass --layout image=NCHW (or NHWC)")


def test_multi_input_model_needs_names_in_options(convert, repo, tmp_path):
    source = save_onnx(
        tmp_path / "add.onnx", nodes=[helper.make_node("Add", ["a", "b"], ["sum"])],
        inputs=[helper.make_tensor_value_info(n, TensorProto.FLOAT, [-1, 4]) for n in ("a", "b")],
        outputs=[helper.make_tensor_value_info("sum", TensorProto.FLOAT, [-1, 4])])
    result = convert("--source", source, "--output", repo / "m", "--precision", "FP32", "--input-shape", "1,4")
    assert result.cause == "--input-shape needs NAME= because the model has 2 inputs: a, b"
