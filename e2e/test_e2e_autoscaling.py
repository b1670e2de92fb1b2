"""Autoscaling on the real node, through the components clusters run (scaling_stack.py):
metrics-server for CPU, KEDA reading Prometheus for requests in flight, KEDA's HTTP add-on for
scale to zero. Load comes from tritonclient threads through the models' Services; every
request a caller sent is counted, and none may fail while pods come and go.

The tests run in file order and share the release. Latency is measured in bench/autoscaling.py
(BENCHMARKS.md), not asserted here.
"""

from __future__ import annotations

import json

import pytest

import modelkiln_setup as setup
import scaling_stack
import serving_clients as clients
from control_plane import Kubectl, eventually
from test_e2e_real_node import apply_and_wait_ready, cluster_ip

pytestmark = [pytest.mark.real_node, pytest.mark.autoscaling]

MODELS = setup.REAL_NODE_MODELS
SOURCE = f"pvc://{setup.UPLOADS}/digits/model.onnx"
SCALE_DOWN_SECONDS = 20  # spec.serving.autoscaling.scaleDownDelaySeconds: the HPA's scale-down window
INTERCEPTOR = f"keda-add-ons-http-interceptor-proxy.{scaling_stack.KEDA_NAMESPACE}"


@pytest.fixture(scope="module")
def release(scaling_cluster) -> Kubectl:
    kubectl, _, work, helm = scaling_cluster
    setup.install_on_real_node(kubectl, helm, work, values={"autoscaling": {
        "prometheus": {"url": scaling_stack.PROMETHEUS_URL}, "keda": {"pollingSeconds": 2}}})
    return kubectl


def replicas(kubectl: Kubectl, name: str) -> tuple[int, int]:
    """(the Deployment's wanted replicas, its ready ones)."""
    deployment = kubectl.get_json("deployment", name, namespace=MODELS)
    return deployment["spec"].get("replicas", 1), deployment.get("status", {}).get("readyReplicas", 0)


def model_status(kubectl: Kubectl, name: str) -> dict:
    return kubectl.get_json("inferencemodel", name, namespace=MODELS)["status"]


def condition(status: dict, kind: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_cpu_utilization_adds_pods_under_load_and_removes_them_after(release):
    kubectl = release
    apply_and_wait_ready(kubectl, setup.digits_example(
        "digits-cpu", SOURCE, resources={"requests": {"cpu": "200m", "memory": "256Mi"}},
        autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 50,
                     "scaleDownDelaySeconds": SCALE_DOWN_SECONDS}), "digits-cpu")
    autoscaling = condition(model_status(kubectl, "digits-cpu"), "Autoscaling")
    assert (autoscaling["status"], autoscaling["reason"]) == ("True", "HorizontalPodAutoscaler"), autoscaling
    address = f"{cluster_ip(kubectl, 'digits-cpu')}:8080"
    clients.routed(address, "digits-cpu")
    # metrics-server reads the real kubelet: the HPA gets a utilization before any load.
    eventually("the HPA to read CPU utilization from metrics-server", lambda: kubectl.get_json(
        "hpa", "digits-cpu", namespace=MODELS).get("status", {}).get("currentMetrics"), timeout=120)

    with clients.Load(address, "digits-cpu", clients=6, max_seconds=400) as load:
        eventually("a second pod serving under load", lambda: replicas(kubectl, "digits-cpu")[1] >= 2, timeout=300)
    assert load.outcomes and not load.failures(), load.failures()[:5]

    with clients.Load(address, "digits-cpu", clients=1, max_seconds=300) as trickle:
        eventually("the pods removed after the load", lambda: replicas(kubectl, "digits-cpu") == (1, 1),
                   timeout=240)
    assert trickle.outcomes and not trickle.failures(), trickle.failures()[:5]


def test_requests_in_flight_scale_through_keda_and_prometheus(release):
    kubectl = release
    apply_and_wait_ready(kubectl, setup.digits_example(
        "digits-inflight", SOURCE, autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetInflightRequests": 1,
                                                 "scaleDownDelaySeconds": SCALE_DOWN_SECONDS}), "digits-inflight")
    assert condition(model_status(kubectl, "digits-inflight"), "Autoscaling")["reason"] == "KEDA"
    (scaled,) = kubectl.items("scaledobjects.keda.sh", namespace=MODELS, selector="modelkiln.io/model=digits-inflight")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["serverAddress"] == scaling_stack.PROMETHEUS_URL
    # KEDA owns the Deployment's HPA: the operator made none of its own.
    hpas = kubectl.items("hpa", namespace=MODELS)
    assert [h["metadata"]["name"] for h in hpas if h["spec"]["scaleTargetRef"]["name"] == "digits-inflight"] \
        == ["keda-hpa-digits-inflight"]
    eventually("KEDA's ScaledObject Ready", lambda: any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in kubectl.get_json("scaledobject", "digits-inflight", namespace=MODELS)["status"]["conditions"]))
    address = f"{cluster_ip(kubectl, 'digits-inflight')}:8080"
    clients.routed(address, "digits-inflight")

    with clients.Load(address, "digits-inflight", clients=8, max_seconds=400) as load:
        eventually("a second pod serving on requests in flight",
                   lambda: replicas(kubectl, "digits-inflight")[1] >= 2, timeout=300)
    assert load.outcomes and not load.failures(), load.failures()[:5]
    eventually("back to one pod after the load", lambda: replicas(kubectl, "digits-inflight") == (1, 1), timeout=240)


