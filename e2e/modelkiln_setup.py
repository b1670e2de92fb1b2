"""Putting ModelKiln on a cluster for the e2e tests: CRD, manifests, the operator process.

The operator runs from this checkout (`python -m modelkiln.cli operator`) so a test sees the
code under review, not an image, and it runs with a token of the ServiceAccount that the
manifests give it, so missing RBAC shows up here as it would in a real cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import control_plane as cp

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "modelkiln"
DIGITS = REPO / "examples" / "digits"
OPERATOR_NAMESPACE = "modelkiln-system"
OPERATOR_SERVICE_ACCOUNT = "modelkiln-operator"
REPOSITORY_CLAIM = "modelkiln-models"  # MODELKILN_REPOSITORY_CLAIM, as in manifests/operator.yaml


def inference_model(name: str, *, source: str = "file:///models/digits.onnx", precision: str = "FP32",
                    device: str = "CPU", **serving) -> dict:
    """An InferenceModel manifest; `serving` holds spec.serving fields besides the device."""
    conversion = {"precision": precision}
    if precision == "INT8":
        conversion["calibration"] = {"synthetic": True}
    return {
        "apiVersion": "modelkiln.io/v1alpha1", "kind": "InferenceModel", "metadata": {"name": name},
        "spec": {"source": {"uri": source, "format": "onnx"}, "conversion": conversion,
                 "serving": {"device": device, **serving}},
    }


def install_modelkiln(kubectl: cp.Kubectl, repo: Path) -> None:
    """Apply the kustomize base (CRDs included), minus the in-cluster operator (we run ours)."""
    kubectl.run("apply", "-k", str(repo / "manifests"))
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    # The base's operator Deployment would only get a simulated pod on a kwok node.
    kubectl.run("scale", "deployment", "--all", "-n", OPERATOR_NAMESPACE, "--replicas=0")


def service_account_kubeconfig(kubectl: cp.Kubectl, path: Path, *, namespace: str = OPERATOR_NAMESPACE,
                               name: str = OPERATOR_SERVICE_ACCOUNT) -> Path:
    """A kubeconfig holding a token of that ServiceAccount."""
    token = kubectl.run("create", "token", name, "-n", namespace, "--duration=24h").stdout.strip()
    config = json.loads(kubectl.run("config", "view", "--minify", "--raw", "-o", "json").stdout)
    return cp.write_kubeconfig(path, cluster=config["clusters"][0]["cluster"], token=token)


def host_claim(*, volume: str, path: Path | str, namespace: str, claim: str) -> list[dict]:
    """A claim and a hostPath PersistentVolume pre-bound to it, as large as the chart's default claim.

    No storage provisioner runs here, so the PersistentVolume is made by hand and names its claim;
    the controller-manager's volume binder binds the pair when the claim appears.
    """
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume",
         "metadata": {"name": volume},
         "spec": {"capacity": {"storage": "20Gi"}, "accessModes": ["ReadWriteMany"],
                  "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                  "hostPath": {"path": str(path)},
                  "claimRef": {"namespace": namespace, "name": claim}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": claim, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": volume,
                  "resources": {"requests": {"storage": "20Gi"}}}},
    ]


def model_repository(namespace: str) -> list[dict]:
    """The model repository claim every InferenceModel namespace needs, and a volume pre-bound to it
    (kwok's pods never write to it)."""
    return host_claim(volume=f"models-{namespace}", path=f"/srv/modelkiln/{namespace}", namespace=namespace,
                      claim=REPOSITORY_CLAIM)


def create_model_namespace(kubectl: cp.Kubectl, name: str) -> None:
    """A namespace ready for InferenceModels: default ServiceAccount and a Bound repository claim.

    Waiting for Bound matters: a conversion pod created before the binding is marked unschedulable
    ("unbound immediate PersistentVolumeClaims") and may wait minutes for the scheduler's retry.
    """
    kubectl.run("create", "namespace", name)
    kubectl.wait("serviceaccount/default", "create", namespace=name, timeout=60)
    for obj in model_repository(name):
        kubectl.apply(obj)
    kubectl.wait(f"pvc/{REPOSITORY_CLAIM}", "jsonpath={.status.phase}=Bound", namespace=name, timeout=120)


def delete_model_namespace(kubectl: cp.Kubectl, name: str) -> None:
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)
    kubectl.run("delete", "persistentvolume", f"models-{name}", "--wait=false", check=False)


