"""One reconcile's decisions: which objects it creates, when it leaves things alone, what status says.

The API server is played by `RecordingApi`, an in-memory store with the six calls of
`modelkiln.operator.kube.Kube` that records every write request it gets (an apply that changes
nothing and a delete of an absent object included: the API server handles those too); the real
API server runs in e2e/. Each test drives the flow through the states a user sees (converting,
converted, deployed, changed) and checks what a user would see: the objects and the status.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import yaml

from modelkiln.operator import flows, kube, schema
from modelkiln.operator.commands import artifact_key
from modelkiln.operator.config import OperatorConfig, ScalingConfig

CONFIG = OperatorConfig(namespace="modelkiln-system", device_pools_configmap="pools",
                        server_image="server:1", converter_image="converter:1", repository_claim="models",
                        resync_seconds=1)


class RecordingApi:
    """Objects by (plural, namespace, name); every write is recorded."""

    def __init__(self, pools: dict) -> None:
        self.objects: dict[tuple[str, str | None, str], dict] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.served: set[kube.Resource] = set()  # the optional resources (KEDA's) this cluster has
        self.put(kube.CONFIGMAPS, {"metadata": {"namespace": "modelkiln-system", "name": "pools"},
                                   "data": {"devicePools": yaml.safe_dump(pools)}})
        self.put(kube.CLAIMS, {"metadata": {"namespace": "vision", "name": "models"}})

    def put(self, resource: kube.Resource, obj: dict) -> None:
        meta = obj["metadata"]
        self.objects[resource.plural, meta.get("namespace"), meta["name"]] = obj

    def serves(self, resource):
        return resource in self.served

    def get(self, resource, *, namespace, name, fresh=False):
        found = self.objects.get((resource.plural, namespace, name))
        return copy.deepcopy(found) if found else None

    def indexed(self, resource):  # kopf's index of the nodes holds those that are not Ready
        return [copy.deepcopy(o) for (plural, _, _), o in self.objects.items() if plural == resource.plural]

    def list(self, resource, *, namespace, selector):
        wanted = dict(part.split("=") for part in selector.split(","))
        return [copy.deepcopy(o) for (plural, ns, _), o in self.objects.items()
                if plural == resource.plural and ns == namespace
                and wanted.items() <= o["metadata"].get("labels", {}).items()]

    def create(self, resource, body):
        existing = self.get(resource, namespace=body["metadata"].get("namespace"), name=body["metadata"]["name"])
        if existing:
            return existing
        self.writes.append(("create", resource.plural, body["metadata"]["name"]))
        self.put(resource, copy.deepcopy(body))
        return copy.deepcopy(body)

    def apply(self, resource, body):
        key = (resource.plural, body["metadata"]["namespace"], body["metadata"]["name"])
        before = self.objects.get(key, {})
        stored = {**copy.deepcopy(body), "status": before.get("status", {})}
        stored["metadata"]["generation"] = before.get("metadata", {}).get("generation", 0) + (
            before.get("spec") != body.get("spec"))
        self.writes.append(("apply", resource.plural, body["metadata"]["name"]))
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def delete(self, resource, *, namespace, name):
        self.writes.append(("delete", resource.plural, name))
        self.objects.pop((resource.plural, namespace, name), None)

    # What the Job controller, kubelet and Deployment controller would do:
    def finish_job(self, name: str, *, summary: dict | None = None, failure: str | None = None) -> None:
        job = self.objects["jobs", "vision", name]
        job["status"] = {"conditions": [{"type": "Complete" if summary else "Failed", "status": "True"}]}
        message = json.dumps(summary) if summary else failure
        self.put(kube.PODS, {"metadata": {"namespace": "vision", "name": f"{name}-pod",
                                          "labels": {"job-name": name}, "creationTimestamp": "t"},
                             "status": {"containerStatuses": [{"name": "convert", "state": {"terminated": {
                                 "exitCode": 0 if summary else 1, "message": message}}}]}})

    def roll_out(self, name: str) -> None:
        deployment = self.objects["deployments", "vision", name]
        replicas = deployment["spec"].get("replicas", 1)
        deployment["status"] = {"observedGeneration": deployment["metadata"]["generation"], "replicas": replicas,
                                "updatedReplicas": replicas, "readyReplicas": replicas,
                                "availableReplicas": replicas}


@pytest.fixture
def api(pools) -> RecordingApi:
    return RecordingApi(pools)


def reconcile(model: dict, api: RecordingApi) -> flows.Result:
    """Reconcile and store the status on `model`, as the handler's status patch does."""
    result = flows.reconcile(model=model, api=api, config=CONFIG, now="2026-11-26T00:00:00Z")
    model["status"] = result.status
    return result


