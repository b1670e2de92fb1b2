"""The digits classifier converted at each precision: what lands in the repository and how well it answers."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from modelkiln.runtime.conversion.quantization import cpu_has_vnni

from conftest import DIGITS, digits_accuracy, metadata, run_ir, version_dirs


def test_fp32_version_is_published_with_its_metadata_and_summary(convert, repo):
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "digits", "--precision", "FP32")

    summary = result.summary
    assert result.termination_log == result.stdout.strip().splitlines()[-1]
    assert summary["version"] == 1 and summary["reused"] is False and summary["precision"] == "FP32"
    version = repo / "digits" / "1"
    assert summary["path"] == str(version)
    assert sorted(p.name for p in version.iterdir()) == ["model.bin", "model.xml", "modelkiln.json"]
    meta = metadata(version)
    assert meta["name"] == "digits" and meta["version"] == 1 and meta["artifactKey"] == summary["artifactKey"]
    assert meta["source"]["format"] == "onnx" and meta["source"]["uri"] == str(DIGITS / "model.onnx")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]} in meta["outputs"]
    assert meta["sizeBytes"] == summary["sizeBytes"] == sum(p.stat().st_size for p in version.iterdir()
                                                           if p.name != "modelkiln.json")
    assert meta["verification"]["reference"] == "onnxruntime"
    assert meta["verification"]["maxAbsError"] < 1e-5 and meta["verification"]["top1Agreement"] == 1.0
    assert meta["calibration"] is None
    assert set(meta["timings"]) == {"fetchSeconds", "convertSeconds", "verifySeconds"}
    assert version_dirs(repo / "digits") == ["1"]      # no staging directory left behind


def test_fp16_compresses_weights_and_stays_close(convert, repo):
    fp32 = convert("--source", DIGITS / "model.onnx", "--output", repo / "a", "--precision", "FP32").summary
    fp16 = convert("--source", DIGITS / "model.onnx", "--output", repo / "b", "--precision", "FP16").summary

    assert fp16["sizeBytes"] < fp32["sizeBytes"]
    assert 0 < fp16["verification"]["maxAbsError"] < 1e-2
    assert fp16["verification"]["cosine"] > 0.9999


def test_int8_accuracy_on_held_out_digits_is_within_one_point_of_fp32(convert, repo):
    digits_repo = repo / "digits"
    fp32 = convert("--source", DIGITS / "model.onnx", "--output", digits_repo, "--precision", "FP32").summary
    int8 = convert("--source", DIGITS / "model.onnx", "--output", digits_repo, "--precision", "INT8",
                   "--calibration", DIGITS / "calibration.npz").summary

    fp32_accuracy = digits_accuracy(digits_repo / str(fp32["version"]) / "model.xml")
    int8_accuracy = digits_accuracy(digits_repo / str(int8["version"]) / "model.xml")
    assert fp32_accuracy > 0.9
    assert abs(fp32_accuracy - int8_accuracy) <= 0.01, (fp32_accuracy, int8_accuracy)
    meta = metadata(int8["path"])
    assert meta["calibration"]["synthetic"] is False and meta["calibration"]["samples"] == 300
    xml = (digits_repo / str(int8["version"]) / "model.xml").read_text()
    assert "FakeQuantize" in xml or "FakeConvert" in xml   # really quantized, not a copy of FP32


def test_labelled_calibration_runs_accuracy_controlled_quantization(convert, repo):
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "digits", "--precision", "INT8",
                     "--calibration", DIGITS / "samples.npz", "--calibration-samples", "1000",
                     "--max-accuracy-drop", "0.01")

    verification = result.summary["verification"]
    assert verification["accuracyDrop"] <= 0.01
    assert verification["accuracy"] > 0.9
    meta = metadata(result.summary["path"])
    assert meta["calibration"]["accuracyControl"] is True
    assert meta["verification"]["samples"] == len(np.load(DIGITS / "samples.npz")["labels"])


def test_synthetic_calibration_is_opt_in_and_recorded(convert, repo):
    refused = convert("--source", DIGITS / "model.onnx", "--output", repo / "digits", "--precision", "INT8")
    assert "INT8 needs calibration data" in refused.cause and "--synthetic-calibration" in refused.cause
    assert refused.returncode == 1

    accepted = convert("--source", DIGITS / "model.onnx", "--output", repo / "digits", "--precision", "INT8",
                       "--synthetic-calibration", "--calibration-samples", "50")
    meta = metadata(accepted.summary["path"])
    assert meta["calibration"] == {"source": "synthetic", "samples": 50, "synthetic": True,
                                   "accuracyControl": False, "modelType": "default",
                                   "overflowFix": "disable" if vnni_in_cpuinfo() else "enable"}


def vnni_in_cpuinfo() -> bool:
    return any(flag in pathlib.Path("/proc/cpuinfo").read_text() for flag in ("vnni", "amx_int8"))


@pytest.mark.parametrize(("flags", "vnni"), [
    ("fpu sse2 avx2 fma", False),                       # AMD EPYC (Zen 2/3), Intel Haswell..Skylake: saturates
    ("avx2 avx512f avx512bw", False),                   # AVX-512 without VNNI: saturates too
    ("avx2 avx512f avx512_vnni", True),                 # Cascade Lake and later
    ("avx2 avx_vnni", True),                            # Alder Lake and later client cores
    ("avx512f amx_bf16 amx_tile amx_int8", True),       # Sapphire Rapids
])
def test_the_overflow_fix_follows_the_cpus_8_bit_dot_products(tmp_path, flags, vnni):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_vnni(cpuinfo) is vnni
    assert cpu_has_vnni(tmp_path / "absent") is False


def test_ir_source_is_re_precisioned(convert, repo):
    fp32 = convert("--source", DIGITS / "model.onnx", "--output", repo / "digits", "--precision", "FP32").summary
    result = convert("--source", fp32["path"], "--output", repo / "again", "--precision", "FP16")

    meta = metadata(result.summary["path"])
    assert meta["source"]["format"] == "ir" and meta["precision"] == "FP16"
    assert meta["verification"]["reference"] == "openvino-fp32-source"
    inputs = {"input": np.load(DIGITS / "samples.npz")["input"][:20]}
    np.testing.assert_allclose(run_ir(repo / "digits" / "1" / "model.xml", inputs)[0],
                               run_ir(repo / "again" / "1" / "model.xml", inputs)[0], atol=1e-2)
