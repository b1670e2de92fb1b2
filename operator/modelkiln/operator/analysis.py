"""A rollout's analysis: what the serving pods measured, and whether the new version passes.

Pure functions. `measure` sums the `modelkiln_rollout_*` metrics of the serving pods (their
/metrics pages) that run the current rollout; `decide` applies spec.serving.rollout.analysis to
those numbers. A pod that restarts starts its counters from zero: the sums go down and the analysis
waits for the minimum again, it never decides on numbers it no longer sees. Pods of an earlier step
or spec (a rolling update) announce another rollout in `modelkiln_rollout_info` and are left out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, TypedDict

from prometheus_client.parser import text_string_to_metric_families

DEFAULT_SAMPLE = 1.0  # spec.serving.rollout.shadowSample's documented default


class Measured(TypedDict):
    requests: int  # the candidate's answers (to clients and shadow copies), failed ones included
    errorRate: float
    latencyRatio: float  # candidate p99 / stable p99 inference time; 0 while one is unknown
    compared: int
    agreement: float
    cosine: float
    dropped: int


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Literal["Continue", "NextStep", "Promote", "Rollback"]
    message: str


def _info_matches(labels: dict, plan: dict) -> bool:
    return (labels.get("model") == plan["model"] and labels.get("strategy") == plan["strategy"]
            and labels.get("stable") == str(plan["stable"]) and labels.get("candidate") == str(plan["candidate"])
            and float(labels.get("weight", 0)) == float(plan.get("weight", 0))
            and float(labels.get("sample", 1)) == float(plan.get("sample", DEFAULT_SAMPLE)))


def measure(pages: list[str], *, plan: dict) -> Measured:
    """The numbers of the rollout `plan` (serve_plan's) summed over the pods whose /metrics are `pages`."""
    sums: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {"stable": {}, "candidate": {}}
    model = plan["model"]

    def add(key: str, amount: float) -> None:
        sums[key] = sums.get(key, 0.0) + amount

    for page in pages:
        samples = [s for family in text_string_to_metric_families(page) for s in family.samples]
        if not any(s.name == "modelkiln_rollout_info" and s.value == 1 and _info_matches(s.labels, plan)
                   for s in samples):
            continue
        for s in samples:
            labels = s.labels
            if labels.get("model") != model:
                continue
            if s.name == "modelkiln_rollout_requests_total" and labels["role"] == "candidate":
                if labels["outcome"] in ("ok", "error"):
                    add("requests", s.value)
                if labels["outcome"] == "error":
                    add("errors", s.value)
            elif s.name == "modelkiln_rollout_inference_duration_seconds_bucket":
                le = float(labels["le"])
                role = buckets[labels["role"]]
                role[le] = role.get(le, 0.0) + s.value
            elif s.name in ("modelkiln_rollout_compared_total", "modelkiln_rollout_agreements_total",
                            "modelkiln_rollout_cosine_sum", "modelkiln_rollout_shadow_dropped_total"):
                add(s.name, s.value)
    requests = int(sums.get("requests", 0))
    compared = int(sums.get("modelkiln_rollout_compared_total", 0))
    stable_p99, candidate_p99 = quantile(buckets["stable"], 0.99), quantile(buckets["candidate"], 0.99)
    return {"requests": requests,
            "errorRate": sums.get("errors", 0) / requests if requests else 0.0,
            "latencyRatio": candidate_p99 / stable_p99 if stable_p99 and candidate_p99 else 0.0,
            "compared": compared,
            "agreement": sums.get("modelkiln_rollout_agreements_total", 0) / compared if compared else 0.0,
            "cosine": sums.get("modelkiln_rollout_cosine_sum", 0) / compared if compared else 0.0,
            "dropped": int(sums.get("modelkiln_rollout_shadow_dropped_total", 0))}


def quantile(cumulative: dict[float, float], q: float) -> float:
    """The q-quantile of a Prometheus histogram (cumulative counts by upper bound), interpolated
    within its bucket as PromQL's histogram_quantile does; 0 when it is empty."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] == 0:
        return 0.0
    rank, lower, below = q * cumulative[bounds[-1]], 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # past the last finite bucket: its bound is all we know
            return lower + (bound - lower) * (rank - below) / (count - below) if count > below else bound
        lower, below = bound, count
    return lower


def describe(measured: Measured) -> str:
    return (f"{measured['requests']} requests, error rate {measured['errorRate']:.4g}, "
            f"p99 latency ratio {measured['latencyRatio']:.3g}, top-1 agreement {measured['agreement']:.4g} "
            f"and mean cosine {measured['cosine']:.4g} on {measured['compared']} compared, "
            f"{measured['dropped']} shadow copies dropped")


def decide(analysis: dict, measured: Measured, elapsed: float, *, last_step: bool = True) -> Decision:
    """Continue until the minimum duration and requests are reached, then promote (or take the next
    Canary step) when every gate passes, or roll back naming each gate that failed."""
    numbers = describe(measured)
    short = []
    if elapsed < analysis["minDurationSeconds"]:
        short.append(f"{int(elapsed)} of {analysis['minDurationSeconds']} s")
    if measured["requests"] < analysis["minRequests"]:
        short.append(f"{measured['requests']} of {analysis['minRequests']} requests")
    if short:
        return Decision("Continue", f"analysing ({', '.join(short)}): {numbers}")
    failed = []
    if measured["errorRate"] > analysis["maxErrorRate"]:
        failed.append(f"error rate {measured['errorRate']:.4g} > maxErrorRate {analysis['maxErrorRate']}")
    if measured["latencyRatio"] > analysis["maxLatencyRatio"]:
        failed.append(f"p99 latency ratio {measured['latencyRatio']:.3g} > maxLatencyRatio "
                      f"{analysis['maxLatencyRatio']}")
    if measured["compared"] == 0:
        failed.append("no answer of the new version could be compared with the serving one")
    else:
        if measured["agreement"] < analysis["minAgreement"]:
            failed.append(f"top-1 agreement {measured['agreement']:.4g} < minAgreement {analysis['minAgreement']}")
        if measured["cosine"] < analysis["minCosine"]:
            failed.append(f"mean cosine {measured['cosine']:.4g} < minCosine {analysis['minCosine']}")
    if failed:
        return Decision("Rollback", f"{'; '.join(failed)} ({numbers})")
    return Decision("Promote" if last_step else "NextStep", f"every gate passed: {numbers}")
