"""Which framework a model file comes from, and reading it into an OpenVINO model.

The format is detected from what is on disk (magic bytes, archive members, directory
contents) and can be forced with `--format`. Reading validates the file first where a cheap
check exists (ONNX protobuf), so a corrupt or truncated download fails with a clear cause
instead of a frontend's stack trace, and unconverted operations are reported by name.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import zipfile

import openvino as ov

from modelkiln import extras
from modelkiln.runtime.conversion.errors import ConversionFailed

FORMATS = ("onnx", "tensorflow", "tflite", "paddle", "pytorch", "ir")
EXTENSIONS = {".onnx": "onnx", ".pb": "tensorflow", ".tflite": "tflite", ".pdmodel": "paddle",
              ".pt": "pytorch", ".pth": "pytorch", ".pt2": "pytorch", ".xml": "ir"}
UNCONVERTED = re.compile(r"No conversion rule found for operations?: (.+)")


@dataclasses.dataclass(frozen=True)
class ModelFile:
    format: str
    path: pathlib.Path      # the file to give the frontend (e.g. model.xml inside an IR directory)


def detect_format(path: pathlib.Path, *, declared: str | None = None) -> ModelFile:
    """Find the model file and its format; `declared` (from --format) wins over detection."""
    model_path = find_model_file(path)
    found = sniff_format(model_path)
    if declared and found and declared != found:
        raise ConversionFailed(f"--format {declared} does not match the source {path.name}, "
                               f"which looks like {found}")
    if not (declared or found):
        raise ConversionFailed(f"cannot tell the format of {path.name}; expected one of: "
                               f"{', '.join(FORMATS)} (pass --format)")
    return ModelFile(format=declared or found, path=model_path)


def find_model_file(path: pathlib.Path) -> pathlib.Path:
    if not path.is_dir():
        return path
    if (path / "saved_model.pb").exists():
        return path
    for pattern in ("*.xml", "*.pdmodel", "*.onnx", "*.tflite", "*.pt2", "*.pt", "*.pb"):
        if matches := sorted(path.glob(pattern)):
            return matches[0]
    raise ConversionFailed(f"no model found in directory {path}: expected a TensorFlow SavedModel "
                           "(saved_model.pb) or a .xml, .pdmodel, .onnx, .tflite, .pt2, .pt or .pb file")


def sniff_format(path: pathlib.Path) -> str | None:
    if path.is_dir():
        return "tensorflow"
    with path.open("rb") as stream:
        head = stream.read(8)
    if head[4:8] == b"TFL3":
        return "tflite"
    if zipfile.is_zipfile(path):
        return "pytorch" if is_pytorch_archive(path) else None
    if head.lstrip().startswith(b"<?xml") or head.lstrip().startswith(b"<net"):
        return "ir"
    return EXTENSIONS.get(path.suffix.lower())


def is_pytorch_archive(path: pathlib.Path) -> bool:
    # TorchScript archives hold `constants.pkl` and `code/`; torch.export ones `archive_format`.
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.endswith(("constants.pkl", "archive_format", "data.pkl")) for name in names)


def read_model(model_file: ModelFile, *, example_inputs: dict[str, list[int]] | None = None) -> ov.Model:
    """Convert the source into an `ov.Model` (nothing saved yet)."""
    reader = {"onnx": read_onnx, "pytorch": read_pytorch, "ir": read_ir}.get(model_file.format, read_with_ovc)
    try:
        return with_tensor_names(reader(model_file.path, example_inputs=example_inputs or {}))
    except ConversionFailed:
        raise
    except Exception as error:  # noqa: BLE001 - frontends raise many types; the message is what counts
        raise ConversionFailed(describe_read_error(model_file, error)) from error


def with_tensor_names(model: ov.Model) -> ov.Model:
    """Clients address tensors by name; PyTorch graphs may leave some unnamed."""
    for kind, ports in (("input", model.inputs), ("output", model.outputs)):
        for index, port in enumerate(ports):
            if not port.get_names():
                port.get_tensor().set_names({f"{kind}_{index}"})
    return model


def describe_read_error(model_file: ModelFile, error: Exception) -> str:
    text = str(error)
    if match := UNCONVERTED.search(text):
        return f"unsupported operation in the {model_file.format} model: {match.group(1).strip()}"
    return (f"cannot read {model_file.format} model {model_file.path.name} (corrupt or truncated?): "
            f"{last_meaningful_line(text)}")


def last_meaningful_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def read_onnx(path: pathlib.Path, *, example_inputs: dict[str, list[int]]) -> ov.Model:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as error:
        raise ConversionFailed(f"corrupt or truncated ONNX file {path.name}: {error}") from error
    return ov.convert_model(str(path))


def read_with_ovc(path: pathlib.Path, *, example_inputs: dict[str, list[int]]) -> ov.Model:
    # TensorFlow (SavedModel directory or frozen .pb), TFLite and Paddle: OpenVINO's own
    # frontends read these files without the frameworks installed.
    return ov.convert_model(str(path))


def read_ir(path: pathlib.Path, *, example_inputs: dict[str, list[int]]) -> ov.Model:
    return ov.Core().read_model(str(path))


def read_pytorch(path: pathlib.Path, *, example_inputs: dict[str, list[int]]) -> ov.Model:
    arguments, names = pytorch_conversion_arguments(path, example_inputs=example_inputs)
    model = ov.convert_model(**arguments)
    # TorchScript names inputs after its graph values (image.1); clients use forward's argument names.
    for port, name in zip(model.inputs, names):
        port.get_tensor().set_names({name})
    return model


def load_pytorch(path: pathlib.Path):
    """The TorchScript module or torch.export program in `path` (torch is an optional extra)."""
    try:
        import torch
    except ImportError as error:
        raise ConversionFailed(extras.needs("reading a PyTorch model", "torch")) from error
    with zipfile.ZipFile(path) as archive:
        exported = any(name.endswith("archive_format") for name in archive.namelist())
    return torch.export.load(str(path)) if exported else torch.jit.load(str(path), map_location="cpu")


def pytorch_conversion_arguments(path: pathlib.Path, *,
                                 example_inputs: dict[str, list[int]]) -> tuple[dict, list[str]]:
    """ov.convert_model's arguments, and the names to give the inputs (none for torch.export,
    which names them itself)."""
    model = load_pytorch(path)     # first: it explains a missing torch
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        # The program carries its own signature; keep its static shapes unless told otherwise.
        shapes = list(example_inputs.values()) or [list(t.shape) for t in (model.example_inputs or ((), {}))[0]]
        return {"input_model": model, "input": [ov.PartialShape(shape) for shape in shapes]}, []
    arguments = [argument.name for argument in model.forward.schema.arguments[1:]]     # after self
    if not example_inputs:
        raise ConversionFailed("a TorchScript model has no input signature: pass --input-shape "
                               f"for each input of forward({', '.join(arguments)}), e.g. "
                               f"--input-shape {arguments[0] if arguments else 'x'}=1,3,224,224")
    shapes = torchscript_shapes(example_inputs, arguments)
    return {"input_model": model, "example_input": tuple(torch.zeros([max(d, 1) for d in s]) for s in shapes),
            "input": [ov.PartialShape(shape) for shape in shapes]}, arguments


def torchscript_shapes(example_inputs: dict[str, list[int]], arguments: list[str]) -> list[list[int]]:
    """--input-shape values in forward's argument order, matched by name (NAME= may be left out
    for a single input)."""
    if list(example_inputs) == [""] and len(arguments) == 1:
        return list(example_inputs.values())
    if set(example_inputs) != set(arguments):
        raise ConversionFailed(f"--input-shape names {', '.join(repr(n) for n in example_inputs)} do not match "
                               f"forward({', '.join(arguments)}): give one shape per argument, by name")
    return [example_inputs[name] for name in arguments]