@pytest.mark.parametrize("device", ["GPU", "NPU"])
def test_accelerator_pools_get_the_same_scaled_object(release, device):
    kubectl = release
    name = f"digits-{device.lower()}"
    autoscaling = {"minReplicas": 1, "maxReplicas": 4, "targetInflightRequests": 3}
    kubectl.apply(setup.digits_example(name, SOURCE, device=device, autoscaling=autoscaling), namespace=MODELS)
    scaled = eventually(f"the ScaledObject of the {device} model", lambda: kubectl.items(
        "scaledobjects.keda.sh", namespace=MODELS, selector=f"modelkiln.io/model={name}"), timeout=300)
    (trigger,) = scaled[0]["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == (f'sum(modelkiln_inflight_requests{{namespace="{MODELS}",'
                                            f'model="{name}"}})')
    assert (scaled[0]["spec"]["minReplicaCount"], scaled[0]["spec"]["maxReplicaCount"]) == (1, 4)
    # KEDA itself took it: its HPA on the Deployment exists.
    eventually("KEDA's HPA on the accelerator Deployment", lambda: kubectl.run(
        "get", "hpa", f"keda-hpa-{name}", "-n", MODELS, check=False).returncode == 0, timeout=120)
    kubectl.run("delete", "inferencemodel", name, "-n", MODELS, "--wait=false")


IDLE_SECONDS = 20
# A client inside the cluster, by the model's name (the address on its status), in the server image's Python.
IN_CLUSTER_CLIENT = """
import json, sys, urllib.request
body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]})
request = urllib.request.Request(sys.argv[1], data=body.encode(), headers={"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(request, timeout=150))["model_version"])
"""


def in_cluster_request(kubectl: Kubectl, url: str, pod: str) -> str:
    """POST a KServe v2 request to `url` from a pod; what it printed (the version that answered)."""
    kubectl.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": MODELS},
                   "spec": {"restartPolicy": "Never", "containers": [{
                       "name": "client", "image": "localhost/modelkiln/server:0.1.0", "imagePullPolicy": "Never",
                       "command": ["python3", "-c", IN_CLUSTER_CLIENT, url],
                       "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "readOnlyRootFilesystem": True,
                                           "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}})
    phase = eventually(f"client pod {pod} to finish", lambda: kubectl.get_json("pod", pod, namespace=MODELS)
                       .get("status", {}).get("phase") in ("Succeeded", "Failed") and
                       kubectl.get_json("pod", pod, namespace=MODELS)["status"]["phase"], timeout=240)
    output = kubectl.run("logs", "-n", MODELS, pod).stdout.strip()
    assert phase == "Succeeded", output
    return output


def test_a_model_scales_to_zero_when_idle_and_the_first_request_waits_for_a_pod(release):
    kubectl = release
    name = "digits-zero"
    apply_and_wait_ready(kubectl, setup.digits_example(
        name, SOURCE, autoscaling={"minReplicas": 0, "maxReplicas": 2, "targetInflightRequests": 4,
                                   "idleSeconds": IDLE_SECONDS}), name)
    status = model_status(kubectl, name)
    assert condition(status, "Autoscaling")["reason"] == "KEDAHTTPAddOn"
    # What clients must call: the model's own Service, now a name for the interceptor, one port for both.
    host = f"{name}.{MODELS}.svc"
    assert status["endpoints"] == {"rest": f"http://{host}:8080", "grpc": f"{host}:8080"}
    proxy = kubectl.get_json("service", "keda-add-ons-http-interceptor-proxy", namespace=scaling_stack.KEDA_NAMESPACE)
    interceptor = f"{proxy['spec']['clusterIP']}:8080"  # the host cannot resolve cluster names: by address
    calls = {
        "KServe v2 REST from a pod, by name": lambda: in_cluster_request(
            kubectl, f"{status['endpoints']['rest']}/v2/models/{name}/infer", "client-rest"),
        "KServe v2 REST (tritonclient)": lambda: clients.rest_infer_with_host(interceptor, host, name, timeout=150),
        "SageMaker /invocations": lambda: json.loads(
            clients.sagemaker_invocations_with_host(interceptor, host, timeout=150)),
        "KServe v2 gRPC (tritonclient)": lambda: clients.grpc_infer_with_authority(
            interceptor, status["endpoints"]["grpc"], name, timeout=150),
    }
    for protocol, call in calls.items():
        eventually(f"{name} at zero pods before {protocol}", lambda: replicas(kubectl, name)[0] == 0,
                   timeout=IDLE_SECONDS + 180)
        eventually("kubectl get im to show it Idle", lambda: "Idle" in kubectl.run(
            "get", "im", name, "-n", MODELS, "--no-headers").stdout.split(), timeout=60)
        ready = condition(model_status(kubectl, name), "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero"), ready
        assert call(), f"{protocol}: the first request after zero got no answer"
        assert replicas(kubectl, name)[1] >= 1, protocol
