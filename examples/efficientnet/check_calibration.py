"""Shows, through the real converter, why INT8 needs real calibration data.

Converts model.onnx to INT8 with `modelkiln convert`, using the arguments the operator builds
from int8.yaml, three times: calibrated on calibration.npz (crops of photos that are not held
out), on random-noise images (uniform pixels, same count), and with `--synthetic-calibration`
(the converter's own random inputs). Each artifact is then compared with FP32 (ONNX Runtime on
model.onnx) on the held-out photos and on crops and mirror images of them (so that one
disagreement is not 17 points), with OpenVINO's inference precision pinned to f32 so that only
quantization differs. The int8.yaml cosine gate is left out here so that every artifact exists
to be measured; the converter's own verification cosine is printed against it.

Run (in the project's venv, which has modelkiln, openvino, nncf, onnxruntime and pillow):
    python check_calibration.py [--variants 20]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import openvino as ov
import yaml
from PIL import Image

from modelkiln.operator.commands import convert_args
from preprocess import HERE, IMAGE_SIZE, load_labels, load_photos, normalize, to_pixels

MODEL_PATH = HERE / "model.onnx"
SPEC_PATH = HERE / "int8.yaml"
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


def convert(spec: dict, *, calibration: Path | None, output: Path) -> dict:
    """Runs `modelkiln convert` for `spec` (synthetic calibration when `calibration` is None)."""
    spec = json.loads(json.dumps(spec))
    conversion = spec["conversion"]
    conversion.pop("minCosine", None)
    samples = conversion["calibration"]["samples"]
    conversion["calibration"] = (
        {"uri": calibration.as_uri(), "samples": samples} if calibration
        else {"synthetic": True, "samples": samples}
    )
    args = convert_args(spec=spec, output=str(output), artifact_key=output.name,
                        source_uri=MODEL_PATH.as_uri())
    command = [str(Path(sys.executable).with_name("modelkiln")), "convert", *args,
               "--termination-log", str(output.parent / f"{output.name}.log")]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"modelkiln convert failed: {result.stderr.strip().splitlines()[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def infer(xml: Path, pixels: np.ndarray) -> np.ndarray:
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.concatenate([compiled(sample[None])[0] for sample in pixels])


def compare(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    top5 = np.argsort(logits, axis=1)[:, -5:]
    cosine = np.sum(reference * logits, 1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(logits, axis=1)
    )
    return {
        "top1": float((reference.argmax(1) == logits.argmax(1)).mean()),
        "inTop5": float(np.mean([r in row for r, row in zip(reference.argmax(1), top5)])),
        "cosine": float(cosine.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=20, help="crops per held-out photo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    names, photos = load_photos()
    pixels = to_pixels([v for photo in photos for v in variants(photo, count=args.variants, rng=rng)])
    originals = slice(None, None, args.variants + 1)
    session = onnxruntime.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, {"input": normalize(pixels)})
    labels = load_labels()

    spec = yaml.safe_load(SPEC_PATH.read_text())["spec"]
    gate = spec["conversion"]["minCosine"]
    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch)
        noise_path = repository / "noise.npz"
        calibration_shape = np.load(CALIBRATION_PATH)["input"].shape
        np.savez(noise_path, input=rng.uniform(0, 255, calibration_shape).astype(np.float32))
        print("FP32 on the photos: " + ", ".join(
            f"{name} {labels[int(row.argmax())]!r}" for name, row in zip(names, reference[originals])))
        for kind, calibration in (("photos", CALIBRATION_PATH), ("noise images", noise_path),
                                  ("--synthetic-calibration", None)):
            summary = convert(spec, calibration=calibration, output=repository / kind.strip("-"))
            logits = infer(Path(summary["path"]) / "model.xml", pixels)
            held_out = compare(reference, logits)
            verification = summary["verification"]
            print(
                f"INT8 calibrated on {kind}: vs FP32 on {len(pixels)} held-out images, top-1 "
                f"agreement {held_out['top1']:.1%}, FP32 top-1 in INT8 top-5 "
                f"{held_out['inTop5']:.1%}, cosine {held_out['cosine']:.3f}; converter's "
                f"verification cosine {verification['cosine']:.3f} "
                f"({'passes' if verification['cosine'] >= gate else 'fails'} minCosine {gate}); "
                f"on the photos: " + ", ".join(
                    f"{name} {labels[int(row.argmax())]!r}"
                    for name, row in zip(names, logits[originals]))
            )


if __name__ == "__main__":
    main()
