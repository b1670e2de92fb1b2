"""ModelKiln on a real node: the chart's operator, conversion Jobs and model servers as real containers.

A control plane of its own whose CPU pool is one real node (`real_node.py`: containerd, runc,
CNI, kubelet, kube-proxy on this machine) next to kwok's simulated GPU and NPU pools. The images
are this checkout's, built with buildah and imported into the node's containerd; the chart is
installed with them, so the operator runs as a pod with the chart's ServiceAccount, RBAC and
in-cluster configuration. Clients call the models through their ClusterIP Services, as a pod
would (kube-proxy's rules route the host's own connections too). The tests run in file order
and share the release.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml

import modelkiln_setup as setup
import real_node as rn
from serving_clients import routed
from control_plane import Kubectl, eventually
from modelkiln_setup import REPOSITORY_CLAIM, digits_example

pytestmark = pytest.mark.real_node

NAMESPACE, OPERATOR = setup.REAL_NODE_RELEASE_NAMESPACE, setup.REAL_NODE_OPERATOR
MODELS, UPLOADS, DIGITS = setup.REAL_NODE_MODELS, setup.UPLOADS, setup.DIGITS
READY_TIMEOUT = 300


@pytest.fixture(scope="module")
def release(real_node_cluster) -> Kubectl:
    """The chart installed with the locally built images, models' claims ready."""
    kubectl, _, work, helm = real_node_cluster
    setup.install_on_real_node(kubectl, helm, work)
    return kubectl


def operator_log(kubectl: Kubectl) -> str:
    return kubectl.run("logs", "-n", NAMESPACE, f"deployment/{OPERATOR}", "--tail=60", check=False).stdout


def apply_and_wait_ready(kubectl: Kubectl, manifest: str, name: str) -> dict:
    kubectl.run("apply", "-n", MODELS, "-f", "-", input=manifest)
    result = kubectl.run("wait", "-n", MODELS, "--for=condition=Ready", f"--timeout={READY_TIMEOUT}s",
                         f"inferencemodel/{name}", check=False, timeout=READY_TIMEOUT + 30)
    assert result.returncode == 0, (result.stderr, kubectl.get_json("inferencemodel", name, namespace=MODELS)
                                    .get("status"), operator_log(kubectl))
    return kubectl.get_json("inferencemodel", name, namespace=MODELS)


def pods_of(kubectl: Kubectl, name: str, component: str) -> list[dict]:
    return kubectl.items("pods", namespace=MODELS,
                         selector=f"modelkiln.io/model={name},app.kubernetes.io/component={component}")


def cluster_ip(kubectl: Kubectl, name: str) -> str:
    return kubectl.get_json("service", name, namespace=MODELS)["spec"]["clusterIP"]


def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    samples = np.load(DIGITS / "samples.npz")
    return samples["input"].astype(np.float32), samples["labels"]


class Client:
    """tritonclient over HTTP through a Service, one request after another in a thread: what a
    caller sees while the model changes under it."""

    def __init__(self, address: str, model: str) -> None:
        self.address, self.model = address, model
        self.versions: list[str] = []
        self.answers = 0
        self.failures: list[str] = []
        self.last_error = ""
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        images, _ = held_out_digits()
        client = httpclient.InferenceServerClient(self.address, connection_timeout=2, network_timeout=10)
        while not self.stopping.is_set():
            inp = httpclient.InferInput("input", [1, 64], "FP32")
            inp.set_data_from_numpy(images[self.answers % len(images)][None])  # varied, as traffic is
            try:
                version = client.infer(self.model, [inp]).get_response()["model_version"]
            except Exception as exc:  # noqa: BLE001 - every failure a caller would see counts
                # ... once the Service answered: kube-proxy programs a new Service a moment after
                # its first pod is Ready, and refuses connections until then.
                self.last_error = f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}"
                if self.answers:
                    self.failures.append(self.last_error)
            else:
                self.answers += 1
                if not self.versions or self.versions[-1] != version:
                    self.versions.append(version)
            time.sleep(0.02)

    def __enter__(self) -> "Client":
        routed(self.address, self.model)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.answers and time.monotonic() < deadline:
            time.sleep(0.2)
        assert self.answers, f"no answer through the Service in 60 s; the client's last error: {self.last_error}"
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)


def test_the_operator_runs_as_a_pod_with_the_charts_service_account(release):
    kubectl = release
    (pod,) = kubectl.items("pods", namespace=NAMESPACE, selector="app.kubernetes.io/component=operator")
    assert pod["spec"]["nodeName"] == rn.NODE_NAME
    assert pod["spec"]["serviceAccountName"] == OPERATOR
    assert pod["spec"]["containers"][0]["image"] == "localhost/modelkiln/operator:0.1.0"
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])
    # In-cluster configuration: it reached the API server through kubernetes.default and announced
    # itself on the chart's peering object.
    peering = eventually("the operator on its peering object",
                         lambda: kubectl.get_json("clusterkopfpeering", "modelkiln").get("status"))
    assert peering