def condition(model: dict, kind: str) -> tuple[str, str]:
    (found,) = [c for c in model["status"]["conditions"] if c["type"] == kind]
    return found["status"], found["reason"]


def summary(model: dict, version: int) -> dict:
    return {"version": version, "path": f"/models/digits/{version}", "precision": "FP32",
            "artifactKey": artifact_key(model["spec"]), "sha256": "e" * 64, "sizeBytes": 10, "reused": False}


def job_name(model: dict) -> str:
    return f"digits-convert-{artifact_key(model['spec'])[:8]}"


def test_a_new_model_starts_one_conversion_job_and_waits(make_model, api):
    model = make_model()
    result = reconcile(model, api)
    assert api.writes == [("create", "jobs", job_name(model))]
    assert model["status"]["phase"] == "Converting"
    assert condition(model, "Converted") == ("False", "Converting")
    assert [reason for _, reason, _ in result.events] == ["Converting"]
    api.writes.clear()
    assert reconcile(model, api).events == [] and api.writes == []  # a replay changes nothing


def test_a_converted_model_is_served_and_becomes_ready(make_model, api):
    model = make_model()
    reconcile(model, api)
    api.finish_job(job_name(model), summary=summary(model, 7))
    reconcile(model, api)
    assert model["status"]["artifact"]["version"] == 7
    assert condition(model, "Converted") == ("True", "ConversionSucceeded")
    assert ("apply", "deployments", "digits") in api.writes
    assert model["status"]["phase"] == "Deploying"
    assert sorted(api.writes) == [("apply", "deployments", "digits"), ("apply", "services", "digits"),
                                  ("apply", "services", "digits-headless"), ("create", "jobs", job_name(model))]
    api.roll_out("digits")
    api.writes.clear()
    reconcile(model, api)
    assert api.writes == []  # only the Deployment's status changed: no child is applied again
    assert model["status"]["phase"] == "Ready" and condition(model, "Ready") == ("True", "MinimumReplicasAvailable")
    assert model["status"]["endpoints"] == {"rest": "http://digits.vision.svc:8080", "grpc": "digits.vision.svc:8081"}
    assert (model["status"]["replicas"], model["status"]["readyReplicas"]) == (1, 1)
    assert ("services", "vision", "digits-headless") in api.objects


def test_the_versions_the_conversion_kept_are_in_the_status(make_model, api):
    model = make_model()
    reconcile(model, api)
    api.finish_job(job_name(model), summary={**summary(model, 9), "retention": {"keepVersions": 2, "kept": [7, 8, 9],
                                                                              "removed": [6]}})
    reconcile(model, api)
    assert model["status"]["artifact"]["keptVersions"] == [7, 8, 9]


def ready_model(make_model, api, **spec) -> dict:
    model = make_model(**spec)
    reconcile(model, api)
    api.finish_job(job_name(model), summary=summary(model, 1))
    reconcile(model, api)
    api.roll_out("digits")
    reconcile(model, api)
    api.writes.clear()
    return model


def test_the_conversion_job_runs_the_converter_image_and_the_deployment_the_server_image(make_model, api):
    model = ready_model(make_model, api)
    job = api.objects["jobs", "vision", job_name(model)]
    deployment = api.objects["deployments", "vision", "digits"]
    assert [c["image"] for c in job["spec"]["template"]["spec"]["containers"]] == ["converter:1"]
    assert [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]] == ["server:1"]


def test_a_serving_change_updates_the_deployment_without_converting(make_model, api):
    model = ready_model(make_model, api)
    model["spec"]["serving"]["replicas"] = 3
    model["metadata"]["generation"] = 2
    reconcile(model, api)
    assert {write[1] for write in api.writes} == {"deployments", "poddisruptionbudgets"}
    assert api.objects["deployments", "vision", "digits"]["spec"]["replicas"] == 3
    assert condition(model, "Ready") == ("False", "RollingOut")


