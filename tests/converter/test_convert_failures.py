"""Each way a conversion fails: one line naming the cause, the right exit code, nothing published."""

from __future__ import annotations

import hashlib
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
from onnx import TensorProto, helper

from conftest import DIGITS, FIXTURES, save_onnx, version_dirs, wide_linear


def test_truncated_onnx_file_is_reported_as_corrupt(convert, repo, tmp_path):
    source = tmp_path / "digits.onnx"
    source.write_bytes((DIGITS / "model.onnx").read_bytes()[:3000])
    result = convert("--source", source, "--output", repo / "m", "--precision", "FP32")

    assert result.returncode == 1
    assert result.cause.startswith("corrupt or truncated ONNX file digits.onnx: ")
    assert version_dirs(repo / "m") == []


def test_truncated_tflite_file_is_reported_as_unreadable(convert, repo, tmp_path):
    source = tmp_path / "model.tflite"
    source.write_bytes((FIXTURES / "model.tflite").read_bytes()[:600])
    result = convert("--source", source, "--output", repo / "m", "--precision", "FP32")
    assert result.cause.startswith("cannot read tflite model model.tflite (corrupt or truncated?): ")


def test_unsupported_operation_is_named(convert, repo, tmp_path):
    source = save_onnx(
        tmp_path / "custom.onnx",
        nodes=[helper.make_node("Relu", ["x"], ["r"]),
               helper.make_node("FancyActivation", ["r"], ["y"], domain="com.example.ops")],
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        opsets=(("", 17), ("com.example.ops", 1)))
    result = convert("--source", source, "--output", repo / "m", "--precision", "FP32")

    assert result.cause == "unsupported operation in the onnx model: com.example.ops.FancyActivation"
    assert result.returncode == 1


def test_calibration_with_the_wrong_width_names_input_and_shapes(convert, repo, tmp_path):
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, np.zeros((10, 32), np.float32))
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "m", "--precision", "INT8",
                     "--calibration", calibration)
    assert result.cause == ("calibration data does not match the inputs: input 'input' expects "
                            "float32 [?,64], calibration.npy has float32 [10, 32]")


def test_calibration_keyed_by_other_names_lists_what_was_expected(convert, repo, tmp_path):
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, pixels=np.zeros((10, 64), np.float32), extra=np.zeros(3))
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "m", "--precision", "INT8",
                     "--calibration", calibration)
    assert result.cause == ("calibration data does not match the inputs: calibration.npz has 'pixels', 'extra'; "
                            "expected arrays for 'input' (float32 [?,64])")


def test_integer_calibration_data_for_a_float_input_is_accepted(convert, repo, tmp_path):
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, np.random.default_rng(0).integers(0, 17, size=(50, 64)))
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "m", "--precision", "INT8",
                     "--calibration", calibration)
    assert result.summary["precision"] == "INT8"


def test_failed_accuracy_gate_reports_the_numbers_and_publishes_nothing(convert, repo):
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "m", "--precision", "INT8",
                     "--calibration", DIGITS / "calibration.npz", "--min-cosine", "0.9999999")

    assert result.returncode == 1
    match = re.fullmatch(r"accuracy gate failed: cosine (0\.\d+) < --min-cosine 0\.9999999 "
                         r"\(against onnxruntime on 32 samples: maxAbsError (\S+), cosine \S+, top1Agreement \S+\)",
                         result.cause)
    assert match, result.cause
    assert float(match.group(1)) < 0.9999999 and float(match.group(2)) > 0
    assert version_dirs(repo / "m") == []      # no version, no .tmp-* staging left behind


def test_gate_catches_the_damage_of_synthetic_calibration_on_real_labelled_samples(convert, repo):
    """Random-noise calibration wrecks this INT8 model; verification on the real held-out digits shows it."""
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "m", "--precision", "INT8",
                     "--synthetic-calibration", "--calibration", DIGITS / "samples.npz",
                     "--calibration-samples", "1000", "--max-accuracy-drop", "0.01")

    match = re.fullmatch(r"accuracy gate failed: accuracy drop (\S+) > --max-accuracy-drop 0\.01 "
                         r"\(against onnxruntime on 540 samples: .*accuracy (\S+), referenceAccuracy (\S+), .*\)",
                         result.cause)
    assert match, result.cause
    drop, accuracy, reference_accuracy = map(float, match.groups())
    assert drop > 0.01 and abs(reference_accuracy - accuracy - drop) < 1e-6
    assert version_dirs(repo / "m") == []


def test_bad_arguments_fail_with_one_line(convert, repo):
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "m", "--precision", "INT4")
    assert result.returncode == 1
    assert result.cause.startswith("argument --precision: invalid choice: 'INT4'")


def test_no_space_left_is_transient_and_leaves_nothing(convert, tmp_path, small_filesystem):
    tiny_filesystem = small_filesystem("256k")
    source = wide_linear(tmp_path / "wide.onnx")       # 512 KiB of weights for a 256 KiB disk
    result = convert("--source", source, "--output", tiny_filesystem / "wide", "--precision", "FP32")

    assert result.returncode == 3
    assert result.cause.startswith("no space left on device writing ")
    assert version_dirs(tiny_filesystem / "wide") == []


def test_a_forked_child_terminated_at_exit_ends_quietly():
    # OpenVINO's telemetry forks a sender that multiprocessing terminates at exit; the converter's
    # SIGTERM handler, inherited by the fork, must not report a failure after the summary.
    code = textwrap.dedent("""
        import multiprocessing, time
        from modelkiln.runtime.conversion.convert import sigterm_raises
        with sigterm_raises():
            child = multiprocessing.Process(target=time.sleep, args=(30,))
            child.start()
            time.sleep(0.5)
            child.terminate()
            child.join()
            print(child.exitcode)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.stdout.strip(), result.stderr) == ("143", "")


def file_digests(directory: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_a_full_repository_publishes_nothing_keeps_the_served_version_and_a_retry_succeeds(convert, tmp_path,
                                                                                           small_filesystem):
    repository = small_filesystem("2m")
    served = convert("--source", DIGITS / "model.onnx", "--output", repository / "m", "--precision", "FP32").summary
    before = file_digests(repository / "m" / "1")
    filler = repository / "filler"      # another model's versions, say: 128 KiB stay free
    filler.write_bytes(bytes(shutil.disk_usage(repository).free - (128 << 10)))
    args = ("--source", wide_linear(tmp_path / "wide.onnx"), "--output", repository / "m", "--precision", "FP32")

    full = convert(*args)
    assert full.returncode == 3     # transient: the Job tries again
    assert re.fullmatch(rf"no space left on device writing {re.escape(str(repository))}/m/\.tmp-\w+\S*: the model "
                        rf"repository is full; nothing was published and the versions of "
                        rf"{re.escape(str(repository))}/m are untouched; free space on it and convert again",
                        full.cause), full.cause
    assert version_dirs(repository / "m") == ["1"]      # no half-published version, no staging left
    assert file_digests(repository / "m" / "1") == before

    filler.unlink()
    retried = convert(*args).summary
    assert (served["version"], retried["version"]) == (1, 2)
    assert file_digests(repository / "m" / "1") == before
