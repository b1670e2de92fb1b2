"""Train the digits example: a small classifier on scikit-learn's bundled 8x8 digits (no download).

Writes next to this script:
  model.onnx       an MLP as a plain ONNX graph: input `input` FP32 [-1, 64] (raw pixel values
                   0..16), outputs `probabilities` FP32 [-1, 10] and `label` INT64 [-1]
  calibration.npz  training inputs under the input name, for INT8 calibration
  samples.npz      the held-out split: `input` and true `labels`

The MLP is written with onnx.helper rather than skl2onnx so the graph uses only core ONNX
operators (no ai.onnx.ml domain), which every runtime and OpenVINO read.

    python examples/digits/train.py
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = pathlib.Path(__file__).resolve().parent
PIXEL_MAX = 16.0    # digits pixels are 0..16; the graph scales them itself


def build_onnx(classifier: MLPClassifier) -> onnx.ModelProto:
    (w1, w2), (b1, b2) = classifier.coefs_, classifier.intercepts_
    initializers = [numpy_helper.from_array(np.asarray(value, np.float32), name) for name, value in
                    (("scale", 1.0 / PIXEL_MAX), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    nodes = [
        helper.make_node("Mul", ["input", "scale"], ["scaled"]),
        helper.make_node("Gemm", ["scaled", "w1", "b1"], ["hidden_linear"]),
        helper.make_node("Relu", ["hidden_linear"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=-1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [-1, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [-1, 10]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [-1])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelkiln-digits")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    classifier = MLPClassifier(hidden_layer_sizes=(32,), max_iter=600, random_state=0)
    classifier.fit(x_train / PIXEL_MAX, y_train)
    onnx.save(build_onnx(classifier), HERE / "model.onnx")
    np.savez_compressed(HERE / "calibration.npz", input=x_train[:300])
    np.savez_compressed(HERE / "samples.npz", input=x_test, labels=y_test)
    print(f"held-out accuracy {classifier.score(x_test / PIXEL_MAX, y_test):.4f} on {len(y_test)} samples")


if __name__ == "__main__":
    main()
