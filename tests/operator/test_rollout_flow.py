"""A rollout through the reconcile: both versions served, the decision, what status and Events say.

The API server is test_reconcile_flow's RecordingApi; the pods' /metrics pages are made by the
runtime's own metrics (test_rollout_decision.page).
"""

from __future__ import annotations

import json

import pytest
from test_reconcile_flow import CONFIG, RecordingApi, job_name, ready_model, summary
from test_rollout_decision import page

from modelkiln.operator import flows

T0, T1, T2 = "2026-12-06T20:00:00Z", "2026-12-06T20:00:30Z", "2026-12-06T20:02:00Z"
ROLLOUT = {"strategy": "Shadow", "analysis": {"minDurationSeconds": 60, "minRequests": 100}}


@pytest.fixture
def api(pools) -> RecordingApi:
    return RecordingApi(pools)


def reconcile(model, api, now, pages=()):
    result = flows.reconcile(model=model, api=api, config=CONFIG, now=now, scrape=lambda pods, tls: list(pages))
    model["status"] = result.status
    return result


def conditions(model) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in model["status"]["conditions"]}


def args(api) -> list[str]:
    return api.objects["deployments", "vision", "digits"]["spec"]["template"]["spec"]["containers"][0]["args"]


def analysing_model(make_model, api, rollout=ROLLOUT) -> dict:
    """Version 1 serving, then a new source converted to version 2: the rollout has started."""
    model = ready_model(make_model, api, serving={"rollout": rollout})
    model["spec"]["source"]["uri"] = "https://models.example.com/digits-v2.onnx"
    model["metadata"]["generation"] = 2
    reconcile(model, api, T0)
    api.finish_job(job_name(model), summary=summary(model, 2))
    result = reconcile(model, api, T0)
    assert ("Normal", "Analysing", "analysis of version 2 against version 1 started") in result.events
    api.roll_out("digits")
    return model


def test_during_a_shadow_rollout_both_versions_serve_and_the_old_one_answers(make_model, api):
    model = analysing_model(make_model, api)
    assert args(api)[args(api).index("--version-policy") + 1] == '{"specific":[1,2]}'
    assert json.loads(args(api)[args(api).index("--rollout") + 1]) == {
        "model": "digits", "strategy": "Shadow", "stable": 1, "candidate": 2, "sample": 1.0}
    assert model["status"]["artifact"]["version"] == 1
    reconcile(model, api, T1, pages=[page(requests=40)])
    assert conditions(model)["Ready"] == ("False", "RolloutAnalysing")
    assert conditions(model)["Reconciling"][0] == "True"
    assert conditions(model)["Rollout"] == ("Unknown", "Analysing")
    assert model["status"]["rollout"]["measured"]["requests"] == 40
    assert model["status"]["phase"] == "Deploying"


def test_a_candidate_that_passes_every_gate_is_promoted_and_served_alone(make_model, api):
    model = analysing_model(make_model, api)
    result = reconcile(model, api, T2, pages=[page(), page()])
    assert [(kind, reason) for kind, reason, _ in result.events] == [("Normal", "Promoted")]
    assert "400 requests" in result.events[0][2]
    assert model["status"]["artifact"]["version"] == 2
    assert "--rollout" not in args(api)
    assert args(api)[args(api).index("--version-policy") + 1] == '{"specific":[2]}'
    api.roll_out("digits")
    reconcile(model, api, T2)
    assert conditions(model)["Ready"] == ("True", "MinimumReplicasAvailable")
    assert conditions(model)["Rollout"] == ("True", "Promoted")
    assert model["status"]["phase"] == "Ready"
    api.writes.clear()
    assert reconcile(model, api, T2).events == [] and api.writes == []  # a replay changes nothing


