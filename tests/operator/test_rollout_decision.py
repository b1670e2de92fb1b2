"""The rollout's decision: every gate, the minimums, the pages of pods that restarted or run another step.

The /metrics pages are made by the runtime's own metrics (a RolloutMetrics registry counted the
way `modelkiln serve --rollout` counts), so `measure` reads what a serving pod really exposes.
"""

from __future__ import annotations

import prometheus_client as prom
import pytest

from modelkiln.operator import analysis, schema
from modelkiln.operator import rollout as ro
from modelkiln.runtime.serving.metrics import RolloutMetrics

ANALYSIS = schema.with_defaults({"spec": {"serving": {"rollout": {"strategy": "Shadow", "analysis": {
    "minDurationSeconds": 60, "minRequests": 100}}}}})["spec"]["serving"]["rollout"]["analysis"]
PLAN = {"model": "digits", "strategy": "Shadow", "stable": 1, "candidate": 2, "sample": 1.0}


def page(*, requests=200, errors=0, agreeing=200, cosine=1.0, stable_seconds=0.001, candidate_seconds=0.001,
         dropped=0, plan=PLAN) -> str:
    """The /metrics page of a pod that served `requests` unversioned requests in this rollout."""
    registry = prom.CollectorRegistry()
    metrics = RolloutMetrics(registry)
    metrics.info.labels(plan["model"], plan["strategy"], str(plan["stable"]), str(plan["candidate"]),
                        f"{plan.get('weight', 0):g}", f"{plan.get('sample', 1.0):g}").set(1)
    stable = metrics.children(plan["model"], str(plan["stable"]), "stable")
    candidate = metrics.children(plan["model"], str(plan["candidate"]), "candidate")
    comparison = metrics.comparison(plan["model"])
    for i in range(requests):
        stable.client_ok.inc()
        stable.inference.observe(stable_seconds)
        if i < errors:
            candidate.shadow_error.inc()
            continue
        candidate.shadow_ok.inc()
        candidate.inference.observe(candidate_seconds)
        comparison.compared.inc()
        comparison.agreements.inc(1.0 if i < agreeing else 0.0)
        comparison.cosine.observe(cosine)
    comparison.dropped.inc(dropped)
    return prom.generate_latest(registry).decode()


def decide(pages, elapsed=120, **kwargs):
    return analysis.decide(ANALYSIS, analysis.measure(pages, plan=PLAN), elapsed, **kwargs)


def test_a_candidate_that_answers_like_the_stable_one_is_promoted_with_the_numbers():
    decision = decide([page(), page()])
    assert decision.action == "Promote"
    assert decision.message.startswith("every gate passed: 400 requests, error rate 0")
    assert "top-1 agreement 1 and mean cosine 1 on 400 compared" in decision.message


def test_the_analysis_waits_for_its_minimum_duration_and_requests():
    assert decide([page()], elapsed=30).message.startswith("analysing (30 of 60 s)")
    waiting = decide([page(requests=40)])
    assert waiting.action == "Continue" and waiting.message.startswith("analysing (40 of 100 requests)")


def test_a_candidate_that_disagrees_is_rolled_back_naming_the_gate():
    decision = decide([page(agreeing=150)])
    assert decision.action == "Rollback"
    assert decision.message.startswith("top-1 agreement 0.75 < minAgreement 0.99")


def test_a_low_cosine_rolls_back():
    decision = decide([page(cosine=0.9)])
    assert decision.action == "Rollback" and "mean cosine 0.9 < minCosine 0.99" in decision.message


def test_server_errors_of_the_candidate_roll_back():
    decision = decide([page(errors=10)])
    assert decision.action == "Rollback" and decision.message.startswith("error rate 0.05 > maxErrorRate 0.01")


def test_a_slower_candidate_rolls_back_on_the_p99_ratio():
    decision = decide([page(candidate_seconds=0.004)])
    assert decision.action == "Rollback" and "p99 latency ratio" in decision.message
    assert analysis.measure([page(candidate_seconds=0.004)], plan=PLAN)["latencyRatio"] == pytest.approx(4, rel=0.2)


def test_a_candidate_whose_answers_all_failed_cannot_pass_on_no_comparison():
    decision = decide([page(errors=200)])
    assert decision.action == "Rollback"
    assert "no answer of the new version could be compared" in decision.message


def test_every_failed_gate_is_named():
    message = decide([page(errors=50, agreeing=20, cosine=0.5)]).message
    assert all(gate in message for gate in ("maxErrorRate", "minAgreement", "minCosine"))


def test_a_pod_that_restarted_lowers_the_sums_and_the_analysis_waits_again():
    # before: two pods with 60 requests each passed the minimum; one restarted and counts from zero
    assert decide([page(requests=60), page(requests=60)]).action == "Promote"
    assert decide([page(requests=60), page(requests=3)]).action == "Continue"


def test_pods_of_another_step_or_rollout_are_left_out():
    older = dict(PLAN, candidate=7)
    assert analysis.measure([page(), page(agreeing=0, plan=older)], plan=PLAN)["agreement"] == 1.0
    assert analysis.measure([page(plan=older)], plan=PLAN)["requests"] == 0


def test_a_canary_step_that_passes_goes_on_to_the_next():
    assert decide([page()], last_step=False).action == "NextStep"


