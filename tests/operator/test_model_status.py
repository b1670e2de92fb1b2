"""Status from observations: the conversion outcome, conditions, phase and readiness."""

from __future__ import annotations

import json

import pytest

from modelkiln.operator import status as st
from modelkiln.operator.commands import artifact_key
from modelkiln.operator.conversion_job import build_job, conversion_outcome
from modelkiln.operator.devicepools import conversion_pool

SUMMARY = {"version": 3, "path": "/models/digits/3", "artifactKey": "abc", "precision": "INT8",
           "sha256": "e" * 64, "sizeBytes": 5120, "reused": False,
           "verification": {"maxAbsError": 0.01, "cosine": 0.999, "top1Agreement": 1.0}}


def job(condition: str | None) -> dict:
    conditions = [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded",
                   "message": "Job has reached the specified backoff limit"}] if condition else []
    return {"metadata": {"name": "digits-convert-abc12345"}, "status": {"conditions": conditions}}


def pod(created: str, *, exit_code: int, message: str) -> dict:
    return {"metadata": {"creationTimestamp": created},
            "status": {"containerStatuses": [{"name": "convert", "state": {"terminated": {
                "exitCode": exit_code, "message": message, "reason": "Error" if exit_code else "Completed"}}}]}}


def test_a_succeeded_job_yields_the_converters_summary():
    done = pod("2026-11-26T01:00:00Z", exit_code=0, message="converting...\n" + json.dumps(SUMMARY))
    outcome = conversion_outcome(job=job("Complete"), pods=[done])
    assert outcome == {"state": "succeeded", "summary": SUMMARY, "transient": False, "message": ""}


def test_a_failed_job_yields_the_one_line_cause_of_the_last_attempt():
    first = pod("2026-11-26T01:00:00Z", exit_code=3, message="download timed out")
    last = pod("2026-11-26T01:02:00Z", exit_code=1, message="source sha256 mismatch: expected aa…, got bb…")
    outcome = conversion_outcome(job=job("Failed"), pods=[last, first])
    assert outcome["state"] == "failed" and outcome["transient"] is False
    assert outcome["message"] == "source sha256 mismatch: expected aa…, got bb…"


def test_a_transient_failure_that_ran_out_of_retries_says_so():
    outcome = conversion_outcome(job=job("Failed"), pods=[pod("t", exit_code=3, message="connection reset")])
    assert outcome["transient"] is True
    assert outcome["message"].startswith("connection reset (transient; gave up after")


def test_a_failed_job_without_a_pod_message_uses_the_jobs_reason():
    outcome = conversion_outcome(job=job("Failed"), pods=[])
    assert outcome["message"] == "Job has reached the specified backoff limit"


def test_a_success_without_a_summary_is_a_failure_naming_the_job():
    outcome = conversion_outcome(job=job("Complete"), pods=[pod("t", exit_code=0, message="done")])
    assert outcome["state"] == "failed"
    assert "digits-convert-abc12345 succeeded but its pod's termination message holds no JSON summary" in \
        outcome["message"]


def test_a_job_without_a_final_condition_is_running():
    assert conversion_outcome(job=job(None), pods=[]) == {"state": "running", "summary": None,
                                                          "transient": False, "message": ""}


def test_a_running_job_says_why_its_pod_waits():
    unschedulable = {"metadata": {"creationTimestamp": "t"}, "status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/4 nodes are available: pod has unbound immediate PersistentVolumeClaims."}]}}
    assert conversion_outcome(job=job(None), pods=[unschedulable])["message"] == \
        "0/4 nodes are available: pod has unbound immediate PersistentVolumeClaims."
    pulling = {"metadata": {"creationTimestamp": "t"}, "status": {"containerStatuses": [{"name": "convert", "state": {
        "waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"runtime:1\""}}}]}}
    assert conversion_outcome(job=job(None), pods=[pulling])["message"] == \
        'ImagePullBackOff: Back-off pulling image "runtime:1"'


