"""A missing optional dependency is one line naming the pip extra, in every command that meets it.

Each command really runs, in a subprocess where the extra's package cannot be imported:
tests/uninstalled/sitecustomize.py, on PYTHONPATH, makes the packages named in
MODELKILN_TEST_UNINSTALLED fail to import as if they were not installed, in that process and in
those it starts (`up` runs `convert`). Nothing is contacted: the failures come before any I/O.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
UNINSTALLED = ROOT / "tests" / "uninstalled"


def run(*args: str | os.PathLike, missing: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    """`modelkiln ARGS...` with the packages in `missing` (comma-separated) not importable."""
    path = os.pathsep.join(filter(None, [str(UNINSTALLED), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "modelkiln.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path, "MODELKILN_TEST_UNINSTALLED": missing},
                          cwd=cwd, timeout=300)


def convert(tmp_path: pathlib.Path, *args: str | os.PathLike, missing: str) -> tuple[subprocess.CompletedProcess, str]:
    """`modelkiln convert ARGS...` into tmp_path/repo/m; the result and its termination log."""
    log = tmp_path / "termination-log"
    result = run("convert", *args, "--output", tmp_path / "repo" / "m", "--termination-log", log, missing=missing)
    return result, log.read_text() if log.exists() else ""


def test_a_package_made_missing_cannot_be_imported_there():
    check = "import importlib.util, numpy; import obstore"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(UNINSTALLED), "MODELKILN_TEST_UNINSTALLED": "obstore"})
    assert result.returncode == 1 and "ModuleNotFoundError: No module named 'obstore'" in result.stderr


@pytest.mark.parametrize("args, missing, cause", [
    (("--source", "s3://models/digits/model.onnx", "--precision", "FP32"), "obstore",
     "reading s3:// sources needs the storage extra: pip install 'modelkiln[storage]'"),
    (("--source", DIGITS / "model.onnx", "--precision", "INT8", "--synthetic-calibration"), "nncf",
     "INT8 quantization needs the int8 extra: pip install 'modelkiln[int8]'"),
    (("--source", ROOT / "tests" / "fixtures" / "torch" / "cnn.pt", "--precision", "FP32",
      "--input-shape", "image=1,3,32,32"), "torch",
     "reading a PyTorch model needs the torch extra: pip install 'modelkiln[torch]'"),
    (("--source", DIGITS / "model.onnx", "--precision", "FP32"), "openvino",
     "modelkiln convert needs the runtime extra: pip install 'modelkiln[runtime]'"),
], ids=["storage", "int8", "torch", "runtime"])
def test_convert_names_the_extra_in_its_one_line(tmp_path, args, missing, cause):
    result, termination_log = convert(tmp_path, *args, missing=missing)
    assert result.returncode == 1
    assert result.stderr == f"modelkiln convert: {cause}\n"
    assert termination_log == cause
    assert "Traceback" not in result.stdout


def test_without_the_verify_extra_convert_verifies_against_openvino_and_says_what_is_missing(tmp_path):
    result, _ = convert(tmp_path, "--source", DIGITS / "model.onnx", "--precision", "FP32", missing="onnxruntime")
    assert result.returncode == 0, result.stderr
    assert "verification: the reference is OpenVINO's FP32 run of the source; an independent one (onnxruntime) " \
           "needs the verify extra: pip install 'modelkiln[verify]'" in result.stdout.splitlines()
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    metadata = json.loads((pathlib.Path(summary["path"]) / "modelkiln.json").read_text())
    assert metadata["verification"]["reference"] == "openvino-fp32-source"


def test_up_passes_the_converters_line_on(tmp_path):
    (tmp_path / "model.yaml").write_text(
        "apiVersion: modelkiln.io/v1alpha1\nkind: InferenceModel\nmetadata: {name: digits}\n"
        "spec: {source: {uri: 's3://models/digits/model.onnx'}}\n")
    result = run("up", "-f", tmp_path / "model.yaml", "--repository", tmp_path / "repo", missing="obstore")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == ("modelkiln up: digits: conversion failed: reading s3:// sources needs "
                                              "the storage extra: pip install 'modelkiln[storage]'")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, missing, line", [
    (("operator",), "kopf", "modelkiln operator needs the operator extra: pip install 'modelkiln[operator]'"),
    (("operator",), "kubernetes", "modelkiln operator needs the operator extra: pip install 'modelkiln[operator]'"),
    (("up", "-f", DIGITS / "fp32.yaml"), "celpy",
     "modelkiln up needs the operator extra: pip install 'modelkiln[operator]'"),
    (("serve", "--repository", "."), "uvicorn", "modelkiln serve needs the serve extra: pip install 'modelkiln[serve]'"),
], ids=["operator-kopf", "operator-kubernetes", "up-celpy", "serve-uvicorn"])
def test_a_command_without_its_extra_says_which_in_one_line(tmp_path, args, missing, line):
    result = run(*args, missing=missing, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (1, line + "\n")