def test_the_quantile_interpolates_within_its_bucket():
    assert analysis.quantile({0.1: 50, 0.2: 100, float("inf"): 100}, 0.5) == pytest.approx(0.1)
    assert analysis.quantile({0.1: 0, 0.2: 100, float("inf"): 100}, 0.99) == pytest.approx(0.199)
    assert analysis.quantile({}, 0.99) == 0.0


STABLE = {"key": "a", "version": 1}
NEW = {"key": "b", "version": 2}
NOW, LATER = "2026-12-06T20:00:00Z", "2026-12-06T20:05:00Z"


def test_a_new_artifact_starts_an_analysis_against_the_serving_one():
    rollout = ro.current(previous=None, spec_rollout={"strategy": "Shadow"}, stable=STABLE, new=NEW, now=NOW)
    assert (rollout["phase"], rollout["stable"], rollout["candidate"], rollout["startedAt"]) == (
        "Analysing", 1, 2, NOW)
    canary = ro.current(previous=None, spec_rollout={"strategy": "Canary", "steps": [50, 5]}, stable=STABLE,
                        new=NEW, now=NOW)
    assert canary["step"] == 5


@pytest.mark.parametrize("spec_rollout, stable, new", [
    ({"strategy": "Immediate"}, STABLE, NEW),  # today's behaviour
    ({}, STABLE, NEW),
    ({"strategy": "Shadow"}, None, NEW),  # the first artifact: nothing to compare with
    ({"strategy": "Shadow"}, STABLE, None),  # converting
    ({"strategy": "Shadow"}, STABLE, STABLE),  # nothing new
])
def test_no_rollout_where_there_is_nothing_to_compare_or_it_is_not_asked_for(spec_rollout, stable, new):
    assert ro.current(previous=None, spec_rollout=spec_rollout, stable=stable, new=new, now=NOW) is None


def test_a_spec_changed_mid_rollout_abandons_the_candidate_and_analyses_the_next_afresh():
    first = ro.current(previous=None, spec_rollout={"strategy": "Shadow"}, stable=STABLE, new=NEW, now=NOW)
    converting = ro.current(previous=first, spec_rollout={"strategy": "Shadow"}, stable=STABLE, new=None, now=LATER)
    assert converting is None
    assert ro.events(first, converting)[0][1] == "RolloutAbandoned"
    third = {"key": "c", "version": 3}
    again = ro.current(previous=first, spec_rollout={"strategy": "Shadow"}, stable=STABLE, new=third, now=LATER)
    assert (again["candidate"], again["startedAt"], again.get("measured")) == (3, LATER, None)


def test_a_rollback_stands_until_the_spec_changes():
    analysing = ro.current(previous=None, spec_rollout={"strategy": "Shadow"}, stable=STABLE, new=NEW, now=NOW)
    rolled_back = ro.judged(analysing, analysis.Decision("Rollback", "top-1 agreement 0.1 < minAgreement 0.99"),
                            measured={}, spec_rollout={}, now=LATER)
    assert rolled_back["phase"] == "RolledBack"
    assert ro.current(previous=rolled_back, spec_rollout={"strategy": "Shadow"}, stable=STABLE, new=NEW,
                      now=LATER) == rolled_back
    assert ro.served(rolled_back, stable=STABLE, artifact=NEW) == STABLE
    assert ro.condition(rolled_back, generation=2)["status"] == "False"
    # the spec goes back to what serves: nothing to roll out any more
    assert ro.current(previous=rolled_back, spec_rollout={"strategy": "Shadow"}, stable=STABLE, new=STABLE,
                      now=LATER) is None


def test_canary_steps_are_taken_in_order_then_promoted():
    spec_rollout = {"strategy": "Canary", "steps": [50, 10]}
    rollout = ro.current(previous=None, spec_rollout=spec_rollout, stable=STABLE, new=NEW, now=NOW)
    assert not ro.last_step(rollout, spec_rollout)
    stepped = ro.judged(rollout, analysis.Decision("NextStep", "ok"), measured={}, spec_rollout=spec_rollout,
                        now=LATER)
    assert (stepped["step"], stepped["startedAt"]) == (50, LATER)
    assert ro.last_step(stepped, spec_rollout)
    assert ro.events(rollout, stepped)[0][1] == "RolloutStep"
    assert ro.serve_plan(model="m", rollout=stepped, spec_rollout=spec_rollout)["weight"] == 50


def test_by_hand_a_rollout_is_promoted_or_aborted_and_a_wrong_value_is_refused():
    rollout = ro.current(previous=None, spec_rollout={"strategy": "Shadow"}, stable=STABLE, new=NEW, now=NOW)
    assert ro.refusal(rollout, "promote") is None
    assert ro.served(ro.by_hand(rollout, "promote"), stable=STABLE, artifact=NEW) == NEW
    assert ro.by_hand(rollout, "abort")["phase"] == "Aborted"
    assert ro.refusal(rollout, "yes") == "modelkiln.io/rollout=yes was ignored (and removed): expected promote or abort"
    assert ro.refusal(None, "abort") == ("modelkiln.io/rollout=abort was ignored (and removed): "
                                         "no rollout is in progress")