def test_last_transition_time_moves_only_when_the_status_changes():
    old = st.merge_conditions([], [st.condition(st.READY, False, reason="RollingOut", message="0 of 1",
                                                generation=1)], now="T1")
    same = st.merge_conditions(old, [st.condition(st.READY, False, reason="MinimumReplicasUnavailable",
                                                  message="0 of 1", generation=2)], now="T2")
    flipped = st.merge_conditions(same, [st.condition(st.READY, True, reason="MinimumReplicasAvailable",
                                                      message="1 of 1", generation=2)], now="T3")
    assert [c["lastTransitionTime"] for c in (*old, *same, *flipped)] == ["T1", "T1", "T3"]
    assert same[0]["observedGeneration"] == 2 and same[0]["reason"] == "MinimumReplicasUnavailable"


def conds(converted: tuple[bool, str] | None, ready: tuple[bool, str] | None = None) -> list:
    made = []
    if converted:
        made.append(st.condition(st.CONVERTED, converted[0], reason=converted[1], message="", generation=1))
    if ready:
        made.append(st.condition(st.READY, ready[0], reason=ready[1], message="", generation=1))
    return made


def test_the_phase_is_derived_from_the_conditions():
    assert st.phase([]) == "Pending"
    assert st.phase(conds((False, "Converting"), (False, "Converting"))) == "Converting"
    assert st.phase(conds((False, "ConversionFailed"), (False, "ConversionFailed"))) == "Failed"
    assert st.phase(conds((True, "ConversionSucceeded"), (False, "RollingOut"))) == "Deploying"
    assert st.phase(conds((True, "ConversionSucceeded"), (False, "NoDevicePool"))) == "Failed"
    assert st.phase(conds((True, "ConversionSucceeded"), (True, "MinimumReplicasAvailable"))) == "Ready"


def deployment(*, generation=2, observed=2, updated=2, available=2, old=0) -> dict:
    return {"metadata": {"generation": generation},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "availableReplicas": available,
                       "replicas": updated + old, "readyReplicas": available}}


def test_ready_needs_the_rollout_done_and_enough_pods_with_the_model_loaded():
    rolling = st.ready_from_deployment(deployment(observed=1), wanted=2, generation=5)
    assert (rolling["status"], rolling["reason"]) == ("False", "RollingOut")
    short = st.ready_from_deployment(deployment(available=1), wanted=2, generation=5)
    assert (short["status"], short["reason"], short["message"]) == (
        "False", "MinimumReplicasUnavailable", "1 of 2 replicas have the model loaded")
    ready = st.ready_from_deployment(deployment(), wanted=2, generation=5)
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("True", "MinimumReplicasAvailable", 5)


def test_ready_waits_for_the_previous_specs_pods_to_go_though_enough_pods_are_available():
    # a surge pod of the new spec is up, the old pod still counts as available and still serves
    surging = st.ready_from_deployment(deployment(updated=1, available=2, old=1), wanted=1, generation=5)
    assert (surging["status"], surging["reason"], surging["message"]) == (
        "False", "RollingOut", "1 replica(s) of the previous spec still serve")


def test_only_changed_conditions_are_transitions():
    old = conds((False, "Converting"), (False, "Converting"))
    new = conds((True, "ConversionSucceeded"), (False, "Converting"))
    assert [c["type"] for c in st.transitions(old, new)] == [st.CONVERTED]
    assert st.transitions(new, new) == []


def test_a_status_patch_holds_only_what_differs_and_removes_what_is_gone():
    ready = st.condition(st.READY, True, reason="MinimumReplicasAvailable", message="1 of 1", generation=1)
    old = {"phase": "Ready", "replicas": 1, "conversionJob": "digits-convert-abc12345",
           "conditions": st.merge_conditions([], [ready], now="2026-11-26T00:00:00Z")}
    same = {**old, "conditions": st.merge_conditions(old["conditions"], [ready], now="2026-11-27T00:00:00Z")}
    assert st.patch(old, same) == {}
    changed = {"phase": "Ready", "replicas": 2, "conditions": same["conditions"]}
    assert st.patch(old, changed) == {"replicas": 2, "conversionJob": None}


def kstatus_conditions(conditions: list) -> dict:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions
            if c["type"] in (st.RECONCILING, st.STALLED)}


