"""`modelkiln convert --precision auto`: every candidate built, verified and measured on this CPU; the
fastest that passes the accuracy gate published, and the table told.

Which candidate is fastest is measured, not known, on a machine shared with other work: the tests
assert what must hold whatever the timings (the rows OpenVINO's report of this CPU calls for, the
gate's verdicts, a winner that is the best passing row of its own table), and where one candidate
must win they use a model on which it wins by an order of magnitude.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import openvino as ov
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import DIGITS, metadata, save_onnx, version_dirs

FAST = ("--seconds-per-candidate", "1")


def conv_stack(path: pathlib.Path) -> pathlib.Path:
    """Four 3x3 convolutions of 64 channels on a 56x56 map: INT8 runs them >10x faster than f32 here."""
    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "x"
    for index in range(4):
        channels_in = 32 if index == 0 else 64
        weights.append(numpy_helper.from_array(
            (rng.normal(size=(64, channels_in, 3, 3)) / np.sqrt(channels_in * 9)).astype(np.float32), f"w{index}"))
        output = "features" if index == 3 else f"r{index}"
        nodes += [helper.make_node("Conv", [previous, f"w{index}"], [f"c{index}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{index}"], [output])]
        previous = output
    return save_onnx(path, nodes=nodes, initializers=weights,
                     inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 56, 56])],
                     outputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 64, 56, 56])])


def cancelling(path: pathlib.Path) -> pathlib.Path:
    """scores = x@W1@W2 - x@(W1@W2) + x@W3: two terms of about 1e3 that cancel, around a signal of
    about 1. f32 keeps the signal; bf16, f16 and INT8 lose it in the rounding of the big terms."""
    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(8, 64)) * 300).astype(np.float32)
    w2 = rng.normal(size=(64, 4)).astype(np.float32)
    arrays = {"w1": w1, "w2": w2, "c": (w1.astype(np.float64) @ w2).astype(np.float32),
              "w3": rng.normal(size=(8, 4)).astype(np.float32)}
    return save_onnx(
        path,
        nodes=[helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["big"]),
               helper.make_node("MatMul", ["x", "c"], ["same"]), helper.make_node("Sub", ["big", "same"], ["rest"]),
               helper.make_node("MatMul", ["x", "w3"], ["signal"]),
               helper.make_node("Add", ["rest", "signal"], ["scores"])],
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 8])],
        outputs=[helper.make_tensor_value_info("scores", TensorProto.FLOAT, [-1, 4])],
        initializers=[numpy_helper.from_array(array, name) for name, array in arrays.items()])


def table(result) -> dict[str, dict]:
    """The summary's candidate rows by name."""
    return {row["name"]: row for row in result.summary["auto"]["candidates"]}


def best_passing(rows: dict[str, dict], objective: str = "throughput") -> str:
    passed = [row for row in rows.values() if row.get("passed")]
    if objective == "throughput":
        return max(passed, key=lambda row: row["perSecond"])["name"]
    return min(passed, key=lambda row: row["p50Ms"])["name"]


