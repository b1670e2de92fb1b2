"""`--tls-cert/--tls-key` and `--auth-token-file`, proven with clients we did not write.

The certificate is made by openssl for 127.0.0.1; tritonclient (HTTP and gRPC) and curl trust
it through their own options. With a token file, inference and metadata need the bearer token
(401 / UNAUTHENTICATED without it), while probes and scrapers reach health and /metrics freely.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from runtime_helpers import MLP_B, MLP_W, Server

TOKEN = "s3cret-token-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
X = np.arange(8, dtype=np.float32).reshape(2, 4)


def make_certificate(cert: pathlib.Path, key: pathlib.Path) -> None:
    """A self-signed certificate for 127.0.0.1, as a user would make one with openssl."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "tls.crt", directory / "tls.key"
    make_certificate(cert, key)
    return cert, key


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "token"
    path.write_text(TOKEN + "\n")  # a Secret's file may end in a newline
    return path


@pytest.fixture(scope="module")
def secured(model_repository, certificate, token_file, tmp_path_factory):
    cert, key = certificate
    server = Server(model_repository, "--tls-cert", str(cert), "--tls-key", str(key),
                    "--auth-token-file", str(token_file),
                    log=tmp_path_factory.mktemp("logs") / "server.log")
    try:
        wait_ready(server, cert)
        yield server
    finally:
        server.stop()


def curl(server, cert, path: str, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        ["curl", "-sS", "--cacert", str(cert), "-o", "-", "-w", "\n%{http_code}", *args,
         f"https://127.0.0.1:{server.http_port}{path}"],
        capture_output=True, text=True, timeout=30)
    body, _, status = result.stdout.rpartition("\n")
    return int(status or 0), body + result.stderr


def wait_ready(server, cert, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while curl(server, cert, "/v2/health/ready")[0] != 200:
        assert server.process.poll() is None, server.log()
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)


def http_client(server, cert) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}", ssl=True,
                                             ssl_options={"ca_certs": str(cert)})


def grpc_client(server, cert) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(server.grpc, ssl=True,
                                             root_certificates=str(cert))


def expected_scores() -> np.ndarray:
    return X @ MLP_W + MLP_B


def test_tritonclient_http_over_tls_with_the_token_infers(secured, certificate):
    inputs = [triton_http.InferInput("x", [2, 4], "FP32")]
    inputs[0].set_data_from_numpy(X, binary_data=True)
    result = http_client(secured, certificate[0]).infer("mlp", inputs, headers=BEARER)
    np.testing.assert_allclose(result.as_numpy("scores"), expected_scores(), rtol=1e-5)


def test_tritonclient_grpc_over_tls_with_the_token_infers(secured, certificate):
    client = grpc_client(secured, certificate[0])
    inputs = [triton_grpc.InferInput("x", [2, 4], "FP32")]
    inputs[0].set_data_from_numpy(X)
    result = client.infer("mlp", inputs, headers={"authorization": f"Bearer {TOKEN}"})
    np.testing.assert_allclose(result.as_numpy("scores"), expected_scores(), rtol=1e-5)
    assert client.get_model_metadata("mlp", headers={"authorization": f"Bearer {TOKEN}"}
                                      ).name == "mlp"


@pytest.mark.parametrize("headers, message", [
    ({}, "missing bearer token: send the header 'Authorization: Bearer <token>'"),
    ({"Authorization": "Bearer wrong"}, "invalid bearer token"),
    ({"Authorization": f"Basic {TOKEN}"}, "the Authorization header must be 'Bearer <token>'")])
def test_tritonclient_http_without_the_right_token_gets_401(secured, certificate, headers,
                                                           message):
    client = http_client(secured, certificate[0])
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("mlp", headers=headers)
    assert raised.value.status() == "401"
    assert raised.value.message() == message


@pytest.mark.parametrize("metadata", [{}, {"authorization": "Bearer wrong"}])
def test_tritonclient_grpc_without_the_right_token_is_unauthenticated(secured, certificate,
                                                                      metadata):
    client = grpc_client(secured, certificate[0])
    inputs = [triton_grpc.InferInput("x", [2, 4], "FP32")]
    inputs[0].set_data_from_numpy(X)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("mlp", inputs, headers=metadata)
    assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
    assert "bearer token" in raised.value.message()


def test_grpc_health_is_open_to_probes(secured, certificate):
    client = grpc_client(secured, certificate[0])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")