def test_autoscaling_brings_an_hpa_and_dropping_it_removes_it(make_model, api):
    model = ready_model(make_model, api, serving={"autoscaling": {"minReplicas": 1, "maxReplicas": 4,
                                                                  "targetCPUUtilization": 60}})
    assert ("horizontalpodautoscalers", "vision", "digits") in api.objects
    model["spec"]["serving"] = {**model["spec"]["serving"], "replicas": 1}
    del model["spec"]["serving"]["autoscaling"]
    reconcile(model, api)
    assert ("delete", "horizontalpodautoscalers", "digits") in api.writes


def test_a_conversion_change_converts_while_the_old_artifact_serves_then_rolls_out(make_model, api):
    model = ready_model(make_model, api)
    old_job = job_name(model)
    model["spec"]["conversion"]["precision"] = "FP16"
    model["metadata"]["generation"] = 2
    reconcile(model, api)
    assert api.writes == [("create", "jobs", job_name(model))] and job_name(model) != old_job
    assert model["status"]["artifact"]["version"] == 1  # still serving
    assert condition(model, "Ready") == ("False", "Converting")
    api.finish_job(job_name(model), summary=summary(model, 2))
    reconcile(model, api)
    args = api.objects["deployments", "vision", "digits"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--version-policy") + 1] == '{"specific":[2]}'


def test_a_failed_conversion_is_reported_and_not_retried_after_its_job_is_gone(make_model, api):
    model = make_model()
    reconcile(model, api)
    api.finish_job(job_name(model), failure="fetching https://models.example.com/digits.onnx: HTTP 404")
    result = reconcile(model, api)
    assert model["status"]["phase"] == "Failed"
    assert condition(model, "Converted") == ("False", "ConversionFailed")
    assert ("Warning", "ConversionFailed", "fetching https://models.example.com/digits.onnx: HTTP 404") in result.events
    del api.objects["jobs", "vision", job_name(model)]  # ttlSecondsAfterFinished
    api.writes.clear()
    reconcile(model, api)
    assert api.writes == [] and condition(model, "Converted") == ("False", "ConversionFailed")


def test_a_conversion_pod_waiting_to_mount_the_ca_config_map_names_it(make_model, api):
    model = make_model(source={"uri": "https://models.internal/digits.onnx", "caConfigMap": {"name": "internal-ca"}})
    reconcile(model, api)
    name = job_name(model)
    api.put(kube.PODS, {"metadata": {"namespace": "vision", "name": f"{name}-pod", "labels": {"job-name": name},
                                     "creationTimestamp": "t"},
                        "status": {"containerStatuses": [{"name": "convert", "state": {"waiting": {
                            "reason": "ContainerCreating"}}}]}})
    reconcile(model, api)
    (converted,) = [c for c in model["status"]["conditions"] if c["type"] == "Converted"]
    assert converted["message"] == (f"conversion Job {name} is running and waits: its pod is starting; it mounts "
                                    "ConfigMap internal-ca (spec.source.caConfigMap) and waits here while that "
                                    "does not exist")


def test_without_a_repository_claim_no_job_is_started(make_model, api):
    del api.objects["persistentvolumeclaims", "vision", "models"]
    model = make_model()
    reconcile(model, api)
    assert api.writes == []
    assert condition(model, "Converted") == ("False", "RepositoryMissing")
    assert model["status"]["phase"] == "Failed"


def test_a_device_without_a_pool_is_a_condition_and_recovers_when_the_pool_is_added(make_model, api, pools):
    model = make_model(serving={"device": "VPU"})
    npu = pools.pop("NPU")
    api.put(kube.CONFIGMAPS, {"metadata": {"namespace": "modelkiln-system", "name": "pools"},
                              "data": {"devicePools": yaml.safe_dump(pools)}})
    reconcile(model, api)
    api.finish_job(job_name(model), summary=summary(model, 1))
    reconcile(model, api)
    assert condition(model, "Ready") == ("False", "NoDevicePool")
    assert ("deployments", "vision", "digits") not in api.objects
    api.put(kube.CONFIGMAPS, {"metadata": {"namespace": "modelkiln-system", "name": "pools"},
                              "data": {"devicePools": yaml.safe_dump({**pools, "NPU": npu})}})
    reconcile(model, api)
    pod = api.objects["deployments", "vision", "digits"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == npu["nodeSelector"]


def test_a_missing_device_pool_configmap_is_named(make_model, api):
    del api.objects["configmaps", "modelkiln-system", "pools"]
    model = make_model()
    reconcile(model, api)
    (ready,) = [c for c in model["status"]["conditions"] if c["type"] == "Ready"]
    assert ready["reason"] == "NoDevicePool"
    assert ready["message"].startswith("ConfigMap modelkiln-system/pools does not exist")
    assert ("create", "jobs", job_name(model)) in api.writes  # conversion does not need a pool


def test_an_unchanged_ready_model_writes_nothing_and_its_status_stays_as_it_was(make_model, api):
    model = ready_model(make_model, api)
    before = copy.deepcopy(model["status"])
    result = flows.reconcile(model=model, api=api, config=CONFIG, now="2026-11-27T00:00:00Z")
    assert api.writes == [] and result.events == []
    assert result.status == before  # lastTransitionTime too: no condition changed


def test_a_deleted_service_is_applied_again_and_only_it(make_model, api):
    model = ready_model(make_model, api)
    del api.objects["services", "vision", "digits-headless"]
    reconcile(model, api)
    assert api.writes == [("apply", "services", "digits-headless")]


def test_a_replaced_model_of_the_same_name_takes_its_children_over(make_model, api):
    model = ready_model(make_model, api)
    model["metadata"]["uid"] = "another-uid"  # deleted and created again before the collector ran
    reconcile(model, api)
    assert sorted(api.writes) == [("apply", "deployments", "digits"), ("apply", "services", "digits"),
                                  ("apply", "services", "digits-headless")]
    owner = api.objects["deployments", "vision", "digits"]["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "another-uid"


def test_an_autoscaler_of_the_same_name_that_is_not_ours_is_left_alone(make_model, api):
    model = ready_model(make_model, api)
    api.put(kube.AUTOSCALERS, {"metadata": {"namespace": "vision", "name": "digits", "labels": {}}})
    reconcile(model, api)
    assert api.writes == [] and ("horizontalpodautoscalers", "vision", "digits") in api.objects


def test_a_serving_pod_that_cannot_be_scheduled_is_named_in_ready_and_reconciling(make_model, api):
    model = make_model()
    reconcile(model, api)
    api.finish_job(job_name(model), summary=summary(model, 1))
    reconcile(model, api)
    labels = api.objects["deployments", "vision", "digits"]["spec"]["selector"]["matchLabels"]
    unschedulable = "0/4 nodes are available: 1 Insufficient gpu.intel.com/i915, 3 node(s) didn't match"
    api.put(kube.PODS, {"metadata": {"namespace": "vision", "name": "digits-abc", "labels": labels,
                                     "creationTimestamp": "t"},
                        "status": {"phase": "Pending", "conditions": [
                            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                             "message": unschedulable}]}})
    reconcile(model, api)
    ready = next(c for c in model["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["message"].endswith(f"a pod waits: {unschedulable}")
    assert condition(model, "Reconciling") == ("True", ready["reason"])
    assert not any(c["type"] == "Stalled" for c in model["status"]["conditions"])

    api.roll_out("digits")
    reconcile(model, api)
    assert condition(model, "Ready") == ("True", "MinimumReplicasAvailable")
    assert {c["type"] for c in model["status"]["conditions"]} == {"Converted", "Ready"}


def test_a_serving_pod_on_a_node_that_is_not_ready_makes_the_model_not_ready_with_a_warning(make_model, api):
    model = ready_model(make_model, api)
    labels = api.objects["deployments", "vision", "digits"]["spec"]["selector"]["matchLabels"]
    api.put(kube.PODS, {"metadata": {"namespace": "vision", "name": "digits-abc", "labels": labels},
                        "spec": {"nodeName": "cpu-1"}, "status": {"phase": "Running"}})
    api.put(kube.NODES, {"metadata": {"name": "cpu-1", "labels": {"modelkiln.io/pool": "cpu"}},
                         "status": {"conditions": [{"type": "Ready", "status": "Unknown",
                                                    "message": "Kubelet stopped posting node status."}]}})
    result = reconcile(model, api)
    ready = next(c for c in model["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NodeNotReady")
    assert ready["message"].startswith("node cpu-1 is not Ready (Ready is Unknown: Kubelet stopped posting node "
                                       "status.) and holds pod(s) digits-abc"), ready["message"]
    assert result.events == [("Warning", "NodeNotReady", ready["message"])]
    assert condition(model, "Reconciling") == ("True", "NodeNotReady") and api.writes == []

    # evicted (its kubelet is gone, so it stays Terminating) and replaced on a Ready node
    api.objects["pods", "vision", "digits-abc"]["metadata"]["deletionTimestamp"] = "t"
    result = reconcile(model, api)
    assert condition(model, "Ready") == ("True", "MinimumReplicasAvailable")
    assert [kind for kind, _, _ in result.events] == ["Normal"]


def test_a_ready_model_reads_no_pod_while_every_node_of_its_pool_is_ready(make_model, api):
    model = ready_model(make_model, api)
    api.put(kube.NODES, {"metadata": {"name": "gpu-1", "labels": {"modelkiln.io/pool": "gpu"}},
                         "status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    api.list = None  # any read of the pods would fail
    reconcile(model, api)
    assert condition(model, "Ready") == ("True", "MinimumReplicasAvailable")


def test_a_failed_conversion_is_stalled_for_kstatus_with_the_cause(make_model, api):
    model = make_model()
    reconcile(model, api)
    api.finish_job(job_name(model), failure="checksum mismatch: expected abc…, got def…")
    result = reconcile(model, api)
    assert condition(model, "Stalled") == ("True", "ConversionFailed")
    stalled = next(c for c in model["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["message"] == "checksum mismatch: expected abc…, got def…"
    assert [reason for _, reason, _ in result.events] == ["ConversionFailed"]


def auto_summary(model: dict) -> dict:
    """What `modelkiln convert --precision auto` reports (tests/converter check it from the converter)."""
    why = ("INT8/f16: the best throughput of the 2 candidates that passed the accuracy gate (900/s; FP32/f32 "
           "300/s); FP16/f16 failed the gate (cosine 0.95 < --min-cosine 0.99)")
    return {**summary(model, 4), "precision": "INT8", "inferencePrecision": "f16", "auto": {
        "chosen": "INT8/f16", "why": why, "candidates": [
            {"name": "FP32/f32", "sizeBytes": 40, "perSecond": 300.0, "p50Ms": 3.1, "p99Ms": 4.0,
             "top1Agreement": None, "cosine": 1.0, "passed": True, "note": ""},
            {"name": "FP32/bf16", "note": "not built: the device has no BF16 (it reports FP32, FP16, INT8)"},
            {"name": "FP16/f16", "sizeBytes": 20, "perSecond": 700.0, "p50Ms": 1.2, "p99Ms": 2.0,
             "top1Agreement": None, "cosine": 0.95, "passed": False, "note": "cosine 0.95 < --min-cosine 0.99"},
            {"name": "INT8/f16", "sizeBytes": 10, "perSecond": 900.0, "p50Ms": 1.0, "p99Ms": 1.5,
             "top1Agreement": None, "cosine": 0.995, "passed": True, "note": "chosen"}]}}


def test_auto_converts_on_the_serving_devices_pool_and_serves_what_it_chose(make_model, api, pools):
    model = make_model(conversion={"precision": "Auto"}, serving={"device": "GPU"})
    reconcile(model, api)
    job = api.objects["jobs", "vision", job_name(model)]
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == pools["GPU"]["nodeSelector"] and pod["tolerations"] == pools["GPU"]["tolerations"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["gpu.intel.com/i915"] == 1
    assert "--device GPU --performance-hint THROUGHPUT --inference-precision auto" in " ".join(container["args"])

    api.finish_job(job_name(model), summary=auto_summary(model))
    reconcile(model, api)
    artifact = model["status"]["artifact"]
    assert (artifact["precision"], artifact["chosen"], artifact["inferencePrecision"]) == ("INT8", "INT8/f16", "f16")
    assert artifact["why"].startswith("INT8/f16: the best throughput") and len(artifact["candidates"]) == 4
    assert "top1Agreement" not in artifact["candidates"][0]      # the status schema has no nulls
    assert schema.validate(model) == []                          # the status fits the CRD
    (converted,) = [c for c in model["status"]["conditions"] if c["type"] == "Converted"]
    assert "precision Auto chose INT8/f16: the best throughput" in converted["message"]
    args = api.objects["deployments", "vision", "digits"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--inference-precision") + 1] == "f16"


def test_auto_serves_the_inference_precision_the_user_set(make_model, api):
    model = make_model(conversion={"precision": "Auto"}, serving={"inferencePrecision": "f32"})
    reconcile(model, api)
    job_args = api.objects["jobs", "vision", job_name(model)]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert job_args[job_args.index("--inference-precision") + 1] == "f32"   # every candidate measured at it
    api.finish_job(job_name(model), summary=auto_summary(model))
    reconcile(model, api)
    args = api.objects["deployments", "vision", "digits"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--inference-precision") + 1] == "f32"


def test_auto_measures_with_the_serving_pods_cpu(make_model, api):
    model = make_model(conversion={"precision": "Auto"},
                       serving={"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "2", "memory": "1Gi"}}})
    reconcile(model, api)
    (container,) = api.objects["jobs", "vision", job_name(model)]["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}
    plain = make_model(serving={"device": "GPU", "resources": {"limits": {"cpu": "2"}}})
    reconcile(plain, api)
    (container,) = api.objects["jobs", "vision", job_name(plain)]["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}


def test_auto_without_a_pool_for_its_device_starts_no_job_and_says_why(make_model, api, pools):
    del pools["NPU"]
    api.put(kube.CONFIGMAPS, {"metadata": {"namespace": "modelkiln-system", "name": "pools"},
                              "data": {"devicePools": yaml.safe_dump(pools)}})
    model = make_model(conversion={"precision": "Auto"}, serving={"device": "NPU"})
    reconcile(model, api)
    assert api.writes == []
    (converted,) = [c for c in model["status"]["conditions"] if c["type"] == "Converted"]
    assert converted["reason"] == "NoDevicePool" and model["status"]["phase"] == "Failed"
    assert converted["message"].startswith("precision Auto measures on the serving device's pool: no device pool "
                                           "'NPU' for device NPU")
    plain = make_model(serving={"device": "NPU"})      # any other precision converts on the CPU pool
    reconcile(plain, api)
    job = api.objects["jobs", "vision", job_name(plain)]
    assert job["spec"]["template"]["spec"]["nodeSelector"] == pools["CPU"]["nodeSelector"]


# --- autoscaling: the HPA, KEDA when the cluster has it, scale to zero ------------------------------

KEDA_CONFIG = dataclasses.replace(CONFIG, scaling=ScalingConfig(prometheus_url="http://prometheus:9090"))
BY_REQUESTS = {"minReplicas": 1, "maxReplicas": 4, "targetInflightRequests": 2}
TO_ZERO = {"minReplicas": 0, "maxReplicas": 4, "targetInflightRequests": 2, "idleSeconds": 60}


def reconcile_with(model: dict, api: RecordingApi, config: OperatorConfig) -> flows.Result:
    result = flows.reconcile(model=model, api=api, config=config, now="2026-11-26T00:00:00Z")
    model["status"] = result.status
    return result


def served_with(make_model, api, autoscaling: dict, *, served=(), config=KEDA_CONFIG) -> dict:
    """A converted model with `autoscaling`, on a cluster serving `served` (KEDA's resources), rolled out."""
    api.served = set(served)
    model = make_model(serving={"autoscaling": autoscaling})
    reconcile_with(model, api, config)
    api.finish_job(job_name(model), summary=summary(model, 1))
    reconcile_with(model, api, config)
    api.roll_out("digits")
    reconcile_with(model, api, config)
    return model


def test_an_hpa_leaves_the_replica_count_to_itself(make_model, api):
    model = served_with(make_model, api, {"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilization": 60})
    assert "replicas" not in api.objects["deployments", "vision", "digits"]["spec"]
    assert condition(model, "Autoscaling") == ("True", "HorizontalPodAutoscaler")
    assert ("poddisruptionbudgets", "vision", "digits") in api.objects


def test_request_scaling_is_a_scaled_object_when_keda_is_installed_and_no_hpa_of_ours(make_model, api):
    model = served_with(make_model, api, BY_REQUESTS, served={kube.SCALED_OBJECTS})
    scaled = api.objects["scaledobjects", "vision", "digits"]
    assert scaled["spec"]["triggers"][0]["type"] == "prometheus"
    assert ("horizontalpodautoscalers", "vision", "digits") not in api.objects
    assert "replicas" not in api.objects["deployments", "vision", "digits"]["spec"]
    assert condition(model, "Autoscaling") == ("True", "KEDA") and model["status"]["phase"] == "Ready"
    api.writes.clear()
    assert reconcile_with(model, api, KEDA_CONFIG).events == [] and api.writes == []  # steady: no write


def test_without_keda_request_scaling_serves_min_replicas_and_warns_once(make_model, api):
    model = served_with(make_model, api, {**BY_REQUESTS, "minReplicas": 2})
    assert api.objects["deployments", "vision", "digits"]["spec"]["replicas"] == 2
    assert not {("scaledobjects", "vision", "digits"), ("horizontalpodautoscalers", "vision", "digits")} \
        & api.objects.keys()
    assert condition(model, "Autoscaling") == ("False", "KEDAMissing")
    assert condition(model, "Ready") == ("True", "MinimumReplicasAvailable")  # it serves: not Stalled
    assert not any(c["type"] in ("Stalled", "Reconciling") for c in model["status"]["conditions"])
    # KEDA installed later: the next reconcile hands the count over and says so in one Event
    api.served = {kube.SCALED_OBJECTS}
    result = reconcile_with(model, api, KEDA_CONFIG)
    assert ("scaledobjects", "vision", "digits") in api.objects
    assert [(kind, reason) for kind, reason, _ in result.events if reason.startswith("KEDA")] == [("Normal", "KEDA")]


def test_the_missing_component_is_a_warning_event(make_model, api):
    api.served = set()
    model = make_model(serving={"autoscaling": TO_ZERO})
    reconcile_with(model, api, KEDA_CONFIG)
    api.finish_job(job_name(model), summary=summary(model, 1))
    events = reconcile_with(model, api, KEDA_CONFIG).events
    (warning,) = [e for e in events if e[1] == "KEDAMissing"]
    assert warning[0] == "Warning" and "ScaledObject CRD (keda.sh/v1alpha1) is not installed" in warning[2]


def test_scale_to_zero_routes_the_models_name_through_the_interceptor_and_shows_idle(make_model, api):
    served = {kube.SCALED_OBJECTS, kube.INTERCEPTOR_ROUTES}
    model = served_with(make_model, api, TO_ZERO, served=served)
    assert api.objects["services", "vision", "digits"]["spec"]["type"] == "ExternalName"
    assert ("services", "vision", "digits-pods") in api.objects
    assert {("interceptorroutes", "vision", "digits"), ("interceptorroutes", "vision", "digits-grpc")} \
        <= api.objects.keys()
    assert api.objects["scaledobjects", "vision", "digits"]["spec"]["minReplicaCount"] == 0
    assert model["status"]["endpoints"] == {"rest": "http://digits.vision.svc:8080", "grpc": "digits.vision.svc:8080"}
    assert ("poddisruptionbudgets", "vision", "digits") not in api.objects
    # KEDA scales the Deployment to zero after idleSeconds
    deployment = api.objects["deployments", "vision", "digits"]
    deployment["spec"]["replicas"] = 0
    deployment["status"] = {"observedGeneration": deployment["metadata"]["generation"]}
    reconcile_with(model, api, KEDA_CONFIG)
    assert condition(model, "Ready") == ("True", "ScaledToZero")
    assert model["status"]["phase"] == "Idle" and model["status"]["replicas"] == 0
    # the first request: KEDA asks for a pod, which loads the model while the request waits
    deployment["spec"]["replicas"] = 1
    reconcile_with(model, api, KEDA_CONFIG)
    assert condition(model, "Ready") == ("True", "ScalingFromZero")


def test_leaving_scale_to_zero_gives_the_model_its_service_back_and_removes_keda_objects(make_model, api):
    served = {kube.SCALED_OBJECTS, kube.INTERCEPTOR_ROUTES}
    model = served_with(make_model, api, TO_ZERO, served=served)
    model["spec"]["serving"] = {"device": "CPU", "autoscaling": {"minReplicas": 1, "maxReplicas": 3,
                                                                 "targetCPUUtilization": 50}}
    api.writes.clear()
    reconcile_with(model, api, KEDA_CONFIG)
    assert "type" not in api.objects["services", "vision", "digits"]["spec"]  # a ClusterIP Service again
    assert {("delete", "scaledobjects", "digits"), ("delete", "interceptorroutes", "digits"),
            ("delete", "interceptorroutes", "digits-grpc"), ("delete", "services", "digits-pods")} <= set(api.writes)
    assert ("horizontalpodautoscalers", "vision", "digits") in api.objects
