"""Status of an InferenceModel, computed from what was observed: pure functions.

Conditions follow the Kubernetes API conventions and kstatus: a `Ready` summary condition and
`observedGeneration`, so `kubectl wait --for=condition=Ready`, Argo CD and Flux need no custom
health check. `phase` is only a summary for people (a printer column), derived from conditions.
"""

from __future__ import annotations

from typing import Literal, TypedDict

CONVERTED = "Converted"
READY = "Ready"
# Present with spec.serving.autoscaling: what scales the model, or why nothing can (it still serves).
AUTOSCALING = "Autoscaling"
SCALED_TO_ZERO = "ScaledToZero"
# kstatus' "abnormal-true" conditions, present only while they hold: Flux (kstatus) reads them,
# not Ready, to tell work in progress from a failure that waits for a person.
RECONCILING = "Reconciling"
STALLED = "Stalled"

# Reasons that need a person (a spec or configuration change), not time.
# A rolled back or aborted rollout (rollout.py) keeps serving the earlier version until the spec changes.
FAILURE_REASONS = frozenset({"ConversionFailed", "NoDevicePool", "RepositoryMissing", "RolledBack", "RolloutAborted"})


class Condition(TypedDict, total=False):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


def condition(kind: str, ok: bool, *, reason: str, message: str, generation: int) -> Condition:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message,
            "observedGeneration": generation}


def merge_conditions(old: list[Condition], new: list[Condition], *, now: str) -> list[Condition]:
    """`new` with lastTransitionTime kept from `old` where the status did not change."""
    previous = {c.get("type"): c for c in old}
    merged = []
    for cond in new:
        before = previous.get(cond["type"])
        unchanged = before is not None and before.get("status") == cond["status"]
        merged.append({**cond, "lastTransitionTime": before["lastTransitionTime"]
                       if unchanged and before.get("lastTransitionTime") else now})
    return merged


def summarize(converted: Condition, ready: Condition, *others: Condition) -> list[Condition]:
    """The status conditions: Converted, Ready and `others` (Autoscaling), plus Stalled while a
    failure needs a person (a spec or configuration change) or Reconciling while conversion or
    rollout is under way."""
    conditions = [converted, ready, *others]
    failure = next((c for c in (converted, ready)
                    if c["status"] == "False" and c["reason"] in FAILURE_REASONS), None)
    if failure is not None:
        conditions.append(condition(STALLED, True, reason=failure["reason"],
                                    message=failure["message"], generation=ready["observedGeneration"]))
    elif ready["status"] != "True":
        conditions.append(condition(RECONCILING, True, reason=ready["reason"],
                                    message=ready["message"], generation=ready["observedGeneration"]))
    return conditions


def find(conditions: list[Condition], kind: str) -> Condition | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def phase(conditions: list[Condition]) -> str:
    converted, ready = find(conditions, CONVERTED), find(conditions, READY)
    if any(c.get("status") == "False" and c.get("reason") in FAILURE_REASONS for c in conditions):
        return "Failed"
    if ready and ready.get("status") == "True":
        return "Idle" if ready.get("reason") == SCALED_TO_ZERO else "Ready"
    if converted and converted.get("status") == "True":
        return "Deploying"
    if converted:
        return "Converting"
    return "Pending"


def ready_from_deployment(deployment: dict, *, wanted: int, generation: int) -> Condition:
    """Ready when the Deployment has rolled out this spec and keeps `wanted` pods available.

    A pod is available only once its readiness probe (the model's ready endpoint) passes, so
    Ready means the model answers, not merely that a port is open.
    """
    status = deployment.get("status", {})
    updated = status.get("updatedReplicas", 0)
    available = status.get("availableReplicas", 0)
    if wanted == 0:
        return ready_at_zero(deployment, generation=generation)
    if status.get("observedGeneration", 0) < deployment["metadata"].get("generation", 0) or updated < wanted:
        return condition(READY, False, reason="RollingOut", generation=generation,
                         message=f"{updated} of {wanted} replicas run the current spec")
    # as `kubectl rollout status`: until the old pods are gone, some clients get the old spec (and
    # availableReplicas counts the old pods too)
    old = status.get("replicas", 0) - updated
    if old > 0:
        return condition(READY, False, reason="RollingOut", generation=generation,
                         message=f"{old} replica(s) of the previous spec still serve")
    if available < wanted:
        return condition(READY, False, reason="MinimumReplicasUnavailable", generation=generation,
                         message=f"{available} of {wanted} replicas have the model loaded")
    return condition(READY, True, reason="MinimumReplicasAvailable", generation=generation,
                     message=f"{available} of {wanted} replicas have the model loaded")


def ready_at_zero(deployment: dict, *, generation: int) -> Condition:
    """Ready for a model that scales to zero: at zero pods it answers too (the interceptor holds a
    request while a pod starts), so Argo CD and Flux see it healthy; the reason tells the two apart."""
    pods = deployment["spec"].get("replicas", 1)
    available = deployment.get("status", {}).get("availableReplicas", 0)
    if pods == 0:
        return condition(READY, True, reason=SCALED_TO_ZERO, generation=generation,
                         message="no pod: no request came for the idle time; the next request starts one "
                                 "and waits for it")
    if available == 0:
        return condition(READY, True, reason="ScalingFromZero", generation=generation,
                         message=f"0 of {pods} replicas have the model loaded; requests wait for the first")
    return condition(READY, True, reason="MinimumReplicasAvailable", generation=generation,
                     message=f"{available} of {pods} replicas have the model loaded")


def transitions(old: list[Condition], new: list[Condition]) -> list[Condition]:
    """Conditions of `new` whose status or reason differs from `old`: each is worth an Event."""
    before = {c.get("type"): (c.get("status"), c.get("reason")) for c in old}
    return [c for c in new if before.get(c["type"]) != (c["status"], c["reason"])]


def patch(old: dict, new: dict) -> dict:
    """The JSON merge patch taking status `old` to `new`: only what differs (empty when nothing does).

    Fields `new` no longer has are removed explicitly (None); lastTransitionTime does not churn,
    `merge_conditions` keeps it while a condition's status stays.
    """
    changes: dict = {field: None for field in old if field not in new}
    changes.update({field: value for field, value in new.items() if old.get(field) != value})
    return changes
