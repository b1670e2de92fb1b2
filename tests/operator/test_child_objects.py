"""Spec to Kubernetes objects: the conversion Job and the serving Deployment, Services, PDB
(autoscalers: test_scaling_objects.py)."""

from __future__ import annotations

import pytest

from modelkiln.operator import conversion_job
from modelkiln.operator.commands import artifact_key, defaulted_spec
from modelkiln.operator.conversion_job import build_job, job_name
from modelkiln.operator.devicepools import conversion_pool
from modelkiln.operator.serving import build_deployment, build_pdb, build_service, endpoints

CONVERTER_IMAGE = "registry.example.com/modelkiln/converter:1"
SERVER_IMAGE = "registry.example.com/modelkiln/server:1"
ARTIFACT = {"key": "f" * 64, "version": 4, "precision": "FP16"}


def job_for(model, pools, key=None):
    return build_job(model=model, spec=model["spec"], key=key or artifact_key(model["spec"]), image=CONVERTER_IMAGE,
                     repository_claim="models", pool=conversion_pool(pools))


def deployment_for(model, pool, replicas=1):
    return build_deployment(model=model, spec=model["spec"], artifact=ARTIFACT, image=SERVER_IMAGE,
                            repository_claim="models", pool=pool, replicas=replicas)


def container(obj):
    (only,) = obj["spec"]["template"]["spec"]["containers"]
    return only


def empty_dirs(obj) -> dict[str, dict]:
    return {v["name"]: v["emptyDir"] for v in obj["spec"]["template"]["spec"]["volumes"] if "emptyDir" in v}


@pytest.mark.parametrize("conversion, expected", [
    ({"precision": "FP32"}, {"--precision": "FP32"}),
    ({"precision": "FP16"}, {"--precision": "FP16"}),
    ({"precision": "INT8", "calibration": {"uri": "https://data.example.com/calib.npz", "samples": 50}},
     {"--precision": "INT8", "--calibration": "https://data.example.com/calib.npz", "--calibration-samples": "50"}),
])
def test_the_job_converts_at_the_requested_precision(make_model, pools, conversion, expected):
    model = make_model(conversion=conversion)
    job = job_for(model, pools)
    args = container(job)["args"]
    assert args[0] == "convert" and container(job)["command"] == ["modelkiln"]
    assert {flag: args[args.index(flag) + 1] for flag in expected} == expected
    assert args[args.index("--output") + 1] == "/models/digits"
    assert args[args.index("--artifact-key") + 1] == artifact_key(model["spec"])


def test_the_job_is_named_after_the_model_and_key_and_owned_by_the_model(make_model, pools):
    model = make_model()
    key = artifact_key(model["spec"])
    job = job_for(model, pools, key)
    assert job["metadata"]["name"] == job_name(name="digits", key=key) == f"digits-convert-{key[:8]}"
    assert job["metadata"]["namespace"] == "vision"
    (owner,) = job["metadata"]["ownerReferences"]
    assert owner == {"apiVersion": "modelkiln.io/v1alpha1", "kind": "InferenceModel", "name": "digits",
                     "uid": "0a1b2c3d-uid", "controller": True, "blockOwnerDeletion": True}


