"""A rollout's state (status.rollout) from one reconcile to the next: pure functions.

A Shadow or Canary rollout starts when the spec converted to an artifact other than the one
serving (status.artifact, the stable one). While it is Analysing the pods serve both versions;
`analysis.decide` moves it on: Promoted (the candidate becomes status.artifact), RolledBack (the
stable one stays), or the next Canary step. A person may promote or abort with the annotation
`modelkiln.io/rollout`. A rollback or abort stands while the spec still asks for that candidate
(kstatus Stalled); a spec changed mid-rollout abandons the candidate and, once converted, the
next one is analysed afresh.
"""

from __future__ import annotations

from modelkiln.operator import status as st
from modelkiln.operator.analysis import DEFAULT_SAMPLE, Decision, Measured

SHADOW, CANARY, IMMEDIATE = "Shadow", "Canary", "Immediate"
ANALYSING, PROMOTED, ROLLED_BACK, ABORTED = "Analysing", "Promoted", "RolledBack", "Aborted"
FINISHED_BADLY = (ROLLED_BACK, ABORTED)
DEFAULT_STEPS = (10, 50)
# kubectl annotate im NAME modelkiln.io/rollout=promote (or =abort)
ANNOTATION = "modelkiln.io/rollout"
PROMOTE, ABORT = "promote", "abort"
ROLLOUT = "Rollout"  # the condition
# Ready's reasons while a rollout is not promoted (status.FAILURE_REASONS has the last two)
READY_REASONS = {ANALYSING: "RolloutAnalysing", ROLLED_BACK: "RolledBack", ABORTED: "RolloutAborted"}


def steps(spec_rollout: dict) -> list[int]:
    """The Canary steps in the order they are taken."""
    return sorted(set(spec_rollout.get("steps") or DEFAULT_STEPS))


def current(*, previous: dict | None, spec_rollout: dict, stable: dict | None, new: dict | None,
            now: str) -> dict | None:
    """The rollout this reconcile works on, before measuring; None: there is none, and `new` (when
    there is one) serves at once, as with strategy Immediate."""
    strategy = spec_rollout.get("strategy", IMMEDIATE)
    if new is None or stable is None:
        return None  # converting (an earlier candidate is abandoned), failed, or first deployment
    if previous and previous["candidateArtifact"]["key"] == new["key"]:
        if previous["phase"] in (PROMOTED, *FINISHED_BADLY):
            return previous  # stands until the spec asks for something else
        if previous["strategy"] == strategy:
            return previous
    if new["key"] == stable["key"] or new["version"] == stable["version"] or strategy == IMMEDIATE:
        return None
    return {"strategy": strategy, "phase": ANALYSING, "stable": stable["version"], "candidate": new["version"],
            "candidateArtifact": new, "startedAt": now,
            **({"step": steps(spec_rollout)[0]} if strategy == CANARY else {}),
            "message": f"analysis of version {new['version']} against version {stable['version']} started"}


def serve_plan(*, model: str, rollout: dict, spec_rollout: dict) -> dict:
    """`modelkiln serve --rollout` while `rollout` is Analysing (runtime/.../serving/rollout.py)."""
    plan = {"model": model, "strategy": rollout["strategy"], "stable": rollout["stable"],
            "candidate": rollout["candidate"]}
    if rollout["strategy"] == CANARY:
        plan["weight"] = rollout["step"]
    else:
        plan["sample"] = spec_rollout.get("shadowSample", DEFAULT_SAMPLE)
    return plan


def judged(rollout: dict, decision: Decision, *, measured: Measured, spec_rollout: dict, now: str) -> dict:
    """`rollout` after `decision`."""
    after = {**rollout, "measured": measured, "message": decision.message}
    if decision.action == "Promote":
        return {**after, "phase": PROMOTED, "message": f"promoted version {rollout['candidate']}: {decision.message}"}
    if decision.action == "Rollback":
        return {**after, "phase": ROLLED_BACK,
                "message": f"rolled back to version {rollout['stable']}: {decision.message}"}
    if decision.action == "NextStep":
        step = next(s for s in steps(spec_rollout) if s > rollout["step"])
        return {**after, "step": step, "startedAt": now,
                "message": f"step {rollout['step']}% passed, now {step}%: {decision.message}"}
    return after


def by_hand(rollout: dict, action: str) -> dict:
    """`rollout` promoted (also after a rollback) or aborted by the annotation."""
    if action == PROMOTE:
        return {**rollout, "phase": PROMOTED, "message": f"promoted version {rollout['candidate']} by hand "
                                                          f"({ANNOTATION}={PROMOTE})"}
    return {**rollout, "phase": ABORTED, "message": f"aborted by hand ({ANNOTATION}={ABORT}): version "
                                                     f"{rollout['stable']} serves, version {rollout['candidate']} "
                                                     f"is unloaded"}


def refusal(rollout: dict | None, action: str) -> str | None:
    """Why the annotation's `action` cannot be done now (None: it can)."""
    where = f"{ANNOTATION}={action} was ignored (and removed)"
    if action not in (PROMOTE, ABORT):
        return f"{where}: expected {PROMOTE} or {ABORT}"
    if rollout is None or rollout["phase"] == PROMOTED:
        return f"{where}: no rollout is in progress"
    if rollout["phase"] in FINISHED_BADLY and action == ABORT:
        return f"{where}: the rollout of version {rollout['candidate']} has ended already ({rollout['phase']})"
    return None


def events(previous: dict | None, rollout: dict | None) -> list[tuple[str, str, str]]:
    """Events the Rollout condition's transitions do not tell: a Canary step, an abandoned candidate."""
    if not previous or previous["phase"] != ANALYSING:
        return []
    if rollout is None or rollout["candidateArtifact"]["key"] != previous["candidateArtifact"]["key"]:
        return [("Normal", "RolloutAbandoned", f"version {previous['candidate']} abandoned before its analysis "
                                               f"ended: the spec changed")]
    if rollout["phase"] == ANALYSING and rollout.get("step") != previous.get("step"):
        return [("Normal", "RolloutStep", rollout["message"])]
    return []


def last_step(rollout: dict, spec_rollout: dict) -> bool:
    return rollout["strategy"] != CANARY or rollout["step"] >= steps(spec_rollout)[-1]


def served(rollout: dict | None, *, stable: dict | None, artifact: dict | None) -> dict | None:
    """status.artifact, what answers the clients that name no version: `artifact` (the conversion's)
    without a rollout, the candidate once promoted, else the stable one."""
    if rollout is None:
        return artifact
    return rollout["candidateArtifact"] if rollout["phase"] == PROMOTED else stable


def ready(rollout: dict, deployment_ready: st.Condition, *, generation: int) -> st.Condition:
    """Ready while a rollout is not promoted: False, as for any spec not in effect yet, naming the
    version that serves; a rollback or abort needs a person (kstatus Stalled, Argo CD Degraded)."""
    if rollout["phase"] == PROMOTED or deployment_ready["status"] != "True":
        return deployment_ready
    reason = READY_REASONS[rollout["phase"]]
    return st.condition(st.READY, False, reason=reason, generation=generation,
                        message=f"version {rollout['stable']} serves; {rollout['message']}")


def condition(rollout: dict, *, generation: int) -> st.Condition:
    """The Rollout condition: Unknown while Analysing, True once Promoted, False after a rollback or abort."""
    ok = {ANALYSING: None, PROMOTED: True}.get(rollout["phase"], False)
    return {**st.condition(ROLLOUT, bool(ok), reason=rollout["phase"], message=rollout["message"],
                           generation=generation), **({"status": "Unknown"} if ok is None else {})}
