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

from kubernetes.utils.quantity import parse_quantity

from modelkiln.operator import objects
from modelkiln.redaction import scrubbed
from modelkiln.operator.commands import AUTO, convert_args, defaulted_spec, is_archive
from modelkiln.operator.devicepools import DevicePool, pod_defaults

CONTAINER = "convert"
# Creates the model's directory on the repository claim as the converter's user before the
# converter mounts just that directory: kubelet would create a missing subPath root-owned.
MODEL_DIRECTORY_CONTAINER = "model-directory"
COMPONENT = "conversion"
TRANSIENT_EXIT_CODE = 3
BACKOFF_LIMIT = 3
TTL_SECONDS = 3600
# The converter's defaults for spec.source.maxBytes and timeoutSeconds (--max-download-bytes,
# --download-timeout), from which the scratch volume and the Job's deadline are sized.
MAX_DOWNLOAD_BYTES = 20 * 2**30
DOWNLOAD_TIMEOUT_SECONDS = 3600
# Converting after the downloads: the Job's deadline is this plus the downloads' own.
CONVERSION_SECONDS = 3600
# Downloads (the source and the calibration data, each up to the cap), an archive's unpacked
# members (up to the cap again), HOME and TMPDIR share the scratch volume; this is on top, for the
# libraries' temporary files. The converter is told the rest (--scratch-bytes): an archive bomb is
# then refused with a cause before the kubelet would evict the pod for filling the volume.
SCRATCH = "/tmp"
SCRATCH_HEADROOM_BYTES = 2 * 2**30
# pvc://CLAIM/path is read by the converter from $MODELKILN_PVC_ROOT/CLAIM/path (docs/interfaces.md).
PVC_ROOT = "/mnt/pvc"
# spec.source.caConfigMap's PEM bundle, mounted here and passed as --ca-file.
CA_DIR = "/etc/modelkiln/ca"
CA_FILE = "ca.pem"
# The standard variables of the object stores that a spec.source.credentials Secret may hold. Each
# is read from the Secret's key of the same name, if present: the operator references the Secret
# without reading it, and only these names reach the converter's environment.
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_ENDPOINT",
    "AZURE_ALLOW_HTTP", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID",
)


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


def scratch_limit(defaults: dict, max_bytes: int, *, archive: bool) -> str:
    """The scratch volume's sizeLimit: the pool's budget, raised to what the download cap needs
    (the source, unpacked too when it is an archive, and the calibration data at the cap, plus
    temporary files)."""
    needed = (3 if archive else 2) * max_bytes + SCRATCH_HEADROOM_BYTES
    budget = int(parse_quantity(defaults["emptyDirSizeLimit"]))
    return defaults["emptyDirSizeLimit"] if budget >= needed else f"{-(-needed // 2**20)}Mi"


def credential_env(source: dict) -> list[dict]:
    """The conversion container's variables for spec.source.credentials and serviceAccountName;
    the MODELKILN_ ones let the converter name the Secret or identity in a failure."""
    env = []
    secret = source.get("credentials", {}).get("secretName")
    if secret:
        env.append({"name": "MODELKILN_SOURCE_CREDENTIALS", "value": secret})
        env += [{"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": variable, "optional": True}}}
                for variable in CREDENTIAL_VARIABLES]
    if source.get("serviceAccountName"):
        env.append({"name": "MODELKILN_WORKLOAD_IDENTITY", "value": source["serviceAccountName"]})
    return env


