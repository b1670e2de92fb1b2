"""GitOps tools judge an InferenceModel's health correctly at every phase.

The statuses are built with the operator's own status functions (conditions, phase), the way a
reconcile writes them. Flux computes health with kstatus; `kstatus_health` below is kstatus'
generic rules as Flux applies them to custom resources (sigs.k8s.io/cli-utils
`checkGenericProperties`, plus the Ready condition). Argo CD runs the Lua script of
manifests/gitops, here in a real Lua 5.1 interpreter (lupa), the language version of Argo CD's
gopher-lua.
"""

from __future__ import annotations

import pytest
import yaml
from chart_helpers import ROOT
from lupa.lua51 import LuaRuntime  # Argo CD runs health checks in gopher-lua, a Lua 5.1

from modelkiln.operator import schema
from modelkiln.operator import status as st

GITOPS = ROOT / "manifests" / "gitops"
LUA = (GITOPS / "inferencemodel-health.lua").read_text()


def kstatus_health(obj: dict) -> str:
    """kstatus' status of a custom resource: InProgress, Current, Failed or Terminating."""
    if obj["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    generation = obj["metadata"].get("generation")
    if generation is not None and "observedGeneration" in status and status["observedGeneration"] != generation:
        return "InProgress"
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    if conditions.get("Reconciling", {}).get("status") == "True":
        return "InProgress"
    if conditions.get("Stalled", {}).get("status") == "True":
        return "Failed"
    if "Ready" in conditions:
        return "Current" if conditions["Ready"]["status"] == "True" else "InProgress"
    return "Current"  # kstatus: nothing to judge by (the operator has not written status yet)


def argocd_health(obj: dict) -> tuple[str, str]:
    """Run the Argo CD health script on `obj` as Argo CD does: `obj` global, `hs` returned."""
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = to_lua(lua, obj)
    result = lua.execute(LUA)
    return result["status"], result["message"]


def to_lua(lua: LuaRuntime, value):
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def model(*, generation: int = 1, observed: int | None = None, conditions: list[st.Condition] | None = None,
          deleting: bool = False) -> dict:
    obj = {"apiVersion": f"{schema.GROUP}/{schema.VERSION}", "kind": schema.KIND,
           "metadata": {"name": "digits", "namespace": "models", "generation": generation},
           "spec": {"source": {"uri": "https://models.example.com/digits.onnx"}}}
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2026-11-26T00:00:00Z"
    if conditions is not None:
        conditions = st.merge_conditions([], st.summarize(*conditions), now="2026-11-26T00:00:00Z")
        obj["status"] = {"observedGeneration": observed if observed is not None else generation,
                         "phase": st.phase(conditions), "conditions": conditions}
    return obj


def converted(ok: bool, reason: str, *, generation: int = 1) -> st.Condition:
    return st.condition(st.CONVERTED, ok, reason=reason, message=f"conversion: {reason}", generation=generation)


def ready(ok: bool, reason: str, *, generation: int = 1) -> st.Condition:
    return st.condition(st.READY, ok, reason=reason, message=f"serving: {reason}", generation=generation)


READY_DEPLOYMENT = {"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "updatedReplicas": 2,
                                                             "availableReplicas": 2}}
AT_ZERO_DEPLOYMENT = {"metadata": {"generation": 4}, "spec": {"replicas": 0}, "status": {"observedGeneration": 4}}
ROLLING_DEPLOYMENT = {"metadata": {"generation": 3}, "status": {"observedGeneration": 2, "updatedReplicas": 2,
                                                               "availableReplicas": 2}}