def test_kstatus_conditions_tell_work_in_progress_from_a_failure_that_needs_a_person():
    converting = st.summarize(*conds((False, "Converting"), (False, "Converting")))
    assert kstatus_conditions(converting) == {st.RECONCILING: ("True", "Converting")}
    rolling = st.summarize(*conds((True, "ConversionSucceeded"), (False, "RollingOut")))
    assert kstatus_conditions(rolling) == {st.RECONCILING: ("True", "RollingOut")}
    failed = st.summarize(*conds((False, "ConversionFailed"), (False, "ConversionFailed")))
    assert kstatus_conditions(failed) == {st.STALLED: ("True", "ConversionFailed")}
    no_pool = st.summarize(*conds((True, "ConversionSucceeded"), (False, "NoDevicePool")))
    assert kstatus_conditions(no_pool) == {st.STALLED: ("True", "NoDevicePool")}
    ready = st.summarize(*conds((True, "ConversionSucceeded"), (True, "MinimumReplicasAvailable")))
    assert kstatus_conditions(ready) == {}
    assert st.phase(failed) == "Failed" and st.phase(ready) == "Ready"


def oom_killed(pod_spec: dict) -> dict:
    """A conversion pod of `pod_spec` whose converter the kernel killed at its memory limit."""
    return {"metadata": {"creationTimestamp": "t"}, "spec": pod_spec, "status": {"containerStatuses": [
        {"name": "convert", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                                     "message": "quantizing to INT8 on 300 calibration samples\n"}}}]}}


@pytest.mark.parametrize("conversion, limit", [({"precision": "FP32"}, "8Gi"),
                                               ({"precision": "FP32", "resources": {"limits": {"memory": "3Gi"}}},
                                                "3Gi")])
def test_an_oom_killed_conversion_says_so_with_its_limit_and_the_field_that_raises_it(make_model, pools, conversion,
                                                                                     limit):
    model = make_model(conversion=conversion)
    built = build_job(model=model, spec=model["spec"], key=artifact_key(model["spec"]), image="converter:1",
                      repository_claim="models", pool=conversion_pool(pools))
    outcome = conversion_outcome(job=job("Failed"), pods=[oom_killed(built["spec"]["template"]["spec"])])
    assert outcome == {"state": "failed", "summary": None, "transient": False,
                       "message": f"the converter ran out of memory (OOMKilled at its limit of {limit}); raise "
                                  "spec.conversion.resources.limits.memory"}


def test_an_oom_killed_conversion_without_a_limit_names_the_request_to_set():
    pod_spec = {"containers": [{"name": "convert", "resources": {"requests": {"cpu": "1"}}}]}
    outcome = conversion_outcome(job=job("Failed"), pods=[oom_killed(pod_spec)])
    assert outcome["message"] == ("the converter was killed for lack of memory (OOMKilled) with no memory limit of "
                                  "its own: its node ran out; set spec.conversion.resources.requests.memory to what "
                                  "the conversion needs")


def test_credentials_and_signatures_in_a_cause_never_reach_the_status():
    # the converter redacts its own lines; a log tail (FallbackToLogsOnError) may hold anything
    crashed = pod("t", exit_code=137, message="fetching https://reader:pa55word@models.example.com/m.onnx?"
                                              "X-Amz-Signature=s3cr3t: Killed")
    outcome = conversion_outcome(job=job("Failed"), pods=[crashed])
    assert outcome["message"] == "fetching https://***@models.example.com/m.onnx?***: Killed"


def test_a_model_directory_that_cannot_be_created_is_the_cause():
    refused = {"metadata": {"creationTimestamp": "t"}, "status": {
        "initContainerStatuses": [{"name": "model-directory", "state": {"terminated": {
            "exitCode": 1, "reason": "Error",
            "message": "mkdir: cannot create directory '/models/digits': Permission denied\n"}}}],
        "containerStatuses": [{"name": "convert", "state": {"waiting": {"reason": "PodInitializing"}}}]}}
    outcome = conversion_outcome(job=job("Failed"), pods=[refused])
    assert outcome == {"state": "failed", "summary": None, "transient": False,
                       "message": "cannot create the model's directory on the repository claim as uid 1000: "
                                  "mkdir: cannot create directory '/models/digits': Permission denied"}