def build_job(*, model: dict, spec: dict, key: str, image: str, repository_claim: str,
              pool: DevicePool) -> dict:
    """Job `<name>-convert-<key8>` converting `spec` into `<repository>/<name>/` in `image`.

    The converter parses an untrusted model: it may write only its model's directory of the
    repository (a subPath mount) and its own scratch volume; the claims its sources are on, the
    repository's included, are mounted read-only.
    """
    name = model["metadata"]["name"]
    output = f"{objects.REPOSITORY_PATH}/{name}"
    source = defaulted_spec(spec)["source"]
    defaults = pod_defaults(pool, "conversion")  # the CPU pool's (devicepools.conversion_pool)
    max_bytes = source.get("maxBytes", MAX_DOWNLOAD_BYTES)
    scratch = scratch_limit(defaults, max_bytes, archive=is_archive(source["uri"]))
    args = convert_args(spec=spec, output=output, artifact_key=key) + [
        "--scratch", SCRATCH, "--scratch-bytes", str(int(parse_quantity(scratch)) - SCRATCH_HEADROOM_BYTES)]
    served = (model.get("status") or {}).get("artifact", {}).get("version")
    if served is not None:     # its pods keep serving it while this Job runs: retention keeps it
        args += ["--keep-version", str(served)]
    # One volume per claim: a kubelet never starts a pod with two volumes on the same claim (it
    # waits on the second mount forever, with no Event), so a source on the repository claim
    # itself is a second, read-only mount of the repository volume.
    claims = source_claims(spec)
    volume_of = {claim: f"source-{i}" for i, claim in enumerate(c for c in claims if c != repository_claim)}
    volume_of[repository_claim] = "repository"
    mounts = [{"name": "repository", "mountPath": output, "subPath": name},
              {"name": "scratch", "mountPath": SCRATCH}]
    mounts += [{"name": volume_of[claim], "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}
               for claim in claims]
    volumes = [objects.repository_volume(claim=repository_claim, read_only=False),
               objects.scratch_volume("scratch", size_limit=scratch)]
    volumes += [{"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
                for claim, volume in volume_of.items() if claim != repository_claim]
    ca = source.get("caConfigMap")  # the CRD's default key applied
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
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "MODELKILN_PVC_ROOT", "value": PVC_ROOT},
                *credential_env(source)],
        "resources": _resources(defaulted_spec(spec), pool, defaults),
        "volumeMounts": mounts,
        "securityContext": objects.container_security_context(),
        "terminationMessagePath": "/dev/termination-log",
        # A converter killed before writing its cause (OOM, crash) still leaves its last log lines.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    model_directory = {
        "name": MODEL_DIRECTORY_CONTAINER,
        "image": image,
        "command": ["mkdir", "-p", output],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "volumeMounts": [{"name": "repository", "mountPath": objects.REPOSITORY_PATH}],
        "securityContext": objects.container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",    # mkdir's one line says why it failed
    }
    pod_labels = objects.labels(name=name, component=COMPONENT)
    account = spec["source"].get("serviceAccountName")    # workload identity (IRSA, GKE, Azure)
    identity = {"serviceAccountName": account} if account else {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**objects.metadata(model=model, name=job_name(name=name, key=key), component=COMPONENT),
                     "annotations": {"modelkiln.io/artifact-key": key}},
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "activeDeadlineSeconds": CONVERSION_SECONDS + source.get("timeoutSeconds", DOWNLOAD_TIMEOUT_SECONDS),
            "podFailurePolicy": {"rules": [
                # A drained or preempted node is nobody's fault: not counted against the limit.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                # Only a transient cause (exit 3) is worth another attempt.
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn",
                                                      "values": [TRANSIENT_EXIT_CODE]}},
                # A directory that cannot be created (a claim the user cannot write) stays so.
                {"action": "FailJob", "onExitCodes": {"containerName": MODEL_DIRECTORY_CONTAINER,
                                                      "operator": "NotIn", "values": [0]}},
            ]},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": objects.pod_spec(containers=[container], volumes=volumes, pool=pool,
                                         initContainers=[model_directory], restartPolicy="Never",
                                         **identity),
            },
        },
    }


def _resources(spec: dict, pool: DevicePool, defaults: dict) -> dict:
    """The converter's resources: spec.conversion.resources, else the pool's conversion defaults
    (whole, not merged: a pool's limit under the model's request would be refused); precision Auto
    measures as the model will serve: with the serving pod's CPU where the spec sets it, and with
    the pool's device."""
    chosen = spec["conversion"].get("resources") or defaults.get("resources", {})
    resources = {kind: dict(values) for kind, values in chosen.items()}
    if spec["conversion"]["precision"] != AUTO:
        return resources
    for kind in ("requests", "limits"):
        cpu = spec["serving"].get("resources", {}).get(kind, {}).get("cpu")
        if cpu is not None:
            resources.setdefault(kind, {})["cpu"] = cpu
    if pool.get("resource"):
        resources.setdefault("limits", {})[pool["resource"]] = 1
    return resources


def _condition(job: dict, kind: str) -> dict | None:
    for condition in job.get("status", {}).get("conditions", []):
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def _newest_first(pods: list[dict]) -> list[dict]:
    return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)


def _last_termination(pods: list[dict]) -> dict | None:
    """The `terminated` state of the converter, or of the step before it when that failed, in
    the most recently started pod that has one."""
    for pod in _newest_first(pods):
        status = pod.get("status", {})
        for init in status.get("initContainerStatuses", []):
            terminated = init.get("state", {}).get("terminated")
            if init.get("name") == MODEL_DIRECTORY_CONTAINER and terminated and terminated.get("exitCode"):
                return {**terminated, "message": "cannot create the model's directory on the repository claim "
                                                 f"as uid {objects.RUNTIME_UID}: "
                                                 + " ".join((terminated.get("message") or "").split())}
        for container in status.get("containerStatuses", []):
            terminated = container.get("state", {}).get("terminated")
            if container.get("name") == CONTAINER and terminated:
                if terminated.get("reason") == "OOMKilled":
                    return {**terminated, "message": out_of_memory(pod)}
                return terminated
    return None


def out_of_memory(pod: dict) -> str:
    """Why an OOMKilled converter stopped, with its memory limit and the field that raises it.
    Its log's tail (FallbackToLogsOnError) says only what it was doing when killed."""
    containers = pod.get("spec", {}).get("containers", [])
    limit = next((c.get("resources", {}).get("limits", {}).get("memory") for c in containers
                  if c.get("name") == CONTAINER), None)
    if limit is None:
        return ("the converter was killed for lack of memory (OOMKilled) with no memory limit of its own: its "
                "node ran out; set spec.conversion.resources.requests.memory to what the conversion needs")
    return (f"the converter ran out of memory (OOMKilled at its limit of {limit}); raise "
            "spec.conversion.resources.limits.memory")


def conversion_outcome(*, job: dict, pods: list[dict]) -> Outcome:
    """What the Job `job` and its `pods` say about the conversion."""
    terminated = _last_termination(pods) or {}
    # The converter redacts what it writes; a message that came from elsewhere (the log's tail
    # after a crash) is scrubbed of credentials and signatures here too, before status and Events.
    message = scrubbed((terminated.get("message") or "").strip())
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
