"""The conversion Job: built from the spec, and its outcome read back from the pod.

The converter reports through the termination message (the JSON summary on success, a one-line
cause on failure) because that is what Kubernetes keeps after the pod is gone and what the
operator can read without access to the model repository. Retries are Kubernetes' own: the Job's
pod failure policy fails at once on a permanent cause (exit 1) and retries a transient one
(exit 3) with the Job controller's exponential backoff, up to BACKOFF_LIMIT.
"""

from __future__ import annotations

import json
from typing import Literal, TypedDict

from modelkiln.operator import objects
from modelkiln.operator.commands import AUTO, convert_args, defaulted_spec
from modelkiln.operator.devicepools import DevicePool

CONTAINER = "convert"
COMPONENT = "conversion"
TRANSIENT_EXIT_CODE = 3
BACKOFF_LIMIT = 3
TTL_SECONDS = 3600
DEADLINE_SECONDS = 7200
# pvc://CLAIM/path is read by the converter from $MODELKILN_PVC_ROOT/CLAIM/path (docs/interfaces.md).
PVC_ROOT = "/mnt/pvc"
# spec.source.caConfigMap's PEM bundle, mounted here and passed as --ca-file.
CA_DIR = "/etc/modelkiln/ca"
CA_FILE = "ca.pem"
RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}


class Outcome(TypedDict):
    state: Literal["running", "succeeded", "failed"]
    message: str
    summary: dict | None  # the converter's JSON summary, on success
    transient: bool


def job_name(*, name: str, key: str) -> str:
    return f"{name}-convert-{key[:8]}"


def source_claims(spec: dict) -> list[str]:
    """The claims named by pvc:// URIs of the source and the calibration data."""
    uris = [spec["source"]["uri"], spec["conversion"].get("calibration", {}).get("uri", "")]
    return sorted({uri.removeprefix("pvc://").partition("/")[0] for uri in uris if uri.startswith("pvc://")})


def build_job(*, model: dict, spec: dict, key: str, image: str, repository_claim: str,
              pool: DevicePool) -> dict:
    """Job `<name>-convert-<key8>` converting `spec` into `<repository>/<name>/` in `image`."""
    name = model["metadata"]["name"]
    args = convert_args(spec=spec, output=f"{objects.REPOSITORY_PATH}/{name}", artifact_key=key)
    # One volume per claim: a kubelet never starts a pod with two volumes on the same claim (it
    # waits on the second mount forever, with no Event), so a source on the repository claim
    # itself is a second, read-only mount of the repository volume.
    claims = source_claims(spec)
    volume_of = {claim: f"source-{i}" for i, claim in enumerate(c for c in claims if c != repository_claim)}
    volume_of[repository_claim] = "repository"
    mounts = [{"name": "repository", "mountPath": objects.REPOSITORY_PATH},
              {"name": "tmp", "mountPath": "/tmp"}]
    mounts += [{"name": volume_of[claim], "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}
               for claim in claims]
    volumes = [objects.repository_volume(claim=repository_claim, read_only=False),
               objects.scratch_volume("tmp")]
    volumes += [{"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
                for claim, volume in volume_of.items() if claim != repository_claim]
    ca = defaulted_spec(spec)["source"].get("caConfigMap")  # the CRD's default key applied
    if ca:
        args += ["--ca-file", f"{CA_DIR}/{CA_FILE}"]
        mounts.append({"name": "ca", "mountPath": CA_DIR, "readOnly": True})
        volumes.append({"name": "ca", "configMap": {
            "name": ca["name"], "items": [{"key": ca["key"], "path": CA_FILE}]}})
    container = {
        "name": CONTAINER,
        "image": image,
        "command": ["modelkiln"],
        "args": ["convert", *args],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "MODELKILN_PVC_ROOT", "value": PVC_ROOT}],
        "resources": _resources(defaulted_spec(spec), pool),
        "volumeMounts": mounts,
        "securityContext": objects.container_security_context(),
        "terminationMessagePath": "/dev/termination-log",
        # A converter killed before writing its cause (OOM, crash) still leaves its last log lines.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_labels = objects.labels(name=name, component=COMPONENT)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**objects.metadata(model=model, name=job_name(name=name, key=key), component=COMPONENT),
                     "annotations": {"modelkiln.io/artifact-key": key}},
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "activeDeadlineSeconds": DEADLINE_SECONDS,
            "podFailurePolicy": {"rules": [
                # A drained or preempted node is nobody's fault: not counted against the limit.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                # Only a transient cause (exit 3) is worth another attempt.
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn",
                                                      "values": [TRANSIENT_EXIT_CODE]}},
            ]},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": objects.pod_spec(containers=[container], volumes=volumes, pool=pool,
                                         restartPolicy="Never"),
            },
        },
    }


def _resources(spec: dict, pool: DevicePool) -> dict:
    """The converter's resources; precision Auto measures as the model will serve: with the serving
    pod's CPU where the spec sets it, and with the pool's device."""
    if spec["conversion"]["precision"] != AUTO:
        return RESOURCES
    resources = {kind: dict(values) for kind, values in RESOURCES.items()}
    for kind in ("requests", "limits"):
        cpu = spec["serving"].get("resources", {}).get(kind, {}).get("cpu")
        if cpu is not None:
            resources[kind]["cpu"] = cpu
    if pool.get("resource"):
        resources["limits"][pool["resource"]] = 1
    return resources


def _condition(job: dict, kind: str) -> dict | None:
    for condition in job.get("status", {}).get("conditions", []):
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def _last_termination(pods: list[dict]) -> dict | None:
    """The `terminated` state of the converter in the most recently started pod that has one."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True):
        for status in pod.get("status", {}).get("containerStatuses", []):
            terminated = status.get("state", {}).get("terminated")
            if status.get("name") == CONTAINER and terminated:
                return terminated
    return None


def conversion_outcome(*, job: dict, pods: list[dict]) -> Outcome:
    """What the Job `job` and its `pods` say about the conversion."""
    terminated = _last_termination(pods) or {}
    message = (terminated.get("message") or "").strip()
    if _condition(job, "Complete"):
        last_line = message.splitlines()[-1] if message else ""
        try:
            summary = json.loads(last_line)
        except json.JSONDecodeError:
            summary = None
        if not isinstance(summary, dict) or "version" not in summary:
            return {"state": "failed", "summary": None, "transient": False,
                    "message": f"conversion Job {job['metadata']['name']} succeeded but its pod's "
                               f"termination message holds no JSON summary: {message[:200]!r}"}
        return {"state": "succeeded", "summary": summary, "transient": False, "message": ""}
    failed = _condition(job, "Failed")
    if failed:
        transient = terminated.get("exitCode") == TRANSIENT_EXIT_CODE
        cause = message.splitlines()[-1] if message else failed.get("message") or failed.get("reason", "")
        if transient:
            cause += f" (transient; gave up after {BACKOFF_LIMIT + 1} attempts)"
        return {"state": "failed", "summary": None, "transient": transient, "message": cause}
    return {"state": "running", "summary": None, "transient": False, "message": objects.waiting_reason(pods)}
