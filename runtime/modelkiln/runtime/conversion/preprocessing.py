"""Input shapes, layouts and embedded preprocessing: the familiar Model Optimizer options.

`--input-shape`, `--layout`, `--mean`, `--scale` and `--reverse-channels` are applied to the
converted model with OpenVINO's PrePostProcessor, so they live inside the IR and every client
sends raw inputs. The same steps in numpy (`apply_to_arrays`) turn a raw sample into what the
source model expects, which is how verification feeds the untouched source model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import openvino as ov
from openvino.preprocess import PrePostProcessor

from modelkiln.runtime.conversion.errors import ConversionFailed


@dataclasses.dataclass(frozen=True)
class InputOptions:
    """Per-input options keyed by input name ("" = the model's only input)."""

    shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    layouts: dict[str, str] = dataclasses.field(default_factory=dict)
    means: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    scales: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    reverse_channels: bool = False

    def has_preprocessing(self) -> bool:
        return bool(self.means or self.scales or self.reverse_channels)


def split_named(option: str, value: str) -> tuple[str, str]:
    """'input=1,3,224,224' -> ('input', '1,3,224,224'); a bare value names the only input."""
    name, sep, rest = value.rpartition("=")
    if not rest:
        raise ConversionFailed(f"{option} {value!r}: expected NAME=VALUE or VALUE")
    return (name if sep else ""), rest


def parse_shape(value: str) -> list[int]:
    try:
        return [-1 if dim.strip() in ("?", "-1") else int(dim) for dim in value.strip("[]").split(",")]
    except ValueError as error:
        raise ConversionFailed(f"--input-shape {value!r}: expected comma-separated integers, "
                               "-1 or ? for a dynamic dimension, e.g. 1,3,224,224") from error


def parse_values(option: str, value: str) -> list[float]:
    try:
        return [float(v) for v in value.strip("[]").split(",")]
    except ValueError as error:
        raise ConversionFailed(f"{option} {value!r}: expected comma-separated numbers, e.g. 123.7,116.3,103.5") from error


def parse_input_options(*, shapes: list[str], layouts: list[str], means: list[str], scales: list[str],
                        reverse_channels: bool) -> InputOptions:
    def named(option: str, values: list[str], parse) -> dict:
        return {name: parse(rest) for name, rest in (split_named(option, v) for v in values)}

    return InputOptions(
        shapes=named("--input-shape", shapes, parse_shape),
        layouts=named("--layout", layouts, lambda v: v.upper()),
        means=named("--mean", means, lambda v: parse_values("--mean", v)),
        scales=named("--scale", scales, lambda v: parse_values("--scale", v)),
        reverse_channels=reverse_channels,
    )


def input_names(model: ov.Model) -> list[str]:
    return [port.get_any_name() for port in model.inputs]


def resolve_name(model: ov.Model, name: str, option: str) -> str:
    names = input_names(model)
    if name == "":
        if len(names) != 1:
            raise ConversionFailed(f"{option} needs NAME= because the model has {len(names)} inputs: "
                                   f"{', '.join(names)}")
        return names[0]
    for port in model.inputs:
        if name in port.get_names():
            return port.get_any_name()
    raise ConversionFailed(f"{option}: the model has no input {name!r}; its inputs are {', '.join(names)}")


def resolved(model: ov.Model, options: InputOptions) -> InputOptions:
    """The same options keyed by the model's own input names."""
    def keyed(values: dict, option: str) -> dict:
        return {resolve_name(model, name, option): value for name, value in values.items()}

    return dataclasses.replace(
        options, shapes=keyed(options.shapes, "--input-shape"), layouts=keyed(options.layouts, "--layout"),
        means=keyed(options.means, "--mean"), scales=keyed(options.scales, "--scale"))


def reshape(model: ov.Model, options: InputOptions) -> None:
    if options.shapes:
        try:
            model.reshape({name: ov.PartialShape(shape) for name, shape in options.shapes.items()})
        except RuntimeError as error:
            raise ConversionFailed(f"cannot apply --input-shape {options.shapes}: "
                                   f"{str(error).strip().splitlines()[-1]}") from error


def preprocessed_inputs(model: ov.Model, options: InputOptions) -> list[str]:
    names = set(options.layouts) | set(options.means) | set(options.scales)
    if options.reverse_channels:
        names |= set(input_names(model))
    return sorted(names)


def embed_preprocessing(model: ov.Model, options: InputOptions) -> ov.Model:
    """Layouts, channel reversal, mean and scale (in that order) become part of the model."""
    names = preprocessed_inputs(model, options)
    if not names:
        return model
    ppp = PrePostProcessor(model)
    for name in names:
        step = ppp.input(name)
        layout = options.layouts.get(name)
        if layout:
            step.model().set_layout(ov.Layout(layout))
        elif options.reverse_channels or len(options.means.get(name, [])) > 1 or len(options.scales.get(name, [])) > 1:
            raise ConversionFailed(f"per-channel preprocessing of input {name!r} needs its layout: "
                                   f"pass --layout {name}=NCHW (or NHWC)")
        if options.reverse_channels:
            step.preprocess().reverse_channels()
        if name in options.means:
            step.preprocess().mean(options.means[name])
        if name in options.scales:
            step.preprocess().scale(options.scales[name])
    try:
        return ppp.build()
    except RuntimeError as error:
        raise ConversionFailed(f"cannot embed preprocessing: {str(error).strip().splitlines()[-1]}") from error


def apply_to_arrays(arrays: dict[str, np.ndarray], options: InputOptions) -> dict[str, np.ndarray]:
    """What the embedded preprocessing does, in numpy: raw inputs -> the source model's inputs."""
    out = dict(arrays)
    for name, array in arrays.items():
        layout = options.layouts.get(name, "")
        axis = layout.index("C") if "C" in layout else array.ndim - 1
        x = array.astype(np.float32) if (name in options.means or name in options.scales) else array
        if options.reverse_channels and "C" in layout:
            x = np.flip(x, axis=axis)
        x = x - channel_values(options.means.get(name), x.ndim, axis) if name in options.means else x
        x = x / channel_values(options.scales.get(name), x.ndim, axis) if name in options.scales else x
        out[name] = np.ascontiguousarray(x.astype(array.dtype) if x.dtype != array.dtype else x)
    return out


def channel_values(values: list[float], ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = len(values)
    return np.asarray(values, np.float32).reshape(shape if len(values) > 1 else [1] * ndim)