def test_the_job_retries_only_transient_failures_and_cleans_up(make_model, pools):
    spec = job_for(make_model(), pools)["spec"]
    assert spec["backoffLimit"] >= 1 and spec["ttlSecondsAfterFinished"] > 0
    fail_job = [r for r in spec["podFailurePolicy"]["rules"]
                if r["action"] == "FailJob" and r["onExitCodes"]["containerName"] == "convert"]
    assert fail_job == [{"action": "FailJob", "onExitCodes": {"containerName": "convert", "operator": "NotIn",
                                                              "values": [3]}}]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_the_job_reports_through_the_termination_message_with_bounded_resources(make_model, pools):
    convert = container(job_for(make_model(), pools))
    assert convert["terminationMessagePath"] == "/dev/termination-log"
    assert convert["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert convert["resources"]["limits"]["memory"] and convert["resources"]["requests"]["cpu"]


def test_the_job_writes_the_repository_on_the_cpu_pool(make_model, pools):
    pod = job_for(make_model(), pools)["spec"]["template"]["spec"]
    assert {"name": "repository", "persistentVolumeClaim": {"claimName": "models", "readOnly": False}} in pod["volumes"]
    assert pod["nodeSelector"] == {"modelkiln.io/pool": "cpu"}
    assert "tolerations" not in pod


def test_a_pvc_source_and_calibration_are_mounted_read_only_where_the_converter_reads_them(make_model, pools):
    model = make_model(source={"uri": "pvc://uploads/team/model.onnx"},
                       conversion={"precision": "INT8", "calibration": {"uri": "pvc://uploads/calib.npz"}})
    job = job_for(model, pools)
    args = container(job)["args"]
    assert args[args.index("--source") + 1] == "pvc://uploads/team/model.onnx"
    assert args[args.index("--calibration") + 1] == "pvc://uploads/calib.npz"
    assert {"name": "MODELKILN_PVC_ROOT", "value": "/mnt/pvc"} in container(job)["env"]
    assert {"name": "source-0", "mountPath": "/mnt/pvc/uploads", "readOnly": True} in container(job)["volumeMounts"]
    assert {"name": "source-0", "persistentVolumeClaim": {"claimName": "uploads", "readOnly": True}} in \
        job["spec"]["template"]["spec"]["volumes"]


def test_a_pvc_source_on_the_repository_claim_mounts_that_claim_once(make_model, pools):
    # A real kubelet never starts a pod with two volumes on one claim (kwok does): the source is a
    # second, read-only mount of the repository volume, and every claim backs exactly one volume.
    model = make_model(source={"uri": "pvc://models/uploads/model.onnx"},
                       conversion={"precision": "INT8", "calibration": {"uri": "pvc://uploads/calib.npz"}})
    job = job_for(model, pools)
    claims = [v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert sorted(claims) == ["models", "uploads"]
    mounts = container(job)["volumeMounts"]
    assert {"name": "repository", "mountPath": "/mnt/pvc/models", "readOnly": True} in mounts
    assert {"name": "repository", "mountPath": "/models/digits", "subPath": "digits"} in mounts
    assert {"name": "source-0", "mountPath": "/mnt/pvc/uploads", "readOnly": True} in mounts


def test_a_ca_config_map_is_mounted_read_only_and_given_to_the_converter(make_model, pools):
    model = make_model(source={"uri": "https://models.internal/digits.onnx",
                               "caConfigMap": {"name": "internal-ca", "key": "bundle.pem"}})
    job = job_for(model, pools)
    args = container(job)["args"]
    assert args[args.index("--ca-file") + 1] == "/etc/modelkiln/ca/ca.pem"
    assert {"name": "ca", "mountPath": "/etc/modelkiln/ca", "readOnly": True} in container(job)["volumeMounts"]
    assert {"name": "ca", "configMap": {"name": "internal-ca", "items": [{"key": "bundle.pem", "path": "ca.pem"}]}} \
        in job["spec"]["template"]["spec"]["volumes"]
    # a new CA is a new attempt: a conversion that failed on trust is retried once the CA is given
    without = make_model(source={"uri": "https://models.internal/digits.onnx"})
    assert artifact_key(model["spec"]) != artifact_key(without["spec"])
    assert "--ca-file" not in container(job_for(without, pools))["args"]
    assert all(v["name"] != "ca" for v in job_for(without, pools)["spec"]["template"]["spec"]["volumes"])
    # the key defaults as the CRD says, also for a spec no API server has defaulted (local files)
    plain = job_for(make_model(source={"uri": "https://models.internal/digits.onnx",
                                       "caConfigMap": {"name": "internal-ca"}}), pools)
    assert {"name": "ca", "configMap": {"name": "internal-ca", "items": [{"key": "ca.crt", "path": "ca.pem"}]}} \
        in plain["spec"]["template"]["spec"]["volumes"]


def test_the_converter_writes_only_its_models_directory_created_first_as_its_user(make_model, pools):
    job = job_for(make_model(source={"uri": "pvc://models/uploads/model.onnx"}), pools)
    pod = job["spec"]["template"]["spec"]
    writable = [m for m in container(job)["volumeMounts"] if not m.get("readOnly")]
    assert writable == [{"name": "repository", "mountPath": "/models/digits", "subPath": "digits"},
                        {"name": "scratch", "mountPath": "/tmp"}]
    # kubelet would create a missing subPath root-owned, unwritable for uid 1000: a step before the
    # converter, running as uid 1000 with the claim mounted, creates it first (mkdir -p: idempotent)
    (step,) = pod["initContainers"]
    assert step["command"] == ["mkdir", "-p", "/models/digits"] and step["image"] == CONVERTER_IMAGE
    assert step["volumeMounts"] == [{"name": "repository", "mountPath": "/models"}]
    assert pod["securityContext"]["runAsUser"] == 1000 and step["resources"]["limits"]["memory"]
    # a directory that cannot be created stays so: the Job fails at once rather than retrying
    assert {"action": "FailJob", "onExitCodes": {"containerName": "model-directory", "operator": "NotIn",
                                                 "values": [0]}} in job["spec"]["podFailurePolicy"]["rules"]


def test_downloads_are_staged_in_a_scratch_volume_sized_from_the_download_cap_and_the_pool(make_model, pools):
    default = job_for(make_model(source={"uri": "https://models.example.com/digits.onnx"}), pools)
    # room for the source and the calibration data at the default 20 GiB cap each, plus 2 GiB; the
    # converter may fill all but those 2 GiB of temporary files
    assert container(default)["args"][-4:] == ["--scratch", "/tmp", "--scratch-bytes", str(40 * 2**30)]
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "43008Mi"}} in default["spec"]["template"]["spec"]["volumes"]
    assert default["spec"]["activeDeadlineSeconds"] == 7200     # an hour of downloads, an hour converting
    for flag in ("--max-download-bytes", "--download-timeout", "--allow-link-local"):
        assert flag not in container(default)["args"]   # the converter's defaults are the same

    limited = make_model(source={"uri": "https://models.example.com/digits.onnx", "maxBytes": 2**30,
                                 "timeoutSeconds": 600, "allowLinkLocal": True})
    job = job_for(limited, pools)
    args = container(job)["args"]
    assert args[args.index("--max-download-bytes") + 1] == str(2**30)
    assert args[args.index("--download-timeout") + 1] == "600" and "--allow-link-local" in args
    # 2 x 1 GiB + 2 GiB fits in the CPU pool's default budget, which stays the limit
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}} in job["spec"]["template"]["spec"]["volumes"]
    assert job["spec"]["activeDeadlineSeconds"] == 3600 + 600
    assert args[-1] == str(18 * 2**30)      # of the pool's 20 GiB
    # raising a limit after a refusal is a new attempt; a spec without them keeps its key
    assert artifact_key(limited["spec"]) != artifact_key(make_model()["spec"])
    assert "maxBytes" not in defaulted_spec(make_model()["spec"])["source"]


