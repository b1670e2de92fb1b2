"""Shows why INT8 needs real calibration data: photo-calibrated INT8 answers like FP32, noise-calibrated does not.

FP32 reference: ONNX Runtime on model.onnx. INT8: OpenVINO IR quantized by NNCF, once with
calibration.npz (crops of photos that are not held out) and once with Gaussian noise of the same
count and shape. Both are compared with FP32 on the held-out photos and on crops and mirror images
of them (so that one disagreement is not 20 points), with OpenVINO's inference precision pinned to
f32 so that only quantization differs.

Run (in the project's venv, plus pillow): python check_calibration.py [--variants 20]
"""

import argparse

import nncf
import numpy as np
import onnxruntime
import openvino as ov
from PIL import Image

from preprocess import HERE, IMAGE_SIZE, load_labels, load_photos, to_input

MODEL_PATH = HERE / "model.onnx"
CALIBRATION_PATH = HERE / "calibration.npz"


def variants(photo: Image.Image, *, count: int, rng: np.random.Generator) -> list[Image.Image]:
    """The photo itself plus `count` crops of 50-100% of its side, every other one mirrored."""
    result = [photo]
    for i in range(count):
        side = round(IMAGE_SIZE * rng.uniform(0.5, 1.0))
        left, top = rng.integers(0, IMAGE_SIZE - side + 1, size=2)
        crop = photo.crop((left, top, left + side, top + side))
        crop = crop.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
        result.append(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else crop)
    return result


def quantize(calibration: np.ndarray) -> ov.CompiledModel:
    model = ov.convert_model(str(MODEL_PATH))
    dataset = nncf.Dataset(list(calibration[:, None]))
    quantized = nncf.quantize(model, dataset, subset_size=len(calibration))
    return ov.Core().compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def infer(compiled: ov.CompiledModel, inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([compiled(sample[None])[0] for sample in inputs])


def top5(logits: np.ndarray) -> np.ndarray:
    return np.argsort(logits, axis=1)[:, -5:]


def agreement(reference: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, mean cosine similarity of the logits)."""
    top1 = float((reference.argmax(1) == logits.argmax(1)).mean())
    cosine = np.sum(reference * logits, 1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(logits, axis=1)
    )
    return top1, float(cosine.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=20, help="crops per held-out photo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    names, photos = load_photos()
    held_out = to_input([v for photo in photos for v in variants(photo, count=args.variants, rng=rng)])
    originals = slice(None, None, args.variants + 1)
    session = onnxruntime.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, {"input": held_out})

    labels = load_labels()
    for name, logits in zip(names, reference[originals]):
        print(f"FP32 {name}: {labels[int(logits.argmax())]}")

    calibration = np.load(CALIBRATION_PATH)["input"]
    noise = rng.standard_normal(calibration.shape, dtype=np.float32)
    for kind, data in (("photo", calibration), ("noise", noise)):
        logits = infer(quantize(data), held_out)
        top1, cosine = agreement(reference, logits)
        in_top5 = float(np.mean([r in row for r, row in zip(reference.argmax(1), top5(logits))]))
        print(
            f"INT8 {kind}-calibrated ({len(data)} samples) vs FP32 on {len(held_out)} held-out "
            f"images: top-1 agreement {top1:.1%}, FP32 top-1 in INT8 top-5 {in_top5:.1%}, "
            f"cosine {cosine:.3f}"
        )
        for name, row in zip(names, logits[originals]):
            print(f"  INT8 {kind}-calibrated {name}: {labels[int(row.argmax())]}")


if __name__ == "__main__":
    main()