def test_the_digits_example_from_a_pvc_converts_serves_and_answers_tritonclient(release):
    kubectl = release
    model = apply_and_wait_ready(kubectl, digits_example("digits", f"pvc://{UPLOADS}/digits/model.onnx"), "digits")
    (job_pod,) = pods_of(kubectl, "digits", "conversion")
    (terminated,) = [s["state"]["terminated"] for s in job_pod["status"]["containerStatuses"]]
    assert terminated["exitCode"] == 0 and job_pod["spec"]["nodeName"] == rn.NODE_NAME
    assert job_pod["spec"]["containers"][0]["image"] == "localhost/modelkiln/converter:0.1.0"
    assert json.loads(terminated["message"].splitlines()[-1])["version"] == model["status"]["artifact"]["version"]
    (server,) = pods_of(kubectl, "digits", "serving")
    assert server["spec"]["containers"][0]["image"] == "localhost/modelkiln/server:0.1.0"
    assert server["spec"]["nodeName"] == rn.NODE_NAME

    images, labels = held_out_digits()
    ip = cluster_ip(kubectl, "digits")
    routed(f"{ip}:8080", "digits")
    http = httpclient.InferenceServerClient(f"{ip}:8080")
    inp = httpclient.InferInput("input", list(images.shape), "FP32")
    inp.set_data_from_numpy(images, binary_data=True)
    by_http = http.infer("digits", [inp]).as_numpy("label")
    grpc = grpcclient.InferenceServerClient(f"{ip}:8081")
    ginp = grpcclient.InferInput("input", list(images.shape), "FP32")
    ginp.set_data_from_numpy(images)
    by_grpc = grpc.infer("digits", [ginp]).as_numpy("label")
    # The source model's own answers (ONNX Runtime on the host), and they are mostly right.
    expected = onnxruntime.InferenceSession(str(DIGITS / "model.onnx")).run(["label"], {"input": images})[0]
    assert list(by_http) == list(expected) and list(by_grpc) == list(expected)
    assert np.mean(by_http == labels) > 0.9