# (case, model, operator phase, kstatus, Argo CD)
CASES = [
    ("pending: no status yet", model(), None, "Current", "Progressing"),
    ("converting", model(conditions=[converted(False, "Converting"), ready(False, "Converting")]),
     "Converting", "InProgress", "Progressing"),
    ("deploying: rolling out",
     model(conditions=[converted(True, "ConversionSucceeded"),
                       st.ready_from_deployment(ROLLING_DEPLOYMENT, wanted=2, generation=1)]),
     "Deploying", "InProgress", "Progressing"),
    ("ready",
     model(conditions=[converted(True, "ConversionSucceeded"),
                       st.ready_from_deployment(READY_DEPLOYMENT, wanted=2, generation=1)]),
     "Ready", "Current", "Healthy"),
    ("scaled to zero: no pod, requests wait for one",
     model(conditions=[converted(True, "ConversionSucceeded"),
                       st.ready_from_deployment(AT_ZERO_DEPLOYMENT, wanted=0, generation=1),
                       st.condition(st.AUTOSCALING, True, reason="KEDAHTTPAddOn", message="0-2 pods", generation=1)]),
     "Idle", "Current", "Healthy"),
    ("ready, its autoscaler missing (it serves unscaled)",
     model(conditions=[converted(True, "ConversionSucceeded"),
                       st.ready_from_deployment(READY_DEPLOYMENT, wanted=2, generation=1),
                       st.condition(st.AUTOSCALING, False, reason="KEDAMissing", message="no KEDA", generation=1)]),
     "Ready", "Current", "Healthy"),
    ("failed: conversion",
     model(conditions=[converted(False, "ConversionFailed"), ready(False, "ConversionFailed")]),
     "Failed", "Failed", "Degraded"),
    ("failed: no device pool",
     model(conditions=[converted(True, "ConversionSucceeded"), ready(False, "NoDevicePool")]),
     "Failed", "Failed", "Degraded"),
    ("failed: no repository claim",
     model(conditions=[converted(False, "RepositoryMissing"), ready(False, "RepositoryMissing")]),
     "Failed", "Failed", "Degraded"),
    ("ready, but a new spec is not observed yet",
     model(generation=2, observed=1, conditions=[converted(True, "ConversionSucceeded"),
                                                 ready(True, "MinimumReplicasAvailable")]),
     "Ready", "InProgress", "Progressing"),
    ("failed, but a new spec is not observed yet",
     model(generation=2, observed=1, conditions=[converted(False, "ConversionFailed"),
                                                 ready(False, "ConversionFailed")]),
     "Failed", "InProgress", "Progressing"),
    ("being deleted", model(deleting=True, conditions=[converted(True, "ConversionSucceeded"),
                                                       ready(True, "MinimumReplicasAvailable")]),
     "Ready", "Terminating", "Healthy"),
]


@pytest.mark.parametrize(("obj", "phase", "expected"), [(c[1], c[2], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_kstatus_health_follows_the_phase(obj, phase, expected):
    assert (obj.get("status") or {}).get("phase") == phase
    assert kstatus_health(obj) == expected


@pytest.mark.parametrize(("obj", "expected"), [(c[1], c[4]) for c in CASES], ids=[c[0] for c in CASES])
def test_the_argocd_lua_health_check_follows_the_phase(obj, expected):
    status, message = argocd_health(obj)
    assert status == expected
    conditions = (obj.get("status") or {}).get("conditions", [])
    if conditions and obj["status"]["observedGeneration"] == obj["metadata"]["generation"]:
        shown = next(c for c in conditions if c["status"] == "False") if status == "Degraded" else st.find(conditions, st.READY)
        assert message == f"{shown['reason']}: {shown['message']}"
    else:
        assert "Waiting for the operator" in message


def test_the_argocd_configmap_snippet_holds_the_lua_script():
    configmap = yaml.safe_load((GITOPS / "argocd-cm-health.yaml").read_text())
    assert configmap["metadata"] == {"name": "argocd-cm", "namespace": "argocd",
                                     "labels": {"app.kubernetes.io/name": "argocd-cm",
                                                "app.kubernetes.io/part-of": "argocd"}}
    assert configmap["data"] == {f"resource.customizations.health.{schema.GROUP}_{schema.KIND}": LUA}


def test_the_flux_example_checks_the_health_of_our_kind():
    kustomization = yaml.safe_load((GITOPS / "flux-kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
    (check,) = kustomization["spec"]["healthChecks"]
    assert (check["apiVersion"], check["kind"]) == (f"{schema.GROUP}/{schema.VERSION}", schema.KIND)
    assert check["namespace"] == kustomization["spec"]["targetNamespace"]