@pytest.mark.parametrize("uri", ["s3://models/resnet/model.tar.gz", "https://models.example.com/m.zip?sig=x",
                                 "pvc://uploads/model.tgz#1/model.onnx"])
def test_an_archive_sources_scratch_volume_holds_it_unpacked_too(make_model, pools, uri):
    job = job_for(make_model(source={"uri": uri, "maxBytes": 10 * 2**30}), pools)
    # the archive, its members and the calibration data at the 10 GiB cap each, plus 2 GiB
    assert empty_dirs(job) == {"scratch": {"sizeLimit": "32768Mi"}}
    assert container(job)["args"][-2:] == ["--scratch-bytes", str(30 * 2**30)]


def test_the_operators_download_defaults_are_the_converters():
    from modelkiln.runtime.conversion import downloads

    assert (conversion_job.MAX_DOWNLOAD_BYTES, conversion_job.DOWNLOAD_TIMEOUT_SECONDS) == \
        (downloads.MAX_DOWNLOAD_BYTES, downloads.DOWNLOAD_TIMEOUT_SECONDS)


def test_source_credentials_reach_the_converter_as_standard_variables_from_the_secret_unread(make_model, pools):
    model = make_model(source={"uri": "s3://models/digits/model.tar.gz", "credentials": {"secretName": "s3-keys"}})
    env = {e["name"]: e for e in container(job_for(model, pools))["env"]}
    assert env["MODELKILN_SOURCE_CREDENTIALS"]["value"] == "s3-keys"     # named in a failure, never read
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AZURE_STORAGE_ACCOUNT_KEY"):
        assert env[variable]["valueFrom"] == {"secretKeyRef": {"name": "s3-keys", "key": variable, "optional": True}}
    assert env["MODELKILN_PVC_ROOT"]["value"] == "/mnt/pvc"     # a Secret cannot override the Job's own
    assert "serviceAccountName" not in job_for(model, pools)["spec"]["template"]["spec"]
    # a new Secret is a new attempt, as for a CA: a conversion refused access is retried with it
    assert artifact_key(model["spec"]) != artifact_key(make_model(source={"uri": "s3://models/digits/model.tar.gz"})["spec"])