def test_a_source_on_the_repository_claim_itself_converts(release):
    kubectl = release
    model = apply_and_wait_ready(
        kubectl, digits_example("digits-inbox", f"pvc://{REPOSITORY_CLAIM}/incoming/digits.onnx"), "digits-inbox")
    assert model["status"]["artifact"]["version"] == 1
    (job_pod,) = pods_of(kubectl, "digits-inbox", "conversion")
    claims = [v["persistentVolumeClaim"]["claimName"] for v in job_pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [REPOSITORY_CLAIM]


def test_the_pods_run_as_uid_1000_on_a_read_only_root_and_openvino_caches_compiled_models(release):
    kubectl = release
    (server,) = pods_of(kubectl, "digits", "serving")
    script = ("import os, pathlib\n"
              "print(os.getuid(), os.getgid())\n"
              "try:\n    open('/written', 'w')\nexcept OSError as e:\n    print(e.strerror)\n"
              "print(sum(1 for p in pathlib.Path('/var/cache/modelkiln').rglob('*') if p.is_file()))\n")
    out = kubectl.run("exec", "-n", MODELS, server["metadata"]["name"], "--", "python", "-c", script).stdout.split("\n")
    assert out[0] == "1000 1000"
    assert out[1] == "Read-only file system"
    assert int(out[2]) >= 1, "OpenVINO wrote nothing to its cache directory"


def test_the_server_image_has_no_telemetry_sender(release):
    # OpenVINO posts usage events through openvino_telemetry unless it cannot import it (README).
    kubectl = release
    (server,) = pods_of(kubectl, "digits", "serving")
    script = "import importlib.util, openvino\nprint(importlib.util.find_spec('openvino_telemetry'))"
    out = kubectl.run("exec", "-n", MODELS, server["metadata"]["name"], "--", "python", "-c", script).stdout
    assert out.strip() == "None"


def test_a_corrupt_model_fails_in_its_container_with_the_converters_cause_on_the_status(release):
    kubectl = release
    kubectl.run("apply", "-n", MODELS, "-f", "-", input=digits_example("broken", f"pvc://{UPLOADS}/broken.onnx"))
    kubectl.wait("inferencemodel/broken", "condition=Stalled", namespace=MODELS, timeout=READY_TIMEOUT)
    model = kubectl.get_json("inferencemodel", "broken", namespace=MODELS)
    converted = next(c for c in model["status"]["conditions"] if c["type"] == "Converted")
    (job_pod,) = pods_of(kubectl, "broken", "conversion")
    (terminated,) = [s["state"]["terminated"] for s in job_pod["status"]["containerStatuses"]]
    assert terminated["exitCode"] == 1
    cause = terminated["message"].strip()
    assert "\n" not in cause and "broken.onnx" in cause
    assert converted["status"] == "False" and converted["reason"] == "ConversionFailed"
    assert cause in converted["message"]
    assert model["status"]["phase"] == "Failed"


def test_a_precision_change_rolls_out_under_load_without_a_failed_request(release):
    kubectl = release
    apply_and_wait_ready(kubectl, digits_example("digits-live", f"pvc://{UPLOADS}/digits/model.onnx"), "digits-live")
    with Client(f"{cluster_ip(kubectl, 'digits-live')}:8080", "digits-live") as client:
        int8 = yaml.safe_load(digits_example("digits-live", f"pvc://{UPLOADS}/digits/model.onnx", precision="INT8"))
        int8["spec"]["conversion"]["calibration"] = {"uri": f"pvc://{UPLOADS}/digits/calibration.npz", "samples": 100}
        kubectl.apply(int8, namespace=MODELS)
        eventually("answers from the INT8 version", lambda: len(client.versions) > 1, timeout=READY_TIMEOUT)
        kubectl.wait("inferencemodel/digits-live", "condition=Ready", namespace=MODELS, timeout=READY_TIMEOUT)
        time.sleep(5)  # the old pod drains and goes while requests keep coming
    model = kubectl.get_json("inferencemodel", "digits-live", namespace=MODELS)
    assert model["status"]["artifact"]["precision"] == "INT8"
    # From version 1 to version 2 (while both pods serve, a new connection may land on either).
    assert client.versions[0] == "1" and client.versions[-1] == "2" and set(client.versions) == {"1", "2"}
    assert client.failures == [] and client.answers > 100


def test_a_serving_pod_deleted_under_load_fails_no_request(release):
    kubectl = release
    apply_and_wait_ready(kubectl, digits_example("digits-pair", f"pvc://{UPLOADS}/digits/model.onnx", replicas=2),
                         "digits-pair")
    assert kubectl.get_json("poddisruptionbudget", "digits-pair", namespace=MODELS)["spec"]["maxUnavailable"] == 1
    before = {p["metadata"]["name"] for p in pods_of(kubectl, "digits-pair", "serving")}
    with Client(f"{cluster_ip(kubectl, 'digits-pair')}:8080", "digits-pair") as client:
        victim = sorted(before)[0]
        kubectl.run("delete", "pod", "-n", MODELS, victim, "--wait=true", timeout=120)

        def replaced():
            pods = pods_of(kubectl, "digits-pair", "serving")
            ready = [p for p in pods if not p["metadata"].get("deletionTimestamp") and all(
                s["ready"] for s in p["status"].get("containerStatuses", [{"ready": False}]))]
            return len(ready) == 2 and victim not in {p["metadata"]["name"] for p in ready}
        eventually("a replacement pod Ready", replaced, timeout=READY_TIMEOUT)
    assert client.failures == [] and client.answers > 100
    assert client.versions == ["1"]


def test_a_model_with_tls_and_a_token_secret_gets_ready_over_https_and_needs_the_token(release, tmp_path):
    kubectl = release
    host, token = f"digits-tls.{MODELS}.svc", "e2e-token"
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={host}",
                    "-addext", f"subjectAltName=DNS:{host}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    kubectl.run("create", "secret", "tls", "digits-tls", "-n", MODELS, f"--cert={cert}", f"--key={key}")
    kubectl.run("create", "secret", "generic", "digits-tokens", "-n", MODELS, f"--from-literal=token={token}")
    # Ready: the kubelet's HTTPS probes answered, through the Secrets mounted for uid 1000
    model = apply_and_wait_ready(kubectl, digits_example(
        "digits-tls", f"pvc://{UPLOADS}/digits/model.onnx", tls={"secretName": "digits-tls"},
        auth={"tokenSecret": {"name": "digits-tokens"}}), "digits-tls")
    assert model["status"]["endpoints"]["rest"] == f"https://{host}:8080"
    ip = cluster_ip(kubectl, "digits-tls")

    def curl(path: str, *args: str) -> tuple[str, str]:
        result = subprocess.run(["curl", "-sS", "--cacert", str(cert), "--resolve", f"{host}:8080:{ip}",
                                 "-o", "-", "-w", "\n%{http_code}", *args, f"https://{host}:8080{path}"],
                                capture_output=True, text=True, timeout=30)
        body, _, status = result.stdout.rpartition("\n")
        return status, body + result.stderr
    eventually("the Service routed over https", lambda: curl("/v2/health/ready")[0] == "200", timeout=60)
    assert curl("/v2/models/digits-tls")[0] == "401"
    status, body = curl("/v2/models/digits-tls", "-H", f"Authorization: Bearer {token}")
    assert status == "200" and json.loads(body)["name"] == "digits-tls", body

    images, _ = held_out_digits()
    grpc = grpcclient.InferenceServerClient(f"{ip}:8081", ssl=True, root_certificates=str(cert),
                                            channel_args=[("grpc.ssl_target_name_override", host)])
    ginp = grpcclient.InferInput("input", list(images.shape), "FP32")
    ginp.set_data_from_numpy(images)
    expected = onnxruntime.InferenceSession(str(DIGITS / "model.onnx")).run(["label"], {"input": images})[0]
    labels = grpc.infer("digits-tls", [ginp], headers={"authorization": f"Bearer {token}"}).as_numpy("label")
    assert list(labels) == list(expected)
    kubectl.run("delete", "inferencemodel", "digits-tls", "-n", MODELS, "--wait=true", timeout=120)


def test_deleting_a_model_removes_its_pods_job_and_services(release):
    kubectl = release
    kubectl.run("delete", "inferencemodel", "digits-inbox", "-n", MODELS, "--wait=true", timeout=120)

    def gone():
        left = kubectl.run("get", "pods,jobs,services,deployments", "-n", MODELS, "-l",
                           "modelkiln.io/model=digits-inbox", "-o", "name").stdout.split()
        return left == []
    eventually("the model's children garbage-collected", gone, timeout=120)


@pytest.fixture(scope="module")
def sagemaker_bucket():
    """An S3 server that checks credentials (moto with IAM) on the node's bridge, where pods reach
    the host, holding the digits model as SageMaker packs one: model.tar.gz."""
    sys.path.append(str(setup.REPO / "tests" / "converter"))
    from s3_server import S3Server

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(DIGITS / "model.onnx", arcname="1/model.onnx")
    server = S3Server(host=rn.GATEWAY, auth=True).start()
    server.put("sagemaker", {"digits/output/model.tar.gz": archive.getvalue()})
    yield server
    server.stop()


def test_a_sagemaker_archive_in_s3_converts_with_credentials_from_a_secret(release, sagemaker_bucket):
    kubectl = release
    keys = {**sagemaker_bucket.credentials(), "AWS_ENDPOINT_URL": sagemaker_bucket.url}
    kubectl.run("create", "secret", "generic", "s3-keys", "-n", MODELS,
                *[f"--from-literal={name}={value}" for name, value in keys.items()])
    model = yaml.safe_load(digits_example("digits-s3", "s3://sagemaker/digits/output/model.tar.gz"))
    model["spec"]["source"]["credentials"] = {"secretName": "s3-keys"}
    status = apply_and_wait_ready(kubectl, yaml.safe_dump(model), "digits-s3")["status"]
    assert status["artifact"]["version"] == 1 and status["artifact"]["keptVersions"] == [1]
    (job_pod,) = pods_of(kubectl, "digits-s3", "conversion")
    env = {e["name"]: e for e in job_pod["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-keys"
    log = kubectl.run("logs", "-n", MODELS, job_pod["metadata"]["name"]).stdout
    assert "downloaded s3://sagemaker/digits/output/model.tar.gz" in log and sagemaker_bucket.secret not in log
    # the operator referenced the Secret without being allowed to read it
    operator_account = f"system:serviceaccount:{NAMESPACE}:{OPERATOR}"
    can_read = kubectl.run("auth", "can-i", "get", "secrets", "-n", MODELS, "--as", operator_account, check=False)
    assert can_read.stdout.strip() == "no"


def test_a_wrong_secret_fails_in_one_line_naming_it_and_the_bucket(release, sagemaker_bucket):
    kubectl = release
    kubectl.run("create", "secret", "generic", "s3-wrong", "-n", MODELS,
                *[f"--from-literal={name}={value}" for name, value in
                  {**sagemaker_bucket.credentials(), "AWS_SECRET_ACCESS_KEY": "not-the-secret-0123"}.items()])
    model = yaml.safe_load(digits_example("digits-s3-wrong", "s3://sagemaker/digits/output/model.tar.gz"))
    model["spec"]["source"]["credentials"] = {"secretName": "s3-wrong"}
    kubectl.run("apply", "-n", MODELS, "-f", "-", input=yaml.safe_dump(model))
    kubectl.wait("inferencemodel/digits-s3-wrong", "condition=Stalled", namespace=MODELS, timeout=READY_TIMEOUT)
    converted = next(c for c in kubectl.get_json("inferencemodel", "digits-s3-wrong", namespace=MODELS)
                     ["status"]["conditions"] if c["type"] == "Converted")
    assert converted["message"] == (
        "access to s3://sagemaker/digits/output/model.tar.gz denied (SignatureDoesNotMatch): the credentials in "
        "AWS_ACCESS_KEY_ID from Secret 's3-wrong' (spec.source.credentials) are not accepted for bucket sagemaker")
