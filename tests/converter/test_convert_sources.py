"""Sources: a real HTTP server on loopback (including one that drops the connection), pvc://, checksums."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from conftest import DIGITS, metadata, version_dirs

FAST_RETRIES = {"MODELKILN_FETCH_RETRIES": "3", "MODELKILN_FETCH_BACKOFF": "0.05", "MODELKILN_FETCH_TIMEOUT": "5"}
MODEL_BYTES = (DIGITS / "model.onnx").read_bytes()


class ModelServer(http.server.ThreadingHTTPServer):
    """Serves `files` by path, honours Range requests, and can cut the first response short."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes], *, drop_first_response: bool = False,
                 stall: threading.Event | None = None) -> None:
        super().__init__(("127.0.0.1", 0), ModelRequestHandler)
        self.files = files
        self.drop_first_response = drop_first_response
        self.stall = stall      # when set: send half, then hang until the event is set
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"


class ModelRequestHandler(http.server.BaseHTTPRequestHandler):
    server: ModelServer

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.server.requests.append({"path": self.path, "range": self.headers.get("Range"),
                                     "authorization": self.headers.get("Authorization")})
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"]).group(1)) if self.headers["Range"] else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.server.stall is not None:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.server.stall.wait(timeout=120)
            return
        if self.server.drop_first_response and len(self.server.requests) == 1:
            self.wfile.write(body[:len(body) // 2])     # half the file, then the connection dies
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve():
    servers = []

    def start(files: dict[str, bytes], *, tls: tuple[pathlib.Path, pathlib.Path] | None = None,
              **kwargs) -> ModelServer:
        server = ModelServer(files, **kwargs)
        if tls:     # (certificate, key)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_http_source_is_downloaded_checked_and_recorded(convert, repo, serve):
    server = serve({"/models/digits.onnx": MODEL_BYTES})
    digest = hashlib.sha256(MODEL_BYTES).hexdigest()
    result = convert("--source", f"{server.url}/models/digits.onnx", "--sha256", digest,
                     "--output", repo / "digits", "--precision", "FP32")

    meta = metadata(result.summary["path"])
    assert meta["source"] == {"uri": f"{server.url}/models/digits.onnx", "sha256": digest, "format": "onnx"}
    assert f"downloaded {server.url}/models/digits.onnx: {len(MODEL_BYTES)} bytes" in result.stdout
    assert "100% of" in result.stdout       # plain progress lines, as in a pod's log


@pytest.mark.parametrize("trust", ["--ca-file", "SSL_CERT_FILE"])
def test_https_source_with_the_ca_given_is_downloaded(convert, repo, serve, self_signed, trust):
    server = serve({"/digits.onnx": MODEL_BYTES}, tls=self_signed)
    assert server.url.startswith("https://")
    ca = str(self_signed[0])
    result = convert("--source", f"{server.url}/digits.onnx", "--output", repo / "digits", "--precision", "FP32",
                     *(["--ca-file", ca] if trust == "--ca-file" else []),
                     env={"SSL_CERT_FILE": ca} if trust == "SSL_CERT_FILE" else {})
    assert metadata(result.summary["path"])["source"]["sha256"] == hashlib.sha256(MODEL_BYTES).hexdigest()


def test_untrusted_https_certificate_fails_at_once_naming_the_fix(convert, repo, serve, self_signed):
    server = serve({"/digits.onnx": MODEL_BYTES}, tls=self_signed)
    result = convert("--source", f"{server.url}/digits.onnx", "--output", repo / "digits", "--precision", "FP32",
                     env=FAST_RETRIES)
    assert result.returncode == 1       # permanent: no retry makes an unknown CA trusted
    assert result.cause == (f"cannot download {server.url}/digits.onnx: its TLS certificate is not trusted "
                            "(self-signed certificate); give the converter the CA that signed it "
                            "(--ca-file /path/to/ca.pem; in a cluster, spec.source.caConfigMap)")
    assert "attempt" not in result.stdout and version_dirs(repo / "digits") == []


@pytest.mark.parametrize("content", ["this is not a certificate\n", None], ids=["not PEM", "missing"])
def test_a_bad_ca_file_fails_before_any_download(convert, repo, serve, self_signed, tmp_path, content):
    server = serve({"/digits.onnx": MODEL_BYTES}, tls=self_signed)
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    result = convert("--source", f"{server.url}/digits.onnx", "--output", repo / "digits", "--precision", "FP32",
                     "--ca-file", ca)
    assert result.returncode == 1
    if content is None:
        assert result.cause == f"CA file {ca} not found"
    else:
        assert result.cause.startswith(f"CA file {ca} holds no PEM certificate (")
        assert result.cause.endswith("expected one or more '-----BEGIN CERTIFICATE-----' blocks")
    assert server.requests == [] and version_dirs(repo / "digits") == []


def test_dropped_connection_is_resumed_with_a_range_request(convert, repo, serve):
    server = serve({"/digits.onnx": MODEL_BYTES}, drop_first_response=True)
    result = convert("--source", f"{server.url}/digits.onnx", "--sha256", hashlib.sha256(MODEL_BYTES).hexdigest(),
                     "--output", repo / "digits", "--precision", "FP32", env=FAST_RETRIES)

    assert result.summary["version"] == 1
    assert [r["range"] for r in server.requests] == [None, f"bytes={len(MODEL_BYTES) // 2}-"]
    assert "attempt 1 of 3" in result.stdout


def test_unreachable_url_fails_transiently_after_retries(convert, repo):
    with socket.socket() as probe:      # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = convert("--source", f"http://127.0.0.1:{port}/model.onnx", "--output", repo / "m",
                     "--precision", "FP32", env=FAST_RETRIES)

    assert result.returncode == 3
    assert re.fullmatch(rf"cannot download http://127\.0\.0\.1:{port}/model\.onnx after 3 attempts: .*refused.*",
                        result.cause)
    assert version_dirs(repo / "m") == []


def test_missing_file_on_the_server_is_permanent(convert, repo, serve):
    server = serve({})
    result = convert("--source", f"{server.url}/nope.onnx", "--output", repo / "m", "--precision", "FP32",
                     env=FAST_RETRIES)
    assert result.returncode == 1
    assert result.cause == f"cannot download {server.url}/nope.onnx: HTTP 404 Not Found"
    assert len(server.requests) == 1       # no point retrying


def test_checksum_mismatch_names_both_digests(convert, repo):
    wrong = "0" * 64
    result = convert("--source", DIGITS / "model.onnx", "--sha256", wrong, "--output", repo / "m",
                     "--precision", "FP32")
    actual = hashlib.sha256(MODEL_BYTES).hexdigest()
    assert result.cause == (f"checksum mismatch for {DIGITS / 'model.onnx'}: expected sha256 {wrong}, got {actual}")
    assert result.returncode == 1


def test_pvc_source_resolves_under_the_claim_mount(convert, repo, tmp_path):
    claim = tmp_path / "mnt" / "models-claim" / "vision"
    claim.mkdir(parents=True)
    shutil.copy(DIGITS / "model.onnx", claim / "digits.onnx")
    result = convert("--source", "pvc://models-claim/vision/digits.onnx", "--output", repo / "m",
                     "--precision", "FP32", env={"MODELKILN_PVC_ROOT": str(tmp_path / "mnt")})
    assert metadata(result.summary["path"])["source"]["uri"] == "pvc://models-claim/vision/digits.onnx"


def test_credentials_and_signatures_in_a_uri_are_used_but_never_shown(convert, repo, serve):
    server = serve({"/digits.onnx?X-Amz-Signature=s3cr3t": MODEL_BYTES})
    host = server.url.removeprefix("http://")
    uri = f"http://reader:pa55word@{host}/digits.onnx?X-Amz-Signature=s3cr3t"
    ok = convert("--source", uri, "--output", repo / "d", "--precision", "FP32")
    assert server.requests[-1]["authorization"] == "Basic " + base64.b64encode(b"reader:pa55word").decode()
    meta = metadata(ok.summary["path"])
    assert meta["source"]["uri"] == f"http://***@{host}/digits.onnx?***"
    missing = convert("--source", uri.replace("digits", "absent"), "--output", repo / "d", "--precision", "FP32")
    assert missing.cause == f"cannot download http://***@{host}/absent.onnx?***: HTTP 404 Not Found"
    for shown in (ok.stdout, json.dumps(meta), missing.stdout, missing.cause):
        assert "pa55word" not in shown and "s3cr3t" not in shown


def test_a_pvc_path_cannot_leave_its_claim(convert, repo, tmp_path):
    # Another claim's file is there to be read: `..` and a link out of the claim must not reach it.
    mnt = tmp_path / "mnt"
    (mnt / "other-claim").mkdir(parents=True)
    shutil.copy(DIGITS / "model.onnx", mnt / "other-claim" / "secret.onnx")
    (mnt / "models-claim").mkdir()
    (mnt / "models-claim" / "link.onnx").symlink_to(mnt / "other-claim" / "secret.onnx")
    for uri in ("pvc://models-claim/../other-claim/secret.onnx", "pvc://models-claim/link.onnx"):
        result = convert("--source", uri, "--output", repo / "m", "--precision", "FP32",
                         env={"MODELKILN_PVC_ROOT": str(mnt)})
        assert result.returncode == 1
        assert result.cause == (f"source {uri} leaves its claim 'models-claim': a pvc:// path must stay inside "
                                "the claim (no '..' segments, no links out of it)")
    assert list((repo / "m").iterdir()) == []  # nothing published


def test_file_uri_and_missing_path(convert, repo, tmp_path):
    ok = convert("--source", (DIGITS / "model.onnx").as_uri(), "--output", repo / "m", "--precision", "FP32")
    assert ok.summary["version"] == 1
    missing = convert("--source", f"file://{tmp_path}/absent.onnx", "--output", repo / "m", "--precision", "FP32")
    assert missing.cause == f"source file://{tmp_path}/absent.onnx not found (looked at {tmp_path}/absent.onnx)"


def test_calibration_data_over_http(convert, repo, serve):
    server = serve({"/calibration.npz": (DIGITS / "calibration.npz").read_bytes()})
    result = convert("--source", DIGITS / "model.onnx", "--output", repo / "m", "--precision", "INT8",
                     "--calibration", f"{server.url}/calibration.npz", "--calibration-samples", "100")
    calibration = metadata(result.summary["path"])["calibration"]
    assert calibration["source"] == f"{server.url}/calibration.npz" and calibration["samples"] == 100


def test_sigterm_during_download_removes_staging_and_reports_it(repo, serve, tmp_path):
    stall = threading.Event()
    server = serve({"/digits.onnx": MODEL_BYTES}, stall=stall)
    log, scratch = tmp_path / "termination-log", tmp_path / "scratch"
    scratch.mkdir()
    converter = subprocess.Popen(
        [sys.executable, "-m", "modelkiln.cli", "convert", "--source", f"{server.url}/digits.onnx",
         "--output", str(repo / "digits"), "--precision", "FP32", "--termination-log", str(log),
         "--scratch", str(scratch)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):    # until the download has started and hangs
            if server.requests and list(scratch.glob("modelkiln-convert-*/*.part")):
                break
            time.sleep(0.1)
        # downloaded into the scratch space, next to an empty staging directory in the repository
        assert list(scratch.glob("modelkiln-convert-*/*.part")), "the converter never started downloading"
        assert [list(p.iterdir()) for p in (repo / "digits").glob(".tmp-*")] == [[]]
        converter.send_signal(signal.SIGTERM)
        _, err = converter.communicate(timeout=60)
    finally:
        stall.set()
        converter.kill()

    assert converter.returncode == 3
    assert err.strip() == "modelkiln convert: terminated by SIGTERM before the conversion finished"
    assert log.read_text() == "terminated by SIGTERM before the conversion finished"
    assert version_dirs(repo / "digits") == []     # the staging directory is gone
    assert list(scratch.iterdir()) == []             # and so is the partial download


def test_download_on_a_terminal_draws_a_progress_bar(repo, serve):
    import pty

    server = serve({"/digits.onnx": MODEL_BYTES})
    leader, follower = pty.openpty()
    converter = subprocess.Popen(
        [sys.executable, "-m", "modelkiln.cli", "convert", "--source", f"{server.url}/digits.onnx",
         "--output", str(repo / "digits"), "--precision", "FP32", "--termination-log", str(repo.parent / "log")],
        stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:     # the terminal closed with the process
            break
        if not chunk:
            break
        screen += chunk
    converter.wait(timeout=120)
    os.close(leader)

    assert converter.returncode == 0
    assert f"\r[{'#' * 30}] 100% of {len(MODEL_BYTES)} bytes".encode() in screen
    assert b"downloading " not in screen      # the plain log lines are for logs, not terminals