def test_a_candidate_that_disagrees_is_rolled_back_and_the_model_is_stalled_until_the_spec_changes(make_model, api):
    model = analysing_model(make_model, api)
    result = reconcile(model, api, T2, pages=[page(agreeing=10)])
    (kind, reason, message), = result.events
    assert (kind, reason) == ("Warning", "RolledBack")
    assert message.startswith("rolled back to version 1: top-1 agreement 0.05 < minAgreement 0.99")
    assert model["status"]["artifact"]["version"] == 1
    assert '{"specific":[1]}' in args(api) and "--rollout" not in args(api)
    api.roll_out("digits")
    reconcile(model, api, T2)
    assert conditions(model)["Stalled"] == ("True", "RolledBack")
    assert conditions(model)["Ready"] == ("False", "RolledBack")
    assert model["status"]["phase"] == "Failed"
    api.writes.clear()
    reconcile(model, api, T2)
    assert api.writes == []  # the conversion Job is not started again: the candidate is known
    model["spec"]["source"]["uri"] = "https://models.example.com/digits-v3.onnx"
    model["metadata"]["generation"] = 3
    reconcile(model, api, T2)
    assert "Stalled" not in conditions(model) and conditions(model)["Converted"] == ("False", "Converting")


def test_a_canary_takes_its_steps_then_promotes(make_model, api):
    model = analysing_model(make_model, api, rollout={**ROLLOUT, "strategy": "Canary", "steps": [10, 50]})
    assert json.loads(args(api)[args(api).index("--rollout") + 1])["weight"] == 10
    canary = {"model": "digits", "strategy": "Canary", "stable": 1, "candidate": 2}
    result = reconcile(model, api, T2, pages=[page(plan={**canary, "weight": 10})])
    assert [reason for _, reason, _ in result.events] == ["RolloutStep"]
    assert json.loads(args(api)[args(api).index("--rollout") + 1])["weight"] == 50
    # pods of the 10% step are left out: the 50% step starts from nothing
    reconcile(model, api, "2026-12-06T20:05:00Z", pages=[page(plan={**canary, "weight": 10})])
    assert model["status"]["rollout"]["phase"] == "Analysing"
    reconcile(model, api, "2026-12-06T20:05:00Z", pages=[page(plan={**canary, "weight": 50})])
    assert model["status"]["rollout"]["phase"] == "Promoted"


def test_abort_by_hand_serves_the_old_version_and_the_annotation_is_to_be_removed(make_model, api):
    model = analysing_model(make_model, api)
    model["metadata"]["annotations"] = {"modelkiln.io/rollout": "abort"}
    result = reconcile(model, api, T1)
    assert result.clear_annotation
    assert [(kind, reason) for kind, reason, _ in result.events] == [("Warning", "Aborted")]
    assert model["status"]["rollout"]["phase"] == "Aborted" and '{"specific":[1]}' in args(api)
    # promote by hand after all: the candidate serves
    model["metadata"]["annotations"] = {"modelkiln.io/rollout": "promote"}
    reconcile(model, api, T1)
    assert model["status"]["artifact"]["version"] == 2 and '{"specific":[2]}' in args(api)


def test_an_annotation_without_a_rollout_is_refused_with_a_warning(make_model, api):
    model = analysing_model(make_model, api)
    reconcile(model, api, T2, pages=[page(), page()])  # promoted
    model["metadata"]["annotations"] = {"modelkiln.io/rollout": "abort"}
    result = reconcile(model, api, T2)
    assert result.clear_annotation
    assert result.events == [("Warning", "RolloutAnnotationIgnored",
                              "modelkiln.io/rollout=abort was ignored (and removed): no rollout is in progress")]
    assert model["status"]["artifact"]["version"] == 2


def test_with_strategy_immediate_a_new_artifact_replaces_the_old_at_once(make_model, api):
    model = analysing_model(make_model, api)
    model["spec"]["serving"]["rollout"] = {"strategy": "Immediate"}
    result = reconcile(model, api, T1)
    assert "rollout" not in model["status"] and model["status"]["artifact"]["version"] == 2
    assert ("Normal", "RolloutAbandoned",
            "version 2 abandoned before its analysis ended: the spec changed") in result.events