@dataclass
class OperatorProcess:
    """`modelkiln operator` as a subprocess that a test may restart."""

    argv: list[str]
    kubeconfig: Path
    log_dir: Path
    resync_seconds: float = 2.0  # MODELKILN_RESYNC_SECONDS: 2 s keeps tests short (manifests: 10)
    starts: int = 0
    process: cp.Process | None = field(default=None, repr=False)

    def start(self) -> None:
        self.starts += 1
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "MODELKILN_NAMESPACE": OPERATOR_NAMESPACE,
               "MODELKILN_REPOSITORY_CLAIM": REPOSITORY_CLAIM, "MODELKILN_RESYNC_SECONDS": str(self.resync_seconds)}
        self.process = cp.spawn(f"operator-{self.starts}", self.argv, log_dir=self.log_dir, env=env)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost node would: no cleanup, no goodbye to its peers."""
        os.killpg(self.process.popen.pid, signal.SIGKILL)
        self.process.popen.wait(timeout=30)

    def log(self) -> str:
        return self.process.tail(80) if self.process else ""


def operator_process(kubectl: cp.Kubectl, work_dir: Path, *, resync_seconds: float = 2.0,
                     metrics_port: int = 0, verbose: bool = True, workers: int | None = None) -> OperatorProcess:
    """`modelkiln operator` from this checkout, with its ServiceAccount's token (not started);
    `verbose` (kopf's line per handler run, for a failing test's log) or as deployed; `workers`: its --workers."""
    work_dir.mkdir(parents=True, exist_ok=True)
    return OperatorProcess(
        argv=[sys.executable, "-m", "modelkiln.cli", "operator", *(["--verbose"] if verbose else []),
              f"--metrics-port={metrics_port}", f"--health-port={cp.free_port()}",
              *([f"--workers={workers}"] if workers else [])],
        kubeconfig=service_account_kubeconfig(kubectl, work_dir / "kubeconfig"),
        log_dir=work_dir, resync_seconds=resync_seconds,
    )


# --- ModelKiln on the real node (test_e2e_real_node.py, bench/real_node.py) -------------------
REAL_NODE_RELEASE = "kiln"
REAL_NODE_RELEASE_NAMESPACE = "modelkiln-system"
REAL_NODE_OPERATOR = f"{REAL_NODE_RELEASE}-modelkiln-operator"
REAL_NODE_MODELS = "models"
UPLOADS = "uploads"  # a second claim the models' sources are read from


def digits_example(name: str, source: str, *, precision: str = "FP32", **serving) -> str:
    """examples/digits/fp32.yaml with another name and source (and precision, serving fields)."""
    model = yaml.safe_load((DIGITS / "fp32.yaml").read_text())
    model["metadata"]["name"] = name
    model["spec"]["source"]["uri"] = source
    model["spec"]["conversion"]["precision"] = precision
    if "autoscaling" in serving:  # the CRD takes one or the other
        model["spec"]["serving"].pop("replicas", None)
    model["spec"]["serving"].update(serving)
    return yaml.safe_dump(model)


def owned_by_runtime_user(path: Path) -> Path:
    # hostPath volumes ignore fsGroup: the pods' user must own the files itself.
    path.mkdir(parents=True, exist_ok=True)
    for p in [path, *path.rglob("*")]:
        os.chown(p, 1000, 1000)
    return path


def install_on_real_node(kubectl: cp.Kubectl, helm, work: Path, *, values: dict | None = None) -> None:
    """`helm install` with the locally built images, and in REAL_NODE_MODELS the repository claim
    and an uploads claim holding the digits model, its calibration data and a corrupt model; one
    more copy of the model in the repository claim itself (`incoming/digits.onnx`). `values` adds
    chart values (top-level keys replaced)."""
    models = REAL_NODE_MODELS
    repository, uploads = work / "repository", work / "uploads"
    (uploads / "digits").mkdir(parents=True)
    for name in ("model.onnx", "calibration.npz"):
        shutil.copy(DIGITS / name, uploads / "digits" / name)
    (uploads / "broken.onnx").write_bytes(b"this is not an ONNX model\n" * 10)
    (repository / "incoming").mkdir(parents=True)
    shutil.copy(DIGITS / "model.onnx", repository / "incoming" / "digits.onnx")
    owned_by_runtime_user(repository), owned_by_runtime_user(uploads)

    kubectl.run("create", "namespace", models)
    kubectl.wait("serviceaccount/default", "create", namespace=models, timeout=60)
    # The chart makes the repository claim: only its volume here.
    kubectl.apply(host_claim(volume=f"{models}-repository", path=repository, namespace=models,
                             claim=REPOSITORY_CLAIM)[0])
    for obj in host_claim(volume=f"{models}-uploads", path=uploads, namespace=models, claim=UPLOADS):
        kubectl.apply(obj)
    values = {"image": {"registry": "localhost/modelkiln"},
              "operator": {"resyncSeconds": 2, "verbose": True},
              "repository": {"namespaces": [models], "storageClass": ""}, **(values or {})}
    helm.run("install", REAL_NODE_RELEASE, str(CHART), "-n", REAL_NODE_RELEASE_NAMESPACE, "--create-namespace",
             "--wait", "--timeout=5m", "--kubeconfig", str(kubectl.kubeconfig), values=values)
