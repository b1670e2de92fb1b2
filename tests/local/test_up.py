"""`modelkiln up` as a person runs it: real conversion, real server, real clients."""

from __future__ import annotations

import functools
import http.server
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"


def versions(repository: pathlib.Path, model: str) -> list[str]:
    return sorted(p.name for p in (repository / model).iterdir() if p.name.isdigit())


def up_until_it_ends(model: dict, directory: pathlib.Path, repository: pathlib.Path,
                     timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`modelkiln up` on `model` written to DIRECTORY/model.yaml, when it is expected to exit."""
    path = directory / "model.yaml"
    path.write_text(yaml.safe_dump(model))
    return subprocess.run(
        [sys.executable, "-m", "modelkiln.cli", "up", "-f", str(path),
         "--repository", str(repository)], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})})


def test_up_serves_correct_predictions_over_rest_and_grpc(start_up, repository):
    samples = np.load(DIGITS / "samples.npz")
    inputs, labels = samples["input"].astype(np.float32), samples["labels"]
    up = start_up("-f", str(DIGITS / "fp32.yaml"), "--predict", str(DIGITS / "samples.npz"),
            repository=repository)
    try:
        up.wait_for("Serving.")
        assert "correct" in up.output and "true" in up.output
        assert f"curl -s http://127.0.0.1:{up.http_port}/v2/models/digits/infer" in up.output

        request = {"inputs": [{"name": "input", "shape": list(inputs.shape), "datatype": "FP32",
                               "data": inputs.ravel().tolist()}]}
        reply = httpx.post(f"http://127.0.0.1:{up.http_port}/v2/models/digits/infer",
                           json=request, timeout=30).json()
        output = reply["outputs"][0]
        rest_top1 = np.asarray(output["data"]).reshape(output["shape"]).argmax(axis=1)
        assert (rest_top1 == labels).mean() >= 0.9

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{up.grpc_port}")
        tensor = grpcclient.InferInput("input", list(inputs.shape), "FP32")
        tensor.set_data_from_numpy(inputs)
        result = client.infer("digits", [tensor])
        grpc_top1 = result.as_numpy(output["name"]).argmax(axis=1)
        np.testing.assert_array_equal(grpc_top1, rest_top1)
    finally:
        assert up.stop() == 0, up.output
    assert "draining" in up.output


def test_second_up_reuses_the_artifact(start_up, repository):
    first = start_up("-f", str(DIGITS / "fp32.yaml"), repository=repository)
    first.wait_for("Serving.")
    assert first.stop() == 0
    assert "converted version 1" in first.output

    second = start_up("-f", str(DIGITS / "fp32.yaml"), repository=repository)
    second.wait_for("Serving.")
    assert second.stop() == 0
    assert "reused version 1" in second.output
    assert versions(repository, "digits") == ["1"]


def test_invalid_model_is_rejected_with_the_crd_message_and_nothing_converted(
        repository, tmp_path):
    model = yaml.safe_load((DIGITS / "fp16.yaml").read_text())
    model["spec"]["conversion"]["calibration"] = {"uri": "file://calibration.npz"}
    shutil.copy(DIGITS / "model.onnx", tmp_path / "model.onnx")
    result = up_until_it_ends(model, tmp_path, repository, timeout=120)
    assert result.returncode == 1
    assert "calibration is only valid with precision INT8" in result.stderr
    assert not repository.exists() or not any(repository.iterdir())


def test_missing_device_is_refused_unless_a_fallback_is_given(start_up, repository):
    result = subprocess.run(
        [sys.executable, "-m", "modelkiln.cli", "up", "-f", str(DIGITS / "gpu.yaml"),
         "--repository", str(repository)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "spec.serving.device is GPU" in result.stderr and "--device-fallback" in result.stderr

    up = start_up("-f", str(DIGITS / "gpu.yaml"), "--device-fallback", "CPU", repository=repository)
    try:
        up.wait_for("Serving.")
        assert "serving on CPU as --device-fallback asks" in up.output
    finally:
        assert up.stop() == 0


def test_a_failed_conversion_prints_its_cause_and_leaves_no_version(repository, tmp_path):
    model = yaml.safe_load((DIGITS / "fp32.yaml").read_text())
    (tmp_path / "model.onnx").write_bytes((DIGITS / "model.onnx").read_bytes()[:200])  # truncated
    result = up_until_it_ends(model, tmp_path, repository)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("modelkiln up: digits: conversion failed: ")
    assert "ONNX" in last
    # Nothing half-written: no version, no staging directory.
    left = list((repository / "digits").iterdir()) if (repository / "digits").exists() else []
    assert left == []


def test_a_ca_config_map_is_noted_as_cluster_only(repository, tmp_path):
    model = yaml.safe_load((DIGITS / "fp32.yaml").read_text())
    model["spec"]["source"]["caConfigMap"] = {"name": "internal-ca"}
    (tmp_path / "model.onnx").write_bytes((DIGITS / "model.onnx").read_bytes()[:200])  # fails fast
    result = up_until_it_ends(model, tmp_path, repository)
    assert ("modelkiln up: digits: source.caConfigMap is a cluster ConfigMap; here the machine's CAs "
            "(and SSL_CERT_FILE) are trusted") in result.stderr.splitlines()


def noted(model: dict, tmp_path, repository, field: str) -> list[str]:
    """The lines `modelkiln up` printed about `field` for `model` (whose source fails fast)."""
    (tmp_path / "model.onnx").write_bytes((DIGITS / "model.onnx").read_bytes()[:200])
    result = up_until_it_ends(model, tmp_path, repository)
    return [line for line in result.stderr.splitlines() if field in line]


def test_autoscaling_is_noted_in_one_line_as_what_one_process_does_not_do(repository, tmp_path):
    model = yaml.safe_load((DIGITS / "fp32.yaml").read_text())
    del model["spec"]["serving"]["replicas"]
    model["spec"]["serving"]["autoscaling"] = {"minReplicas": 0, "maxReplicas": 4, "targetInflightRequests": 2,
                                               "idleSeconds": 60}
    assert noted(model, tmp_path, repository, "spec.serving.autoscaling") == [
        "modelkiln up: digits: spec.serving.autoscaling is ignored: modelkiln up serves each model from "
        "one process that never scales (in a cluster the same YAML scales)"]


def test_a_shadow_rollout_is_noted_in_one_line_as_cluster_only(repository, tmp_path):
    model = yaml.safe_load((DIGITS / "fp32.yaml").read_text())
    model["spec"]["serving"]["rollout"] = {"strategy": "Shadow"}
    assert noted(model, tmp_path, repository, "spec.serving.rollout") == [
        "modelkiln up: digits: spec.serving.rollout.strategy Shadow is ignored: modelkiln up serves a "
        "new conversion at once (in a cluster it is analysed on live traffic first)"]


def test_a_rollout_is_validated_by_up_with_the_api_servers_message(repository, tmp_path):
    model = yaml.safe_load((DIGITS / "fp32.yaml").read_text())
    model["spec"]["serving"]["rollout"] = {"strategy": "Shadow", "steps": [10]}
    result = up_until_it_ends(model, tmp_path, repository)
    assert result.returncode != 0
    assert ('spec.serving.rollout.steps: Invalid value: "object": rollout.steps is only valid with strategy Canary'
            in result.stderr)


def test_download_limits_apply_and_credentials_in_the_uri_are_never_shown(repository, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(DIGITS / "model.onnx", served / "model.onnx")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    model = yaml.safe_load((DIGITS / "fp32.yaml").read_text())
    model["spec"]["source"] = {"uri": f"http://reader:pa55word@{host}/model.onnx?X-Amz-Signature=s3cr3t",
                               "maxBytes": 100}
    try:
        result = up_until_it_ends(model, tmp_path, repository, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    shown = f"http://***@{host}/model.onnx?***"
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("modelkiln up: digits: FP32 artifact ") and lines[0].endswith(f" of {shown}")
    assert lines[-1] == (f"modelkiln up: digits: conversion failed: cannot download {shown}: the server announces "
                         f"{(DIGITS / 'model.onnx').stat().st_size} bytes, over the size cap of 100 bytes; raise it "
                         "with --max-download-bytes N (in a cluster, spec.source.maxBytes)")
    assert "pa55word" not in result.stdout + result.stderr and "s3cr3t" not in result.stdout + result.stderr


def test_tls_and_auth_are_refused_as_cluster_only_before_converting(repository, tmp_path):
    model = yaml.safe_load((DIGITS / "fp32.yaml").read_text())
    model["spec"]["serving"] = {"tls": {"secretName": "digits-tls"},
                                "auth": {"tokenSecret": {"name": "digits-tokens"}}}
    shutil.copy(DIGITS / "model.onnx", tmp_path / "model.onnx")
    result = up_until_it_ends(model, tmp_path, repository)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-2:] == [
        "modelkiln up: digits: spec.serving.tls is cluster-only (it names a Secret); remove it to run "
        "this model with modelkiln up, or serve the repository with modelkiln serve --tls-cert FILE "
        "--tls-key FILE",
        "digits: spec.serving.auth is cluster-only (it names a Secret); remove it to run this model "
        "with modelkiln up, or serve the repository with modelkiln serve --auth-token-file FILE"]
    assert not (repository / "digits").exists()


def test_object_storage_credentials_come_from_this_environment_with_a_note(repository, tmp_path):
    model = yaml.safe_load((DIGITS / "fp32.yaml").read_text())
    model["spec"]["source"] = {"uri": "s3://models/digits.onnx", "credentials": {"secretName": "s3-keys"}}
    with socket.socket() as closed:         # an endpoint nobody listens on: the store is unreachable
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    result = up_until_it_ends(model, tmp_path, repository, env={
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "reader", "AWS_SECRET_ACCESS_KEY": "not-shown-1234",
        "MODELKILN_FETCH_RETRIES": "1", "MODELKILN_FETCH_BACKOFF": "0.05"})
    assert ("modelkiln up: digits: source.credentials and serviceAccountName are cluster objects; here the "
            "standard variables of this environment are used (AWS_*, GOOGLE_*, AZURE_*)") in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("modelkiln up: digits: conversion failed: cannot read s3://models/digits.onnx: ")
    assert endpoint in last and "not-shown-1234" not in result.stderr


def test_a_name_the_api_server_refuses_is_refused_with_its_message_and_nothing_written(
        repository, tmp_path):
    # The name becomes a directory under --repository: "../x" would put the model beside it.
    model = yaml.safe_load((DIGITS / "fp32.yaml").read_text())
    model["metadata"]["name"] = "../x"
    shutil.copy(DIGITS / "model.onnx", tmp_path / "model.onnx")
    result = up_until_it_ends(model, tmp_path, repository, timeout=120)
    assert result.returncode == 1
    assert ('metadata.name: Invalid value: "../x": a lowercase RFC 1123 subdomain must consist of '
            "lower case alphanumeric characters, '-' or '.', and must start and end with an "
            "alphanumeric character (e.g. 'example.com', regex used for validation is "
            r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')") in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.yaml"]


def test_up_with_precision_auto_measures_here_prints_the_table_and_serves_the_choice(start_up, repository):
    up = start_up("-f", str(DIGITS / "auto.yaml"), repository=repository)
    try:
        up.wait_for("Serving.")
    finally:
        assert up.stop() == 0, up.output
    assert "modelkiln up: digits-auto: precision Auto measured on this machine:" in up.output
    meta = json.loads((repository / "digits-auto" / "1" / "modelkiln.json").read_text())
    chosen, rows = meta["auto"]["chosen"], meta["auto"]["candidates"]
    assert f"  chosen: {meta['auto']['why']}" in up.output
    for row in rows:        # every candidate on a line of its own, the chosen one marked
        line = next(line for line in up.lines if line.startswith(f"  {row['name']} "))
        assert line.rstrip().endswith("chosen") == (row["name"] == chosen)
    # the server runs the inference precision Auto chose (the spec leaves it at auto)
    assert "model digits-auto version 1 loaded in " in up.output
    assert f"(inference precision {meta['inferencePrecision']}, " in up.output
    assert chosen.endswith("/" + meta["inferencePrecision"])


def test_up_refuses_auto_input_the_api_server_refuses_with_its_messages(repository, tmp_path):
    model = yaml.safe_load((DIGITS / "auto.yaml").read_text())
    del model["spec"]["conversion"]["calibration"]      # keepFloat shapes an INT8 candidate it cannot build
    model["spec"]["conversion"].update(keepFloat={"types": ["MatMul"]}, objective="speed")
    shutil.copy(DIGITS / "model.onnx", tmp_path / "model.onnx")
    result = up_until_it_ends(model, tmp_path, repository, timeout=120)
    assert result.returncode == 1
    assert ('spec.conversion.objective: Unsupported value: "speed": supported values: "throughput", "latency"'
            in result.stderr)
    model["spec"]["conversion"]["objective"] = "latency"
    result = up_until_it_ends(model, tmp_path, repository, timeout=120)
    assert ('spec.conversion: Invalid value: "object": keepFloat with precision Auto shapes its INT8 candidate, '
            "which needs calibration: set calibration.uri, or calibration.synthetic: true") in result.stderr
    assert not repository.exists() or not any(repository.iterdir())