def cpu_default_precision() -> str:
    """The inference precision this CPU runs a model at when none is asked for, as OpenVINO says."""
    compiled = ov.Core().compile_model(str(DIGITS / "model.onnx"), "CPU")
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def cpu_has_bf16() -> bool:
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_the_candidates_are_those_openvino_reports_for_this_cpu(convert, repo, tmp_path):
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    default = cpu_default_precision()
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "digits", "--precision", "auto",
                     "--calibration", DIGITS / "calibration.npz", *FAST)

    rows = table(result)
    measured = [name for name, row in rows.items() if "perSecond" in row]
    expected = ["FP32/f32", *(["FP32/bf16"] if "BF16" in capabilities else []), f"FP16/{default}", f"INT8/{default}"]
    assert measured == expected
    if "BF16" not in capabilities:      # said, not silently left out
        assert rows["FP32/bf16"]["note"].startswith("not built: the device has no BF16")
    for row in map(rows.get, measured):
        assert row["perSecond"] > 0 and 0 < row["p50Ms"] <= row["p99Ms"] and row["sizeBytes"] > 0
        assert row["passed"] is True and row["top1Agreement"] == 1.0 and row["cosine"] > 0.99
    meta = metadata(result.summary["path"])
    auto = meta["auto"]
    assert auto["deviceCapabilities"] == list(capabilities) and auto["device"] == "CPU"
    # Auto's defaults for a classifier, on every calibration row
    rows_given = len(np.load(DIGITS / "calibration.npz")["input"])
    assert auto["gate"] == {"maxAccuracyDrop": 0.01, "minCosine": 0.99, "samples": min(rows_given, 300),
                            "syntheticSamples": False}
    assert auto["objective"] == "throughput" and auto["performanceHint"] == "THROUGHPUT"
    assert auto["chosen"] == result.summary["auto"]["chosen"] == best_passing(rows)
    assert rows[auto["chosen"]]["note"] == "chosen"
    precision, inference_precision = auto["chosen"].split("/")
    assert (meta["precision"], meta["inferencePrecision"]) == (precision, inference_precision)
    assert result.summary["inferencePrecision"] == inference_precision
    assert set(meta["timings"]) == {"fetchSeconds", "convertSeconds", "verifySeconds", "measureSeconds"}
    # The table on stdout, before the summary line
    assert f"chosen: {auto['why']}" in result.stdout
    assert version_dirs(repo / "digits") == ["1"]       # one version, no candidate left behind
    assert sorted(p.name for p in (repo / "digits" / "1").iterdir()) == ["model.bin", "model.xml", "modelkiln.json"]


def test_int8_is_published_when_it_passes_and_measures_fastest(convert, repo, tmp_path):
    model = conv_stack(tmp_path / "convs.onnx")
    np.savez(tmp_path / "calibration.npz",
             x=np.random.default_rng(1).standard_normal((16, 32, 56, 56)).astype(np.float32))
    # serving.inferencePrecision f32 set by the user: every candidate runs at it, and the convolutions
    # run faster in INT8 than in f32 (>10x with VNNI or AMX, about 2x with AVX2 alone)
    result = convert("--source", model, "--output", repo / "convs", "--precision", "auto",
                     "--calibration", tmp_path / "calibration.npz", "--inference-precision", "f32", *FAST)

    rows = table(result)
    assert [name for name, row in rows.items() if "perSecond" in row] == ["FP32/f32", "FP16/f32", "INT8/f32"]
    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert [row for row in rows.values() if "perSecond" not in row] == \
        ([{"name": "FP32/bf16", "note": "not built: serving.inferencePrecision is f32"}] if bf16 else [])
    assert result.summary["auto"]["chosen"] == "INT8/f32" and result.summary["precision"] == "INT8"
    assert best_passing(rows) == "INT8/f32"      # chosen because it measured fastest
    assert rows["INT8/f32"]["top1Agreement"] is None and rows["INT8/f32"]["cosine"] >= 0.99   # no classes: cosine
    meta = metadata(result.summary["path"])
    assert meta["auto"]["gate"] == {"maxAccuracyDrop": None, "minCosine": 0.99, "samples": 16, "syntheticSamples": False}
    assert meta["calibration"]["synthetic"] is False and meta["calibration"]["samples"] == 16
    xml = (pathlib.Path(result.summary["path"]) / "model.xml").read_text()
    assert "FakeQuantize" in xml or "FakeConvert" in xml      # the published IR is the quantized one
    assert meta["sizeBytes"] == rows["INT8/f32"]["sizeBytes"]


def test_a_failing_int8_falls_back_to_the_best_float_that_passes(convert, repo):
    # Calibrated on random normal inputs, INT8 clips the digits' pixel values (0..16): the labelled
    # samples (for verification only) show the accuracy it loses
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "digits", "--precision", "auto",
                     "--calibration", DIGITS / "samples.npz", "--synthetic-calibration", "--objective", "latency",
                     *FAST)

    rows = table(result)
    int8 = next(row for name, row in rows.items() if name.startswith("INT8/"))
    assert int8["passed"] is False and "> --max-accuracy-drop 0.01" in int8["note"] and int8["accuracyDrop"] > 0.1
    chosen = result.summary["auto"]["chosen"]
    assert not chosen.startswith("INT8") and chosen == best_passing(rows, "latency")
    assert f"{int8['name']} failed the gate (" in result.summary["auto"]["why"]
    assert "the best latency of the" in result.summary["auto"]["why"]
    meta = metadata(result.summary["path"])
    assert meta["calibration"] is None          # the published artifact is not the calibrated one
    assert meta["verification"]["accuracyDrop"] <= 0.01


