"""INT8 calibration from a directory of images, read with the model's declared layout and size."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from conftest import DIGITS, conv_classifier, metadata, save_onnx


@pytest.fixture
def image_directory(tmp_path):
    """Twelve small RGB pictures of different sizes (smooth gradients plus noise), as files on disk."""
    directory = tmp_path / "photos"
    (directory / "nested").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for index in range(12):
        height, width = 20 + index, 30 - index
        gradient = np.linspace(0, 255, width)[None, :, None] * rng.uniform(0.3, 1.0, size=(1, 1, 3))
        pixels = np.clip(gradient + rng.normal(0, 20, size=(height, width, 3)), 0, 255).astype(np.uint8)
        folder = directory / "nested" if index % 2 else directory
        Image.fromarray(pixels).save(folder / f"photo-{index}.{'png' if index % 3 else 'jpg'}")
    (directory / "notes.txt").write_text("not an image")
    return directory


def test_image_directory_calibrates_an_image_model(convert, repo, tmp_path, image_directory):
    source = conv_classifier(tmp_path / "conv.onnx")
    result = convert("--source", source, "--output", repo / "conv", "--precision", "INT8",
                     "--input-shape", "1,3,16,16", "--layout", "NCHW",
                     "--mean", "127,127,127", "--scale", "64,64,64", "--calibration", image_directory)

    meta = metadata(result.summary["path"])
    assert meta["calibration"]["samples"] == 12 and meta["calibration"]["synthetic"] is False
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [1, 3, 16, 16]}]
    assert meta["verification"]["samples"] == 12
    assert meta["verification"]["cosine"] > 0.99


def test_image_directory_for_a_non_image_model_is_refused(convert, repo, image_directory):
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "m", "--precision", "INT8",
                     "--calibration", image_directory)
    assert result.cause == ("calibration images need an image input (N,3,H,W or N,H,W,3); input 'input' "
                            "is float32 [?,64]: pass --layout input=NCHW or NHWC")


def test_images_need_a_static_size(convert, repo, tmp_path, image_directory):
    source = conv_classifier(tmp_path / "conv.onnx")
    result = convert("--source", source, "--output", repo / "m", "--precision", "INT8", "--layout", "NCHW",
                     "--calibration", image_directory)
    assert result.cause == ("calibration images need a static height and width for input 'image' "
                            "(float32 [?,3,?,?]): pass --input-shape")


def test_attention_model_is_quantized_with_the_transformer_scheme(convert, repo, tmp_path):
    """Self-attention (a MatMul of two activations into a Softmax) gets NNCF's transformer scheme."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), n) for n in ("wq", "wk", "wv")]
    source = save_onnx(
        tmp_path / "attention.onnx",
        nodes=[helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
               helper.make_node("MatMul", ["x", "wv"], ["v"]),
               helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
               helper.make_node("MatMul", ["q", "kt"], ["scores"]),
               helper.make_node("Softmax", ["scores"], ["weights"], axis=-1),
               helper.make_node("MatMul", ["weights", "v"], ["y"])],
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 8, 16])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 8, 16])],
        initializers=weights)
    result = convert("--source", source, "--output", repo / "attention", "--precision", "INT8",
                     "--synthetic-calibration", "--calibration-samples", "20")
    assert metadata(result.summary["path"])["calibration"]["modelType"] == "transformer"