def test_workload_identity_runs_the_job_as_the_service_account_still_without_an_api_token(make_model, pools):
    model = make_model(source={"uri": "gs://models/digits/", "serviceAccountName": "model-reader"})
    pod = job_for(model, pools)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "model-reader"
    assert pod["automountServiceAccountToken"] is False   # the identity webhooks project their own token
    env = {e["name"]: e.get("value") for e in container(job_for(model, pools))["env"]}
    assert env["MODELKILN_WORKLOAD_IDENTITY"] == "model-reader" and "AWS_ACCESS_KEY_ID" not in env


def test_the_version_pods_serve_now_is_kept_by_the_retention_of_the_next_conversion(make_model, pools):
    model = make_model(conversion={"precision": "FP16", "keepVersions": 3})
    model["status"] = {"artifact": {**ARTIFACT, "version": 7}}
    args = container(job_for(model, pools))["args"]
    assert args[args.index("--keep-version") + 1] == "7"
    assert args[args.index("--keep-versions") + 1] == "3"
    assert "--keep-version" not in container(job_for(make_model(), pools))["args"]


@pytest.mark.parametrize("build", ["job", "deployment"])
def test_every_pod_is_locked_down(make_model, pools, build):
    model = make_model()
    obj = job_for(model, pools) if build == "job" else deployment_for(model, pools["CPU"])
    pod = obj["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for each in pod["containers"] + pod.get("initContainers", []):
        security = each["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
    writable = {m["mountPath"] for m in container(obj)["volumeMounts"] if not m.get("readOnly")}
    assert "/tmp" in writable


@pytest.mark.parametrize("device, pool_name, resource, openvino_device", [
    ("CPU", "CPU", None, "CPU"),
    ("GPU", "GPU", "gpu.intel.com/i915", "GPU"),
    ("VPU", "NPU", "npu.intel.com/accel", "NPU"),
    ("NPU", "NPU", "npu.intel.com/accel", "NPU"),
])
def test_the_deployment_lands_on_the_device_pool(make_model, pools, device, pool_name, resource, openvino_device):
    model = make_model(serving={"device": device, "resources": {"requests": {"cpu": "2"}}})
    deployment = deployment_for(model, pools[pool_name])
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == pools[pool_name]["nodeSelector"]
    assert pod.get("tolerations") == pools[pool_name].get("tolerations")
    limits = container(deployment)["resources"].get("limits", {})
    assert (limits.get(resource) == 1) if resource else limits == {}
    assert container(deployment)["resources"]["requests"] == {"cpu": "2"}
    args = container(deployment)["args"]
    assert args[args.index("--device") + 1] == openvino_device


def test_the_deployment_serves_the_artifact_with_probes_on_the_model(make_model, pools):
    deployment = deployment_for(make_model(), pools["CPU"])
    runtime = container(deployment)
    assert runtime["args"][:5] == ["serve", "--repository", "/models", "--model", "digits"]
    assert runtime["args"][runtime["args"].index("--version-policy") + 1] == '{"specific":[4]}'
    assert runtime["startupProbe"]["httpGet"]["path"] == "/v2/models/digits/ready"
    assert runtime["readinessProbe"]["httpGet"]["path"] == "/v2/models/digits/ready"
    assert runtime["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {p["containerPort"] for p in runtime["ports"]} == {8080, 8081}
    assert {"name": "repository", "mountPath": "/models/digits", "subPath": "digits", "readOnly": True} in \
        runtime["volumeMounts"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["modelkiln.io/artifact-version"] == "4"  # a new artifact rolls the pods


def test_tls_and_a_token_secret_are_mounted_read_only_and_passed_to_the_server(make_model, pools):
    model = make_model(serving={"tls": {"secretName": "digits-tls"},
                                "auth": {"tokenSecret": {"name": "digits-tokens", "key": "tokens.txt"}}})
    deployment = deployment_for(model, pools["CPU"])
    runtime = container(deployment)
    args = runtime["args"]
    flags = {flag: args[args.index(flag) + 1] for flag in ("--tls-cert", "--tls-key", "--auth-token-file")}
    assert flags == {"--tls-cert": "/etc/modelkiln/tls/tls.crt", "--tls-key": "/etc/modelkiln/tls/tls.key",
                     "--auth-token-file": "/etc/modelkiln/auth/tokens"}
    mounts = {m["name"]: m for m in runtime["volumeMounts"]}
    assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/modelkiln/tls", "readOnly": True}
    # a directory, not a subPath: the kubelet updates the file when the Secret changes
    assert mounts["auth-token"] == {"name": "auth-token", "mountPath": "/etc/modelkiln/auth", "readOnly": True}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"] == {
        "secretName": "digits-tls", "defaultMode": 0o440,
        "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}
    assert volumes["auth-token"]["secret"] == {"secretName": "digits-tokens", "defaultMode": 0o440,
                                               "items": [{"key": "tokens.txt", "path": "tokens"}]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert runtime[probe]["httpGet"]["scheme"] == "HTTPS", probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https"
    service = build_service(model=model, tls=True)
    assert [p["appProtocol"] for p in service["spec"]["ports"]] == ["https", "grpc"]
    assert endpoints(name="digits", namespace="vision", tls=True) == {
        "rest": "https://digits.vision.svc:8080", "grpc": "digits.vision.svc:8081"}


def test_without_tls_or_auth_the_server_gets_no_such_flags_and_probes_use_http(make_model, pools):
    deployment = deployment_for(make_model(), pools["CPU"])
    runtime = container(deployment)
    assert not {"--tls-cert", "--tls-key", "--auth-token-file"} & set(runtime["args"])
    assert {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]} == {"repository", "tmp", "cache"}
    assert runtime["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert "prometheus.io/scheme" not in deployment["spec"]["template"]["metadata"]["annotations"]
    assert [p["appProtocol"] for p in build_service(model=make_model())["spec"]["ports"]] == ["http", "grpc"]


def test_a_stopping_server_leaves_the_service_before_it_stops_listening(make_model, pools):
    # The preStop sleep runs before SIGTERM, while the endpoints drop the pod; the grace period
    # covers it and the server's drain, so no in-flight request is cut.
    deployment = deployment_for(make_model(), pools["CPU"])
    runtime = container(deployment)
    pause = runtime["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(runtime["args"][runtime["args"].index("--drain-timeout") + 1])
    assert pause > 0
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pause + drain


def test_the_service_and_its_headless_twin_select_only_serving_pods(make_model, pools):
    model = make_model()
    service, headless = build_service(model=model), build_service(model=model, headless=True)
    assert service["metadata"]["name"] == "digits" and headless["metadata"]["name"] == "digits-headless"
    assert headless["spec"]["clusterIP"] == "None" and "clusterIP" not in service["spec"]
    assert {p["port"] for p in service["spec"]["ports"]} == {8080, 8081}
    pod_labels = deployment_for(model, pools["CPU"])["spec"]["template"]["metadata"]["labels"]
    job_labels = job_for(model, pools)["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= pod_labels.items()
    assert not selector.items() <= job_labels.items()


def test_the_pdb_keeps_all_but_one_serving_pod(make_model):
    pdb = build_pdb(model=make_model())
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": {
        "modelkiln.io/model": "digits", "app.kubernetes.io/component": "serving"}}}
    assert pdb["metadata"]["ownerReferences"][0]["name"] == "digits"


def test_a_pool_can_open_the_device_nodes_to_the_non_root_user(make_model, pools):
    pool = {**pools["GPU"], "supplementalGroups": [110]}
    pod = deployment_for(make_model(serving={"device": "GPU"}), pool)["spec"]["template"]["spec"]
    assert pod["securityContext"]["supplementalGroups"] == [110]
    assert pod["securityContext"]["runAsUser"] == 1000


def test_rollouts_keep_full_capacity_on_cpu_and_never_wait_for_a_spare_accelerator(make_model, pools):
    cpu = deployment_for(make_model(serving={"replicas": 2}), pools["CPU"])["spec"]["strategy"]
    gpu = deployment_for(make_model(serving={"device": "GPU", "replicas": 2}), pools["GPU"])["spec"]["strategy"]
    assert cpu["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert gpu["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}


# Pod defaults as a cluster owner would set them in the device-pool ConfigMap.
SERVING_DEFAULTS = {"resources": {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"memory": "6Gi"}},
                    "emptyDirSizeLimit": "8Gi"}
CONVERSION_DEFAULTS = {"resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "32Gi"}},
                       "emptyDirSizeLimit": "100Gi"}


def test_serving_pods_get_their_pools_resources_and_scratch_limit_when_the_model_sets_none(make_model, pools):
    deployment = deployment_for(make_model(serving={"device": "GPU"}), {**pools["GPU"], "serving": SERVING_DEFAULTS})
    assert container(deployment)["resources"] == {"requests": {"cpu": "2", "memory": "3Gi"},
                                                  "limits": {"memory": "6Gi", "gpu.intel.com/i915": 1}}
    assert empty_dirs(deployment) == {"tmp": {"sizeLimit": "8Gi"}, "cache": {"sizeLimit": "8Gi"}}


def test_a_models_own_resources_win_whole_over_its_pools(make_model, pools):
    model = make_model(serving={"resources": {"requests": {"memory": "10Gi"}}})
    deployment = deployment_for(model, {**pools["CPU"], "serving": SERVING_DEFAULTS})
    # Not merged: the pool's 6Gi limit under the model's 10Gi request would be refused by the API server.
    assert container(deployment)["resources"] == {"requests": {"memory": "10Gi"}}
    assert empty_dirs(deployment)["tmp"] == {"sizeLimit": "8Gi"}


def test_conversion_jobs_get_the_cpu_pools_conversion_defaults(make_model, pools):
    pools["CPU"]["conversion"] = CONVERSION_DEFAULTS
    pools["CPU"]["serving"] = SERVING_DEFAULTS
    job = job_for(make_model(), pools)
    assert container(job)["resources"] == CONVERSION_DEFAULTS["resources"]
    assert empty_dirs(job) == {"scratch": {"sizeLimit": "100Gi"}}


def test_a_models_conversion_resources_win_whole_over_its_pools_and_start_a_new_conversion(make_model, pools):
    pools["CPU"]["conversion"] = CONVERSION_DEFAULTS
    model = make_model(conversion={"precision": "FP16", "resources": {"limits": {"memory": "48Gi"}}})
    assert container(job_for(model, pools))["resources"] == {"limits": {"memory": "48Gi"}}
    # raised after an OOMKilled conversion, it is a new attempt; a spec without it keeps its key
    assert artifact_key(model["spec"]) != artifact_key(make_model(conversion={"precision": "FP16"})["spec"])
    assert "resources" not in defaulted_spec(make_model()["spec"])["conversion"]


def test_precision_auto_measures_with_the_serving_cpu_over_the_conversion_resources(make_model, pools):
    model = make_model(conversion={"precision": "Auto", "resources": {"requests": {"cpu": "1", "memory": "6Gi"},
                                                                      "limits": {"memory": "12Gi"}}},
                       serving={"resources": {"requests": {"cpu": "3"}}})
    assert container(job_for(model, pools))["resources"] == {"requests": {"cpu": "3", "memory": "6Gi"},
                                                             "limits": {"memory": "12Gi"}}


@pytest.mark.parametrize("build", ["job", "deployment"])
def test_without_pool_settings_every_pod_has_requests_limits_and_bounded_scratch(make_model, pools, build):
    obj = job_for(make_model(), pools) if build == "job" else deployment_for(make_model(), pools["CPU"])
    resources = container(obj)["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    assert empty_dirs(obj) and all(volume["sizeLimit"] for volume in empty_dirs(obj).values())
