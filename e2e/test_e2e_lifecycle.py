"""An InferenceModel's life on a real control plane, driven through kubectl.

The API server, controller-manager (Jobs, Deployments, HPAs, garbage collection) and
scheduler are the real ones; kwok plays the nodes (see kwok-stages.yaml for what the
simulated conversion and serving pods do). Each test gets its own namespace.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from control_plane import Kubectl, eventually, simulated_node
from modelkiln_setup import inference_model

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "digits"
POOL_OF_DEVICE = {"CPU": "cpu", "GPU": "gpu", "NPU": "npu", "VPU": "npu"}
DEVICE_RESOURCE = {"GPU": "gpu.intel.com/i915", "NPU": "npu.intel.com/accel", "VPU": "npu.intel.com/accel"}
READY_TIMEOUT = 180

pytestmark = pytest.mark.usefixtures("operator")


def condition(obj: dict, kind: str) -> dict:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def jobs(kubectl: Kubectl, ns: str) -> list[dict]:
    return kubectl.items("jobs", namespace=ns)


def serving_pods(kubectl: Kubectl, ns: str, name: str) -> list[dict]:
    deployment = kubectl.get_json("deployment", name, namespace=ns)
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    return [p for p in kubectl.items("pods", namespace=ns, selector=selector) if not p["metadata"].get("deletionTimestamp")]


def pools_of(kubectl: Kubectl, pods: list[dict]) -> set[str]:
    nodes = {n["metadata"]["name"]: n for n in kubectl.get_json("nodes")["items"]}
    return {nodes[p["spec"]["nodeName"]]["metadata"]["labels"].get("modelkiln.io/pool") for p in pods}


def wait_ready(kubectl: Kubectl, ns: str, name: str) -> dict:
    kubectl.wait(f"inferencemodel/{name}", "condition=Ready", namespace=ns, timeout=READY_TIMEOUT)
    return kubectl.get_json("inferencemodel", name, namespace=ns)


def examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml")) if EXAMPLES.is_dir() else []


@pytest.mark.parametrize("example", examples(), ids=lambda p: p.name)
def test_example_converts_then_serves_on_its_device_pool(cluster, namespace, example):
    doc = yaml.safe_load(example.read_text())
    name, device = doc["metadata"]["name"], doc["spec"].get("serving", {}).get("device", "CPU")
    cluster.run("apply", "-n", namespace, "-f", str(example))

    (job,) = eventually("the conversion Job", lambda: jobs(cluster, namespace))
    argv = [*job["spec"]["template"]["spec"]["containers"][0].get("command", []),
            *job["spec"]["template"]["spec"]["containers"][0].get("args", [])]
    assert "convert" in argv, argv
    assert argv[argv.index("--source") + 1] == doc["spec"]["source"]["uri"]
    assert argv[argv.index("--precision") + 1] == doc["spec"].get("conversion", {}).get("precision", "FP32")

    im = wait_ready(cluster, namespace, name)
    assert condition(im, "Converted")["status"] == "True"
    assert im["status"]["phase"] == "Ready"
    assert im["status"]["observedGeneration"] == im["metadata"]["generation"]
    key = im["status"]["artifact"]["key"]
    assert job["metadata"]["name"] == f"{name}-convert-{key[:8]}"
    assert argv[argv.index("--artifact-key") + 1] == key
    pods = serving_pods(cluster, namespace, name)
    assert pods and all(p["status"]["phase"] == "Running" for p in pods)
    assert pools_of(cluster, pods) == {POOL_OF_DEVICE[device]}
    if device in DEVICE_RESOURCE:
        assert all(c["resources"]["limits"][DEVICE_RESOURCE[device]] == "1"
                   for p in pods for c in p["spec"]["containers"]), [p["spec"]["containers"] for p in pods]
    if doc["spec"]["conversion"]["precision"] == "Auto":     # measured on the serving pool, served as chosen
        converters = cluster.items("pods", namespace=namespace, selector=f"job-name={job['metadata']['name']}")
        assert pools_of(cluster, converters) == {POOL_OF_DEVICE[device]}
        args = pods[0]["spec"]["containers"][0]["args"]
        assert args[args.index("--inference-precision") + 1] == im["status"]["artifact"]["inferencePrecision"]

    table = cluster.run("get", "im", name, "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "DEVICE", "PRECISION", "CHOSEN", "PHASE", "READY", "AGE"]
    chosen = [im["status"]["artifact"]["chosen"]] if "chosen" in im["status"]["artifact"] else []   # Auto only
    assert table[1].split()[:5 + len(chosen)] == [name, device, im["spec"]["conversion"]["precision"], *chosen,
                                                  "Ready", "True"]


def test_conversion_change_converts_again_and_rolls_out(cluster, namespace):
    cluster.apply(inference_model("digits", precision="FP32"), namespace=namespace)
    first = wait_ready(cluster, namespace, "digits")
    first_template = cluster.get_json("deployment", "digits", namespace=namespace)["spec"]["template"]

    cluster.apply(inference_model("digits", precision="FP16"), namespace=namespace)
    eventually("a second conversion Job", lambda: len(jobs(cluster, namespace)) == 2)

    def rolled_out():
        im = cluster.get_json("inferencemodel", "digits", namespace=namespace)
        return (condition(im, "Ready").get("status") == "True"
                and im["status"].get("observedGeneration") == im["metadata"]["generation"]
                and im["status"]["artifact"]["precision"] == "FP16" and im)

    second = eventually("the FP16 artifact to be served", rolled_out, timeout=READY_TIMEOUT)
    assert second["status"]["artifact"]["version"] > first["status"]["artifact"]["version"]
    deployment = cluster.get_json("deployment", "digits", namespace=namespace)
    assert deployment["spec"]["template"] != first_template
    cluster.run("rollout", "status", "deployment/digits", "-n", namespace, "--timeout=120s")


def test_serving_only_change_updates_the_deployment_without_converting(cluster, namespace):
    cluster.apply(inference_model("digits", replicas=1), namespace=namespace)
    wait_ready(cluster, namespace, "digits")
    before = [j["metadata"]["name"] for j in jobs(cluster, namespace)]

    cluster.apply(inference_model("digits", replicas=2, resources={"requests": {"cpu": "500m"}}), namespace=namespace)
    eventually("two ready serving pods", lambda: len([
        p for p in serving_pods(cluster, namespace, "digits")
        if condition(p, "Ready").get("status") == "True"]) == 2, timeout=READY_TIMEOUT)
    im = wait_ready(cluster, namespace, "digits")
    assert im["status"]["observedGeneration"] == im["metadata"]["generation"]
    assert [j["metadata"]["name"] for j in jobs(cluster, namespace)] == before
    container = cluster.get_json("deployment", "digits", namespace=namespace)["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "500m"


def test_failed_conversion_shows_the_cause_on_the_resource_and_as_an_event(cluster, namespace):
    cluster.apply(inference_model("broken", source="file:///models/broken.onnx"), namespace=namespace)

    def failed():
        im = cluster.get_json("inferencemodel", "broken", namespace=namespace)
        return im.get("status", {}).get("phase") == "Failed" and im

    im = eventually("phase Failed", failed, timeout=READY_TIMEOUT)
    converted = condition(im, "Converted")
    assert converted["status"] == "False"
    assert converted["reason"] == "ConversionFailed"
    assert "not a valid ONNX model" in converted["message"]
    assert condition(im, "Ready").get("status") != "True"
    # kstatus (Flux) reads Stalled: the failure needs a person, there is nothing to wait for.
    assert condition(im, "Stalled") == {**condition(im, "Stalled"), "status": "True",
                                        "reason": "ConversionFailed", "message": converted["message"]}
    cluster.run("wait", "--for=condition=Stalled", "im/broken", "--timeout=10s", "-n", namespace)
    events = cluster.get_json("events", "--field-selector", "involvedObject.name=broken", namespace=namespace)["items"]
    assert any("not a valid ONNX model" in e.get("message", "") for e in events), [e.get("message") for e in events]
    assert cluster.items("deployments", namespace=namespace) == []
    # A permanent cause (exit 1) fails the Job at once: one pod, no retries.
    assert len(cluster.items("pods", namespace=namespace, selector="job-name")) == 1


def test_deleting_the_model_garbage_collects_everything_it_owned(cluster, namespace):
    cluster.apply(inference_model("digits", autoscaling={"minReplicas": 2, "maxReplicas": 4,
                                                         "targetCPUUtilization": 70}), namespace=namespace)
    wait_ready(cluster, namespace, "digits")
    kinds = ["jobs", "deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets"]
    owned = {kind: cluster.items(kind, namespace=namespace) for kind in kinds}
    assert all(owned.values()), {k: len(v) for k, v in owned.items()}

    cluster.run("delete", "inferencemodel", "digits", "-n", namespace, "--wait=true", "--timeout=60s")
    eventually("garbage collection of " + ", ".join(kinds), lambda: not any(
        cluster.items(kind, namespace=namespace) for kind in kinds), timeout=120)
    eventually("the serving pods to go", lambda: not cluster.items("pods", namespace=namespace), timeout=120)


def test_a_model_carries_no_finalizer_and_deletes_while_no_operator_runs(cluster, namespace, operator):
    cluster.apply(inference_model("digits"), namespace=namespace)
    im = wait_ready(cluster, namespace, "digits")
    assert im["metadata"].get("finalizers", []) == []
    operator.stop()  # as after `helm uninstall`, which keeps the CRD and the models
    try:
        cluster.run("delete", "inferencemodel", "digits", "-n", namespace, "--wait=true", "--timeout=60s")
    finally:
        operator.start()
    assert cluster.items("inferencemodels", namespace=namespace) == []


def test_operator_restart_mid_conversion_creates_no_duplicates(cluster, namespace, operator):
    cluster.apply(inference_model("digits"), namespace=namespace)
    eventually("the conversion Job", lambda: jobs(cluster, namespace))
    operator.restart()
    wait_ready(cluster, namespace, "digits")
    operator.restart()
    cluster.apply(inference_model("digits"), namespace=namespace)  # a replayed apply changes nothing
    im = wait_ready(cluster, namespace, "digits")
    assert len(jobs(cluster, namespace)) == 1
    assert [d["metadata"]["name"] for d in cluster.items("deployments", namespace=namespace)] == ["digits"]
    assert len(cluster.items("replicasets", namespace=namespace)) == 1
    assert im["metadata"]["generation"] == 1


def test_autoscaling_creates_an_hpa_on_the_deployment(cluster, namespace):
    cluster.apply(inference_model("digits", autoscaling={"minReplicas": 2, "maxReplicas": 5,
                                                         "targetCPUUtilization": 60}), namespace=namespace)
    wait_ready(cluster, namespace, "digits")
    (hpa,) = cluster.items("horizontalpodautoscalers.v2.autoscaling", namespace=namespace)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "digits"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    # The real HPA controller found its target (it has no metrics server to read, so no scaling).
    eventually("the HPA controller to see the Deployment", lambda: any(
        c["type"] == "AbleToScale" and c["status"] == "True"
        for c in cluster.get_json("hpa", "digits", namespace=namespace).get("status", {}).get("conditions", [])))
    assert cluster.get_json("deployment", "digits", namespace=namespace)["spec"]["replicas"] >= 2


def test_kubectl_scale_works_through_the_scale_subresource(cluster, namespace):
    cluster.apply(inference_model("digits", replicas=1), namespace=namespace)
    wait_ready(cluster, namespace, "digits")
    cluster.run("scale", "inferencemodel/digits", "--replicas=3", "-n", namespace)

    def scaled():
        im = cluster.get_json("inferencemodel", "digits", namespace=namespace)
        return im["status"].get("readyReplicas") == 3 and im
    im = eventually("3 ready replicas", scaled, timeout=READY_TIMEOUT)
    assert im["spec"]["serving"]["replicas"] == 3
    scale = json.loads(cluster.run("get", "--raw",
                                   f"/apis/modelkiln.io/v1alpha1/namespaces/{namespace}/inferencemodels/digits/scale").stdout)
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert cluster.get_json("deployment", "digits", namespace=namespace)["status"]["readyReplicas"] == 3
    assert cluster.items("horizontalpodautoscalers", namespace=namespace) == []


GPU_NODE_2 = simulated_node("gpu-2", pool="gpu", taint="gpu", allocatable={
    "cpu": "8", "memory": "32Gi", "pods": "110", "gpu.intel.com/i915": "1"})

GPU_HOG = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gpu-hog"},
    "spec": {"nodeSelector": {"modelkiln.io/pool": "gpu"},
             "tolerations": [{"key": "modelkiln.io/accelerator", "operator": "Exists", "effect": "NoSchedule"}],
             "containers": [{"name": "hog", "image": "busybox",
                             "resources": {"limits": {"gpu.intel.com/i915": "2"}}}]},
}


@pytest.fixture
def full_gpu_pool(cluster, namespace):
    """Both GPUs of gpu-1 taken by another pod; gpu-2 (added by the test) removed afterwards."""
    cluster.apply(GPU_HOG, namespace=namespace)
    cluster.wait("pod/gpu-hog", "condition=Ready", namespace=namespace, timeout=60)
    yield
    cluster.run("delete", "node", "gpu-2", "--ignore-not-found", "--wait=false")


def test_no_gpu_capacity_leaves_the_model_pending_until_a_gpu_node_appears(cluster, namespace, full_gpu_pool):
    cluster.apply(inference_model("digits", device="GPU", replicas=1), namespace=namespace)

    def waiting_for_gpu():
        im = cluster.get_json("inferencemodel", "digits", namespace=namespace)
        selector = im.get("status", {}).get("selector")
        if not selector or condition(im, "Converted").get("status") != "True":
            return None
        pods = cluster.items("pods", namespace=namespace, selector=selector)
        ready = condition(im, "Ready")
        # The model says why itself: Ready's message carries the scheduler's reason.
        return (pods and all(p["status"]["phase"] == "Pending" for p in pods)
                and ready.get("status") == "False" and "gpu.intel.com/i915" in ready.get("message", "")
                and im)

    im = eventually("converted, serving pods Pending, Ready=False naming the missing GPU", waiting_for_gpu,
                    timeout=READY_TIMEOUT)
    assert "a pod waits: 0/" in condition(im, "Ready")["message"], condition(im, "Ready")
    assert condition(im, "Reconciling")["status"] == "True"
    assert im["status"]["phase"] != "Ready"
    # The real scheduler says why: no node of the GPU pool has a free gpu.intel.com/i915.
    for pod in cluster.items("pods", namespace=namespace, selector=im["status"]["selector"]):
        scheduled = condition(pod, "PodScheduled")
        assert scheduled["reason"] == "Unschedulable", scheduled
        assert "gpu.intel.com/i915" in scheduled["message"], scheduled

    cluster.apply(GPU_NODE_2)
    im = wait_ready(cluster, namespace, "digits")
    assert {p["spec"]["nodeName"] for p in serving_pods(cluster, namespace, "digits")} == {"gpu-2"}
