"""Sample inputs for INT8 calibration and for verification, checked against the model's inputs.

Calibration data is a `.npy` array (single-input models), an `.npz` of arrays keyed by input
name (an optional `labels` array makes it validation data too), or a directory of images that
are resized to the input's height and width and laid out per its layout; the embedded
preprocessing (mean/scale/channel order) then applies inside the model, as it will in serving.
Random data is only used when asked for (`--synthetic-calibration`), or to verify a model that
came with no samples.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import openvino as ov

from modelkiln.runtime.conversion.errors import ConversionFailed

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
LABELS_KEY = "labels"


@dataclasses.dataclass(frozen=True)
class SampleSet:
    """Inputs for one inference each (keyed by input name), and the labels of their rows."""

    samples: list[dict[str, np.ndarray]]
    labels: np.ndarray | None = None
    synthetic: bool = False

    def rows(self) -> int:
        return sum(len(next(iter(sample.values()))) for sample in self.samples)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    shape: ov.PartialShape
    dtype: np.dtype

    @classmethod
    def of(cls, port: ov.Output) -> "InputSpec":
        return cls(name=port.get_any_name(), shape=port.get_partial_shape(),
                   dtype=np.dtype(port.get_element_type().to_dtype()))

    def batch(self) -> int:
        first = self.shape[0] if self.shape.rank.is_static and len(self.shape) else None
        return first.get_length() if first is not None and first.is_static else 1

    def describe(self) -> str:
        return f"{self.dtype.name} {self.shape}"


def input_specs(model: ov.Model) -> list[InputSpec]:
    return [InputSpec.of(port) for port in model.inputs]


def load_samples(path: pathlib.Path, *, model: ov.Model, limit: int, layouts: dict[str, str]) -> SampleSet:
    """Read calibration data at `path` and cut it into per-inference samples for `model`."""
    specs = input_specs(model)
    if path.is_dir():
        arrays, labels = read_images(path, specs=specs, layouts=layouts), None
    else:
        arrays, labels = read_arrays(path, specs=specs)
    arrays = {name: array[:limit] for name, array in arrays.items()}
    for spec in specs:
        check_matches(spec, arrays[spec.name], source=path.name)
    rows = min(len(array) for array in arrays.values())
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)[:rows]
        if len(labels) < rows:
            raise ConversionFailed(f"calibration data does not match the inputs: {path.name} has "
                                   f"{len(labels)} labels for {rows} samples")
    return SampleSet(samples=batches(arrays, specs=specs, rows=rows), labels=labels)


def read_arrays(path: pathlib.Path, *, specs: list[InputSpec]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    expected = ", ".join(f"'{spec.name}' ({spec.describe()})" for spec in specs)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ConversionFailed(f"cannot read calibration data {path.name}: expected a .npy array or an "
                               f".npz of arrays keyed by input name ({expected}): {error}") from error
    if isinstance(loaded, np.ndarray):
        arrays, labels = {"": loaded}, None
    else:
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files if key != LABELS_KEY}
            labels = loaded[LABELS_KEY] if LABELS_KEY in loaded.files else None
    if len(specs) == 1 and len(arrays) == 1:
        return {specs[0].name: next(iter(arrays.values()))}, labels
    missing = [spec.name for spec in specs if spec.name not in arrays]
    if missing:
        raise ConversionFailed(f"calibration data does not match the inputs: {path.name} has "
                               f"{', '.join(map(repr, arrays)) or 'no arrays'}; expected arrays for {expected}")
    return {spec.name: arrays[spec.name] for spec in specs}, labels


def check_matches(spec: InputSpec, array: np.ndarray, *, source: str) -> None:
    """Rows of `array` (axis 0 = samples) must fit the input's shape and element type."""
    shape = spec.shape
    fits = shape.rank.is_dynamic or (
        array.ndim == len(shape)
        and all(dim.is_dynamic or dim.get_length() == size for dim, size in zip(list(shape)[1:], array.shape[1:]))
    )
    kind_ok = np.can_cast(array.dtype, spec.dtype, casting="same_kind")
    if not (fits and kind_ok and len(array) >= spec.batch()):
        raise ConversionFailed(f"calibration data does not match the inputs: input '{spec.name}' expects "
                               f"{spec.describe()}, {source} has {array.dtype.name} {list(array.shape)}")


def batches(arrays: dict[str, np.ndarray], *, specs: list[InputSpec], rows: int) -> list[dict[str, np.ndarray]]:
    batch = max(spec.batch() for spec in specs)
    return [{spec.name: np.ascontiguousarray(arrays[spec.name][start:start + batch], dtype=spec.dtype)
             for spec in specs}
            for start in range(0, rows - batch + 1, batch)]


def read_images(directory: pathlib.Path, *, specs: list[InputSpec], layouts: dict[str, str]) -> dict[str, np.ndarray]:
    from PIL import Image

    if len(specs) != 1:
        raise ConversionFailed("a directory of calibration images needs a model with one input; "
                               f"this one has {len(specs)}: give an .npz keyed by input name")
    spec = specs[0]
    layout = image_layout(spec, layouts.get(spec.name))
    height, width = (spec.shape[layout.index(axis)] for axis in "HW")
    if height.is_dynamic or width.is_dynamic:
        raise ConversionFailed(f"calibration images need a static height and width for input '{spec.name}' "
                               f"({spec.describe()}): pass --input-shape")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConversionFailed(f"no images ({', '.join(IMAGE_SUFFIXES)}) in calibration directory {directory}")
    images = []
    for file in files:
        with Image.open(file) as image:
            resized = image.convert("RGB").resize((width.get_length(), height.get_length()), Image.BILINEAR)
        images.append(np.asarray(resized, np.float32))      # H, W, C
    stacked = np.stack(images)
    return {spec.name: stacked.transpose(0, 3, 1, 2) if layout == "NCHW" else stacked}


def image_layout(spec: InputSpec, declared: str | None) -> str:
    if declared in ("NCHW", "NHWC"):
        return declared
    dims = list(spec.shape) if spec.shape.rank.is_static else []
    if len(dims) == 4 and dims[1].is_static and dims[1].get_length() == 3:
        return "NCHW"
    if len(dims) == 4 and dims[3].is_static and dims[3].get_length() == 3:
        return "NHWC"
    raise ConversionFailed(f"calibration images need an image input (N,3,H,W or N,H,W,3); input '{spec.name}' "
                           f"is {spec.describe()}: pass --layout {spec.name}=NCHW or NHWC")


def synthetic_samples(model: ov.Model, *, count: int, seed: int = 0) -> SampleSet:
    """Random inputs: standard normal for floats, 0/1 for integers (valid ids and masks)."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        sample = {}
        for spec in input_specs(model):
            if spec.shape.rank.is_dynamic:
                raise ConversionFailed(f"input '{spec.name}' has a dynamic rank: pass --input-shape")
            shape = [dim.get_length() if dim.is_static else 1 for dim in spec.shape]
            if np.issubdtype(spec.dtype, np.floating):
                sample[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            else:
                sample[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
        samples.append(sample)
    return SampleSet(samples=samples, synthetic=True)
