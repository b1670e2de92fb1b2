"""Does the artifact still answer like the source? Measured against an independent reference.

The reference is ONNX Runtime for ONNX sources, torch for PyTorch sources when it is
installed, and otherwise OpenVINO running the unmodified source model. Both sides run in
strict FP32 (`INFERENCE_PRECISION_HINT f32`): on CPUs with bf16, OpenVINO's default would blur
exactly the differences this check exists to measure. The numbers go into `modelkiln.json`;
`--max-accuracy-drop` and `--min-cosine` turn them into a gate.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable

import numpy as np
import openvino as ov

from modelkiln import extras
from modelkiln.runtime.conversion import preprocessing
from modelkiln.runtime.conversion.calibration import SampleSet
from modelkiln.runtime.conversion.errors import ConversionFailed
from modelkiln.runtime.conversion.formats import ModelFile
from modelkiln.runtime.similarity import cosine

STRICT_FP32 = {"INFERENCE_PRECISION_HINT": "f32"}
Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Reference:
    name: str
    run: Runner


def reference_for(model_file: ModelFile, *, source_model: ov.Model) -> Reference:
    """The most independent reference available for this source."""
    if model_file.format == "onnx":
        try:
            import onnxruntime
        except ImportError:
            # Still verified, against OpenVINO's own FP32 run of the source: say what it lacks.
            print(f"verification: the reference is OpenVINO's FP32 run of the source; "
                  f"{extras.needs('an independent one (onnxruntime)', 'verify')}", flush=True)
        else:
            session = onnxruntime.InferenceSession(str(model_file.path), providers=["CPUExecutionProvider"])
            return Reference("onnxruntime", lambda inputs: session.run(None, inputs))
    if model_file.format == "pytorch":
        try:
            import torch  # noqa: F401 - only asks whether the framework is here
        except ImportError:
            pass
        else:
            return torch_reference(model_file.path)
    return Reference("openvino-fp32-source", openvino_runner(source_model))


def torch_reference(path: pathlib.Path) -> Reference:
    import torch

    from modelkiln.runtime.conversion.formats import load_pytorch

    loaded = load_pytorch(path)
    module = loaded.module() if isinstance(loaded, torch.export.ExportedProgram) else loaded

    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            result = module(*(torch.from_numpy(array) for array in inputs.values()))
        flat = result if isinstance(result, (tuple, list)) else [result]
        return [tensor.numpy() for tensor in flat]

    return Reference("torch", run)


def openvino_runner(model: ov.Model | str) -> Runner:
    compiled = ov.Core().compile_model(model, "CPU", STRICT_FP32)
    return lambda inputs: [np.asarray(value) for value in compiled(inputs).values()]


def classifier_output(outputs: list[np.ndarray]) -> int | None:
    """Index of the first [batch, classes] float output, where top-1 means something."""
    for index, output in enumerate(outputs):
        if output.ndim == 2 and output.shape[1] > 1 and np.issubdtype(output.dtype, np.floating):
            return index
    return None


def verify(*, artifact: Runner, reference: Reference, samples: SampleSet,
           options: preprocessing.InputOptions) -> dict:
    """Run both on every sample and compare: max abs error, mean cosine, top-1, accuracy."""
    max_error, cosines, ours, theirs = 0.0, [], [], []
    for sample in samples.samples:
        got = artifact(sample)
        try:
            want = reference.run(preprocessing.apply_to_arrays(sample, options))
        except Exception as error:  # noqa: BLE001 - reference runtimes raise their own types
            lines = [line for line in str(error).strip().splitlines() if line.strip()]
            raise ConversionFailed(
                f"cannot verify: {reference.name} rejected the sample inputs "
                f"({', '.join(f'{k} {list(v.shape)}' for k, v in sample.items())}): {' '.join(lines[:3])}; "
                "pass --input-shape with the source's dimensions or --calibration data") from error
        if len(got) != len(want):
            raise ConversionFailed(f"the artifact has {len(got)} outputs, the source model {len(want)}")
        floats = [(np.asarray(g, np.float64), np.asarray(w, np.float64)) for g, w in zip(got, want)
                  if np.issubdtype(np.asarray(w).dtype, np.floating)]
        for g, w in floats:
            if g.shape != w.shape:
                raise ConversionFailed(f"an artifact output has shape {list(g.shape)}, the source's {list(w.shape)}")
            max_error = max(max_error, float(np.max(np.abs(g - w), initial=0.0)))
        if floats:
            cosines.append(cosine(np.concatenate([g.ravel() for g, _ in floats]),
                                  np.concatenate([w.ravel() for _, w in floats])))
        ours.append(got)
        theirs.append(want)
    result = {"reference": reference.name, "samples": samples.rows(), "maxAbsError": max_error,
              "cosine": float(np.mean(cosines)) if cosines else None, "top1Agreement": None}
    index = classifier_output(theirs[0]) if theirs else None
    if index is not None:
        top1_ours = np.concatenate([np.argmax(out[index], axis=-1) for out in ours])
        top1_theirs = np.concatenate([np.argmax(out[index], axis=-1) for out in theirs])
        result["top1Agreement"] = float(np.mean(top1_ours == top1_theirs))
        if samples.labels is not None:
            labels = samples.labels[:len(top1_ours)]
            result["accuracy"] = float(np.mean(top1_ours == labels))
            result["referenceAccuracy"] = float(np.mean(top1_theirs == labels))
            result["accuracyDrop"] = result["referenceAccuracy"] - result["accuracy"]
    return result


def check_gate(result: dict, *, max_accuracy_drop: float | None, min_cosine: float | None) -> None:
    """Fail with the measured numbers when the artifact is worse than allowed."""
    numbers = ", ".join(f"{key} {value:.6g}" for key, value in result.items()
                        if isinstance(value, float) and key != "samples")
    problems = gate_problems(result, max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine)
    if problems:
        raise ConversionFailed(f"accuracy gate failed: {'; '.join(problems)} "
                               f"(against {result['reference']} on {result['samples']} samples: {numbers})")


def gate_problems(result: dict, *, max_accuracy_drop: float | None, min_cosine: float | None) -> list[str]:
    """How `result` misses the gate, one phrase per bound (none when it passes)."""
    problems = []
    if min_cosine is not None and (result["cosine"] is None or result["cosine"] < min_cosine):
        problems.append(f"cosine {result['cosine']} < --min-cosine {min_cosine}")
    if max_accuracy_drop is not None:
        drop = accuracy_drop(result)
        if drop > max_accuracy_drop:
            problems.append(f"accuracy drop {drop:.6g} > --max-accuracy-drop {max_accuracy_drop}")
    return problems


def accuracy_drop(result: dict) -> float:
    """Labelled accuracy lost; without labels, the share of top-1 answers that changed (an upper bound)."""
    if "accuracyDrop" in result:
        return result["accuracyDrop"]
    if result["top1Agreement"] is None:
        raise ConversionFailed("--max-accuracy-drop needs a classifier-shaped output ([batch, classes]) "
                               "or calibration data with labels; use --min-cosine for this model")
    return 1.0 - result["top1Agreement"]
