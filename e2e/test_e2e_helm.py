"""The Helm chart on a real control plane: install, a model to Ready, upgrade, uninstall.

A control plane of its own (the session's `cluster` has the kustomize base installed, and the
chart must prove it installs the CRDs itself). kwok's pods run no containers, so the chart's
operator Deployment is only checked to be scheduled and Ready; the operator that does the work is
`modelkiln operator` from this checkout, started with the chart's own Deployment arguments and
environment and a token of the chart's ServiceAccount: the chart's RBAC, ConfigMap and settings
are what it runs on. The tests run in file order and share the release.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

import control_plane as cp
from control_plane import Kubectl, eventually
from modelkiln_setup import REPOSITORY_CLAIM, inference_model, model_repository, service_account_kubeconfig

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "chart"))
from chart_helpers import (CHART, Helm, dashboard_queries, documented_families, documented_metrics,  # noqa: E402
                           live_series, unknown_names_and_labels)

RELEASE, NAMESPACE, MODELS = "kiln", "kiln-system", "models"
FULLNAME = f"{RELEASE}-modelkiln"
OPERATOR = f"{FULLNAME}-operator"
READY_TIMEOUT = 180


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    """A fresh control plane with the simulated node pools, and helm on it."""
    if os.environ.get("KUBECONFIG"):
        pytest.skip("the chart is installed on a control plane of its own, not on KUBECONFIG's cluster")
    bin_dir = cp.build_binaries(go=cp.find_go())  # a no-op: the collection hook built everything
    control = cp.start_control_plane(bin_dir=bin_dir, work_dir=tmp_path_factory.mktemp("helm-control-plane"))
    try:
        yield control, Helm(bin_dir / "helm", tmp_path_factory.mktemp("helm-values"))
    finally:
        control.stop()


@pytest.fixture(scope="module")
def kubectl(plane) -> Kubectl:
    return plane[0].kubectl


@pytest.fixture(scope="module")
def helm(plane) -> Helm:
    return plane[1]


def helm_on(helm: Helm, kubectl: Kubectl, *args: str, values: dict | None = None):
    return helm.run(*args, "--kubeconfig", str(kubectl.kubeconfig), values=values)


def release_values() -> dict:
    # The model namespace's claim comes from the chart, bound to a hand-made volume (no provisioner).
    # The operator watches only that namespace: its RBAC is a Role there (and the peering object).
    return {"operator": {"resyncSeconds": 2, "watchNamespaces": [MODELS]},
            "repository": {"namespaces": [MODELS], "storageClass": ""}}


@pytest.fixture(scope="module")
def release(helm: Helm, kubectl: Kubectl) -> str:
    """`helm install` of the chart; its output (NOTES included)."""
    kubectl.run("create", "namespace", MODELS)
    kubectl.wait("serviceaccount/default", "create", namespace=MODELS, timeout=60)
    kubectl.apply(model_repository(MODELS)[0])  # the PersistentVolume, pre-bound to the chart's claim
    result = helm_on(helm, kubectl, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
                     "--wait", "--timeout=3m", values=release_values())
    return result.stdout


@pytest.fixture(scope="module")
def chart_operator(kubectl: Kubectl, release, tmp_path_factory):
    """`modelkiln operator` run as the chart's Deployment says, with the chart's ServiceAccount token."""
    work = tmp_path_factory.mktemp("chart-operator")
    deployment = kubectl.get_json("deployment", OPERATOR, namespace=NAMESPACE)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    metrics_port = cp.free_port()
    ports = {"metrics-port": metrics_port, "health-port": cp.free_port()}
    args = [re.sub(r"^--(metrics-port|health-port)=.*", lambda m: f"--{m[1]}={ports[m[1]]}", a) for a in container["args"]]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["MODELKILN_NAMESPACE"] = NAMESPACE  # the Deployment's fieldRef: the pod's namespace
    kubeconfig = service_account_kubeconfig(kubectl, work / "kubeconfig", namespace=NAMESPACE,
                                            name=pod["serviceAccountName"])
    proc = cp.spawn("chart-operator", [sys.executable, "-m", "modelkiln.cli", *args, "--verbose"], log_dir=work,
                    env={**os.environ, **env, "KUBECONFIG": str(kubeconfig)})
    cp.wait_until("the operator's /metrics", lambda: urllib.request.urlopen(
        f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).status == 200, timeout=60, procs=[proc])
    yield proc, metrics_port
    proc.stop()


def serving_pods(kubectl: Kubectl, name: str) -> list[dict]:
    pods = kubectl.items("pods", namespace=MODELS, selector=f"modelkiln.io/model={name},app.kubernetes.io/component=serving")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def test_helm_install_creates_the_crds_and_an_operator_deployment_that_gets_ready(kubectl, release):
    assert "kubectl wait" in release and "helm test" in release  # NOTES: the next steps
    for crd in ("inferencemodels.modelkiln.io", "clusterkopfpeerings.kopf.dev"):
        kubectl.wait(f"crd/{crd}", "condition=Established", timeout=60)
    deployment = kubectl.get_json("deployment", OPERATOR, namespace=NAMESPACE)
    assert deployment["status"].get("readyReplicas") == 1
    (pod,) = kubectl.items("pods", namespace=NAMESPACE, selector="app.kubernetes.io/component=operator")
    assert pod["spec"]["nodeName"] and pod["spec"]["serviceAccountName"] == OPERATOR
    claim = kubectl.get_json("persistentvolumeclaim", REPOSITORY_CLAIM, namespace=MODELS)
    assert eventually("the repository claim bound", lambda: kubectl.get_json(
        "persistentvolumeclaim", REPOSITORY_CLAIM, namespace=MODELS)["status"].get("phase") == "Bound")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_the_operator_may_act_only_in_the_watched_namespace(kubectl, release):
    account = f"system:serviceaccount:{NAMESPACE}:{OPERATOR}"

    def can(*request: str) -> str:
        return kubectl.run("auth", "can-i", *request, f"--as={account}", check=False).stdout.strip()
    assert can("create", "deployments", "-n", MODELS) == "yes"
    assert can("create", "deployments", "-n", "default") == "no"
    assert can("list", "inferencemodels.modelkiln.io", "--all-namespaces") == "no"
    assert can("patch", "clusterkopfpeerings.kopf.dev") == "yes"
    assert can("list", "customresourcedefinitions") == "no"
    policies = kubectl.items("networkpolicies", namespace=MODELS)
    assert [p["metadata"]["name"] for p in policies] == [f"{FULLNAME}-serving"]


def test_the_charts_rbac_and_configuration_take_a_model_to_ready(kubectl, chart_operator):
    kubectl.apply(inference_model("digits"), namespace=MODELS)
    kubectl.wait("inferencemodel/digits", "condition=Ready", namespace=MODELS, timeout=READY_TIMEOUT)
    pods = serving_pods(kubectl, "digits")
    assert pods and {p["spec"]["nodeSelector"]["modelkiln.io/pool"] for p in pods} == {"cpu"}
    # The peering object is the chart's, and the operator (with the chart's RBAC) keeps it up to date.
    peering = kubectl.get_json("clusterkopfpeering", "modelkiln")
    assert peering["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert peering.get("status"), "the operator never announced itself on the chart's peering object"


def test_the_helm_test_hook_passes_against_the_running_operator(helm, kubectl, chart_operator):
    # kwok's pods run nothing, so `helm test` cannot run here: its script runs on the health port instead.
    hooks = yaml.safe_load_all(helm_on(helm, kubectl, "get", "hooks", RELEASE, "-n", NAMESPACE).stdout)
    (test_pod,) = [h for h in hooks if h and h["metadata"]["annotations"]["helm.sh/hook"] == "test"]
    command = test_pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "-c"]
    service_url = re.compile(rf"http://{OPERATOR}\.{NAMESPACE}\.svc:\d+")
    assert service_url.search(command[2])
    proc, _ = chart_operator
    health_port = next(a.split("=")[1] for a in proc.popen.args if a.startswith("--health-port="))
    script = service_url.sub(f"http://127.0.0.1:{health_port}", command[2])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("/healthz 200")


def test_the_dashboard_and_docs_name_the_operators_live_metrics(chart_operator):
    _, metrics_port = chart_operator
    page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    series = live_series(page)
    prefix = "modelkiln_operator_"
    queries = [q for q in dashboard_queries() if prefix in q]
    assert queries
    assert unknown_names_and_labels(queries, series, prefix=prefix) == []
    assert documented_families(series, prefix=prefix) == {m for m in documented_metrics() if m.startswith(prefix)}


def test_helm_upgrade_with_a_changed_device_pool_moves_the_model_pods(helm, kubectl, chart_operator):
    (before,) = serving_pods(kubectl, "digits")
    target = next(n for n in ("cpu-1", "cpu-2") if n != before["spec"]["nodeName"])
    values = release_values()
    values["devicePools"] = {"CPU": {"nodeSelector": {"modelkiln.io/pool": None, "kubernetes.io/hostname": target}}}
    helm_on(helm, kubectl, "upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--wait", "--timeout=3m", values=values)
    pools = yaml.safe_load(kubectl.get_json("configmap", f"{FULLNAME}-device-pools", namespace=NAMESPACE)
                           ["data"]["devicePools"])
    assert pools["CPU"] == {"nodeSelector": {"kubernetes.io/hostname": target}}

    def moved():
        pods = serving_pods(kubectl, "digits")
        ready = all(c["status"] == "True" for p in pods for c in p["status"].get("conditions", []) if c["type"] == "Ready")
        return pods if pods and ready and {p["spec"].get("nodeName") for p in pods} == {target} else None
    pods = eventually(f"the model's pods on {target}", moved, timeout=READY_TIMEOUT)
    assert before["metadata"]["name"] not in {p["metadata"]["name"] for p in pods}
    kubectl.wait("inferencemodel/digits", "condition=Ready", namespace=MODELS, timeout=READY_TIMEOUT)


def test_helm_uninstall_removes_every_operator_object_and_keeps_the_crds(helm, kubectl, chart_operator):
    proc, _ = chart_operator
    proc.stop()  # as the Deployment's pod goes with the release
    helm_on(helm, kubectl, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout=2m")
    for namespace in (NAMESPACE, MODELS):
        left = kubectl.run("get", "deployment,service,configmap,serviceaccount,role,rolebinding,networkpolicy,pod",
                           "-n", namespace, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name").stdout.split()
        assert left == [], namespace
    assert kubectl.run("get", "configmap", f"{FULLNAME}-device-pools", "-n", NAMESPACE, check=False).returncode != 0
    for kind in ("clusterrole", "clusterrolebinding"):
        assert kubectl.run("get", kind, OPERATOR, check=False).returncode != 0, f"{kind} {OPERATOR} left behind"
    assert kubectl.run("get", "clusterkopfpeering", "modelkiln", check=False).returncode != 0
    # Helm never deletes CRDs (that would delete every InferenceModel); the models and their claim stay.
    for crd in ("inferencemodels.modelkiln.io", "clusterkopfpeerings.kopf.dev"):
        kubectl.get_json("crd", crd)
    kubectl.get_json("inferencemodel", "digits", namespace=MODELS)
    kubectl.get_json("persistentvolumeclaim", REPOSITORY_CLAIM, namespace=MODELS)
