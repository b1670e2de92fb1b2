"""`modelkiln predict` sends files to a running server and prints the outputs and top classes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from runtime_helpers import run_directly


def predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelkiln.cli", "predict", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_npy_input_prints_the_model_outputs(served, model_repository, tmp_path, protocol):
    x = np.array([[0.5, -1.0, 2.0, 0.0]], np.float32)
    np.save(tmp_path / "x.npy", x)
    url = served.http if protocol == "rest" else served.grpc
    result = predict("--url", url, "--protocol", protocol, "--model", "mlp",
                     "--input", str(tmp_path / "x.npy"))
    assert result.returncode == 0, result.stderr
    expected = run_directly(model_repository / "mlp/1/model.xml", {"x": x})
    assert "model mlp version 1" in result.stdout
    assert "scores FP32 [1, 3]" in result.stdout and "label INT64 [1]" in result.stdout
    assert f"row 0: argmax {int(expected['label'][0])};" in result.stdout


def test_json_input_takes_the_model_datatype_and_gets_a_batch_dimension(served, tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"x": [1, 2, 3, 4]}))
    result = predict("--url", served.http, "--model", "mlp", "--input",
                     f"x={tmp_path / 'a.json'}")
    assert result.returncode == 0, result.stderr
    assert "scores FP32 [1, 3]" in result.stdout


def test_npz_inputs_are_matched_by_name(served, tmp_path):
    np.savez(tmp_path / "inputs.npz", x=np.zeros((2, 4), np.float32))
    result = predict("--url", served.http, "--model", "mlp", "--input", str(tmp_path / "inputs.npz"))
    assert result.returncode == 0, result.stderr
    assert "scores FP32 [2, 3]" in result.stdout and "label INT64 [2]" in result.stdout


def test_image_input_is_resized_to_the_model_and_ranked(served, tmp_path):
    Image.new("RGB", (32, 20), (10, 200, 30)).save(tmp_path / "green.png")
    result = predict("--url", served.grpc, "--protocol", "grpc", "--model", "image",
                     "--input", str(tmp_path / "green.png"), "--top-k", "2")
    assert result.returncode == 0, result.stderr
    assert "row 0: argmax 1; top-2: 1 (200), 2 (30)" in result.stdout


def test_server_errors_are_printed_as_one_line(served, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float64))
    result = predict("--url", served.http, "--model", "mlp", "--input", str(tmp_path / "x.npy"))
    assert result.returncode == 1
    assert result.stderr.strip() == ("modelkiln predict: server answered 400: input 'x': "
                                     "expected datatype FP32, got 'FP64' (data is not converted; "
                                     "send FP32)")
    result = predict("--url", served.http, "--model", "nope", "--input", str(tmp_path / "x.npy"))
    assert result.returncode == 1 and "model 'nope' is not served" in result.stderr
