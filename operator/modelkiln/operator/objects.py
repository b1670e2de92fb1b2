"""Pieces every object the operator builds shares: names, labels, ownership, a locked-down pod.

Pure functions returning new dicts, so the Job and serving builders stay short and agree on
labels (the Service selects exactly the serving pods) and on the pod's security posture.
"""

from __future__ import annotations

import hashlib
import json

from modelkiln.operator.devicepools import DevicePool
from modelkiln.operator.schema import API_VERSION, KIND

MODEL_LABEL = "modelkiln.io/model"
COMPONENT_LABEL = "app.kubernetes.io/component"
REPOSITORY_PATH = "/models"
RUNTIME_UID = 1000  # the user of the server and converter images (docker/server.Dockerfile, converter.Dockerfile)
MANAGED_BY = {"app.kubernetes.io/managed-by": "modelkiln-operator"}
# The digest of the desired object last applied to a child: equal means nothing to apply.
DIGEST_ANNOTATION = "modelkiln.io/applied-digest"


def selector_labels(*, name: str, component: str) -> dict[str, str]:
    return {MODEL_LABEL: name, COMPONENT_LABEL: component}


def labels(*, name: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "modelkiln", "app.kubernetes.io/instance": name,
            **MANAGED_BY, **selector_labels(name=name, component=component)}


def selector_string(selector: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def metadata(*, model: dict, name: str, component: str) -> dict:
    """Metadata of a child of `model` (an InferenceModel): same namespace, owned by it."""
    owner = model["metadata"]
    return {
        "name": name,
        "namespace": owner["namespace"],
        "labels": labels(name=owner["name"], component=component),
        "ownerReferences": [{"apiVersion": API_VERSION, "kind": KIND, "name": owner["name"],
                             "uid": owner["uid"], "controller": True, "blockOwnerDeletion": True}],
    }


def with_digest(body: dict) -> dict:
    """`body` annotated with the digest of its own content (metadata included: a new owner uid counts)."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]
    metadata = body["metadata"]
    return {**body, "metadata": {**metadata, "annotations": {**metadata.get("annotations", {}),
                                                             DIGEST_ANNOTATION: digest}}}


def digest(live: dict | None) -> str | None:
    """The digest `with_digest` left on a live object, if any."""
    return ((live or {}).get("metadata", {}).get("annotations") or {}).get(DIGEST_ANNOTATION)


def container_security_context() -> dict:
    return {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def pod_spec(*, containers: list[dict], volumes: list[dict], pool: DevicePool, **extra) -> dict:
    """A pod that runs as the runtime's non-root user on `pool`, without an API token."""
    spec = {
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUNTIME_UID, "runAsGroup": RUNTIME_UID,
                            "fsGroup": RUNTIME_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": containers,
        "volumes": volumes,
        **extra,
    }
    if pool.get("nodeSelector"):
        spec["nodeSelector"] = dict(pool["nodeSelector"])
    if pool.get("tolerations"):
        spec["tolerations"] = [dict(t) for t in pool["tolerations"]]
    if pool.get("supplementalGroups"):
        spec["securityContext"]["supplementalGroups"] = list(pool["supplementalGroups"])
    return spec


def scratch_volume(name: str, *, size_limit: str) -> dict:
    # Past its limit the kubelet evicts the pod: one pod cannot fill its node's disk.
    return {"name": name, "emptyDir": {"sizeLimit": size_limit}}


def repository_volume(*, claim: str, read_only: bool) -> dict:
    return {"name": "repository", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}


def waiting_reason(pods: list[dict]) -> str:
    """Why the newest pod is not running yet (unschedulable, image pull, ...), or ""."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True):
        status = pod.get("status", {})
        for condition in status.get("conditions", []):
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return condition.get("message") or condition.get("reason", "")
        for container in status.get("containerStatuses", []):
            waiting = container.get("state", {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating"):
                return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        return ""
    return ""