def test_a_model_only_fp32_keeps_still_converts_and_says_so(convert, repo, tmp_path):
    model = cancelling(tmp_path / "cancelling.onnx")
    np.savez(tmp_path / "calibration.npz", x=np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32))
    result = convert("--source", model, "--output", repo / "m", "--precision", "auto",
                     "--calibration", tmp_path / "calibration.npz", *FAST)

    rows = table(result)
    assert [name for name, row in rows.items() if row.get("passed")] == ["FP32/f32"]
    losing = [row for name, row in rows.items() if "perSecond" in row and name != "FP32/f32"]
    assert len(losing) == (3 if cpu_has_bf16() else 2) and all(row["note"].startswith(("cosine ", "accuracy drop ")) for row in losing)
    why = result.summary["auto"]["why"]
    assert why.startswith("FP32/f32: the only candidate that passed the accuracy gate")
    assert result.summary["precision"] == "FP32" and result.summary["inferencePrecision"] == "f32"
    assert f"chosen: {why}" in result.stdout
    # the summary, every row included, fits the termination log the operator reads
    assert json.loads(result.termination_log) == result.summary


def test_when_no_candidate_passes_the_conversion_fails_naming_each(convert, repo, tmp_path):
    # a cosine of exactly 1 asks more than even f32 gives (OpenVINO and ONNX Runtime sum in another order)
    failed = convert("--source", conv_stack(tmp_path / "convs.onnx"), "--output", repo / "m", "--precision", "auto",
                     "--min-cosine", "1.0", *FAST)
    assert failed.returncode == 1
    assert failed.cause.startswith("precision auto: no candidate passed the accuracy gate: FP32/f32 failed the gate "
                                   "(cosine 0.99")
    # each candidate this CPU calls for is named; no calibration: no INT8
    floats = ["FP32/f32", *(["FP32/bf16"] if cpu_has_bf16() else []), f"FP16/{cpu_default_precision()}"]
    assert re.findall(r"(\S+) failed the gate \(cosine [\d.]+ < --min-cosine 1\.0\)", failed.cause) == floats
    assert "precision auto on CPU" not in failed.stdout      # nothing measured for nothing to publish
    assert version_dirs(repo / "m") == []


def test_an_unchanged_auto_conversion_is_reused_without_measuring_again(convert, repo):
    args = ("--source", DIGITS / "model.onnx", "--output", repo / "digits", "--precision", "auto", *FAST)
    first = convert(*args)
    second = convert(*args)
    assert second.summary["reused"] is True and second.summary["version"] == first.summary["version"]
    assert second.summary["auto"] == first.summary["auto"]      # the table of the measurement that chose it
    assert "precision auto on CPU" not in second.stdout
    moved = convert(*args, "--performance-hint", "LATENCY")     # measured with other serving settings: new key
    assert moved.summary["version"] == first.summary["version"] + 1
    assert metadata(moved.summary["path"])["auto"]["performanceHint"] == "LATENCY"


@pytest.mark.parametrize("args, cause", [
    (("--precision", "auto", "--keep-float-type", "Convolution"),
     "--keep-float-* with --precision auto shapes its INT8 candidate, which needs calibration data: "
     "pass --calibration URI or --synthetic-calibration"),
    (("--precision", "FP32", "--objective", "latency"), "--objective only applies to --precision auto (got FP32)"),
    (("--precision", "auto", "--objective", "speed"),
     "argument --objective: invalid choice: 'speed'"),
    (("--precision", "auto", "--device", "GPU"), "--precision auto measures on the serving device, and OpenVINO has "
                                                 "no device GPU here"),
], ids=["keep-float-without-calibration", "objective-without-auto", "unknown-objective", "absent-device"])
def test_bad_auto_arguments_are_refused_in_one_line(convert, repo, args, cause):
    if "GPU" in args and "GPU" in ov.Core().available_devices:
        pytest.skip("this machine has a GPU")
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "digits", *args)
    assert result.returncode == 1 and result.cause.startswith(cause)
    assert version_dirs(repo / "digits") == []