def test_curl_reaches_health_and_metrics_without_a_token_and_nothing_else(secured, certificate):
    cert = certificate[0]
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/mlp/ready",
                 "/v2/models/mlp/versions/1/ready", "/ping", "/metrics"):
        assert curl(secured, cert, path)[0] == 200, path
    for path in ("/v2", "/v2/models/mlp", "/v2/models/mlp/versions/1", "/v1/models/mlp",
                 "/v1/models/mlp/metadata"):
        status, body = curl(secured, cert, path)
        assert status == 401, (path, body)
        assert json.loads(body) == {"error": "missing bearer token: send the header "
                                             "'Authorization: Bearer <token>'"}
    status, body = curl(secured, cert, "/v2/models/mlp/infer", "-H", f"Authorization: Bearer "
                        f"{TOKEN}", "-H", "Content-Type: application/json", "--data",
                        json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                                                "data": X.ravel().tolist()}]}))
    assert status == 200, body
    np.testing.assert_allclose(np.array(json.loads(body)["outputs"][0]["data"]).reshape(2, 3),
                               expected_scores(), rtol=1e-5)


def test_plain_http_and_an_untrusted_certificate_are_refused(secured, certificate):
    result = subprocess.run(["curl", "-sS", f"https://127.0.0.1:{secured.http_port}/ping"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 60, result.stderr  # curl: peer certificate cannot be verified
    with grpc.insecure_channel(secured.grpc) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_rotated_token_is_accepted_without_a_restart(model_repository, certificate,
                                                       start_server, tmp_path):
    cert, key = certificate
    token_file = tmp_path / "token"
    token_file.write_text("old-token\n")
    server = start_server(model_repository, "--tls-cert", str(cert), "--tls-key", str(key),
                          "--auth-token-file", str(token_file))
    wait_ready(server, cert)
    assert curl(server, cert, "/v2/models/mlp", "-H", "Authorization: Bearer old-token")[0] == 200
    token_file.write_text("new-token\nold-token\n")  # during a rotation both are good
    time.sleep(1.2)
    assert curl(server, cert, "/v2/models/mlp", "-H", "Authorization: Bearer new-token")[0] == 200
    token_file.write_text("new-token\n")
    time.sleep(1.2)
    assert curl(server, cert, "/v2/models/mlp", "-H", "Authorization: Bearer old-token")[0] == 401


@pytest.mark.parametrize("flags, message", [
    (["--tls-cert", "CERT"], "--tls-cert and --tls-key go together: give both or neither"),
    (["--tls-cert", "KEY", "--tls-key", "KEY"], "not a PEM certificate and its private key"),
    (["--auth-token-file", "EMPTY"], "no token in the file; expected one token per line"),
    (["--auth-token-file", "MISSING"], "No such file or directory")])
def test_bad_tls_or_token_flags_exit_2_before_listening(model_repository, certificate, tmp_path,
                                                        flags, message):
    (tmp_path / "empty").write_text("\n")
    paths = {"CERT": str(certificate[0]), "KEY": str(certificate[1]),
             "EMPTY": str(tmp_path / "empty"), "MISSING": str(tmp_path / "missing")}
    result = subprocess.run([sys.executable, "-m", "modelkiln.cli", "serve", "--repository",
                             str(model_repository),
                             *[paths.get(flag, flag) for flag in flags]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1], result.stderr


def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(
        model_repository, start_server, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for directory in (old, new):
        directory.mkdir()
        make_certificate(directory / "tls.crt", directory / "tls.key")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(old / "tls.crt", cert)
    shutil.copy(old / "tls.key", key)
    server = start_server(model_repository, "--tls-cert", str(cert), "--tls-key", str(key))
    wait_ready(server, old / "tls.crt")
    assert curl(server, new / "tls.crt", "/v2/health/live")[0] == 0  # not trusted yet
    key.write_bytes((new / "tls.key").read_bytes())  # as a renewal in place, key first
    cert.write_bytes((new / "tls.crt").read_bytes())
    wait_ready(server, new / "tls.crt", timeout=10)
    assert curl(server, old / "tls.crt", "/v2/health/live")[0] == 0  # the old one is gone
    assert grpc_client(server, new / "tls.crt").is_server_live()
    with pytest.raises(InferenceServerException):
        grpc_client(server, old / "tls.crt").is_server_live(client_timeout=5)
