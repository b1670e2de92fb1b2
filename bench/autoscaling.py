"""Autoscaling on the real node: a load step, scale down, cold starts from zero, the operator's writes.

Starts what the `autoscaling` e2e tests run on (a control plane whose CPU pool is this machine,
metrics-server, CoreDNS, KEDA, its HTTP add-on and Prometheus from e2e/scaling_stack.py, the chart
with this checkout's images; the API server keeps an audit log of the operator's requests), then:
- load step, for a model on CPU utilization (HPA) and one on requests in flight (KEDA): 1 client
  (tritonclient REST through the Service) for `--warm` s, then 8: the time until the Deployment has
  a second Ready pod, p50/p99 latency before, during (one pod) and after (two or more); then back to
  1 client at 5 requests/s until the model is at one pod again; failed requests in each phase (a
  phase that does not end in time is reported as such, and the bench goes on);
- cold start from zero (`--cold` rounds): a model with minReplicas 0 idles to zero pods, then one
  KServe v2 request through the interceptor (Host: the model's name); the time to its answer, split
  by what the API shows (polled every 0.1 s): scaling decision (request -> Deployment replicas 1),
  pod start (-> container running), model load (-> pod Ready), routing (-> the answer);
- the operator's writes (audit log) per model per minute while the models are steady.

Run from the repository root, as root, with the project's venv, holding the e2e lock:

    flock /tmp/modelkiln-e2e.lock .venv/bin/python bench/autoscaling.py [--cold 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "e2e"))
sys.path.insert(0, str(ROOT / "tests" / "chart"))
sys.path.insert(0, str(ROOT / "bench"))

import control_plane as cp  # noqa: E402
from machine import cpu_model  # noqa: E402
import modelkiln_setup as setup  # noqa: E402
import operator_scale  # noqa: E402
import real_node as rn  # noqa: E402
import scaling_stack  # noqa: E402
import serving_clients as clients  # noqa: E402
from chart_helpers import Helm  # noqa: E402

MODELS = setup.REAL_NODE_MODELS
SOURCE = f"pvc://{setup.UPLOADS}/digits/model.onnx"
OPERATOR_USER = f"system:serviceaccount:{setup.REAL_NODE_RELEASE_NAMESPACE}:{setup.REAL_NODE_OPERATOR}"
IDLE_SECONDS = 20
AUTOSCALING = {
    "inflight": {"minReplicas": 1, "maxReplicas": 3, "targetInflightRequests": 1, "scaleDownDelaySeconds": 20},
    "cpu": {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 50, "scaleDownDelaySeconds": 20},
}
# After the load: one client at 5 requests/s, so that scale-down is watched for failed requests
# without holding a CPU target up.
TRICKLE_PACE = 0.2


def replicas(kubectl: cp.Kubectl, name: str) -> tuple[int, int]:
    deployment = kubectl.get_json("deployment", name, namespace=MODELS)
    return deployment["spec"].get("replicas", 1), deployment.get("status", {}).get("readyReplicas", 0)


def wait_for(what: str, check, *, timeout: float, poll: float = 0.5) -> float:
    """Poll until `check()` holds; the time.monotonic() when it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def waited(what: str, check, *, since: float, timeout: float) -> float | str:
    """Seconds from `since` until `check()` holds, or what did not happen: a row of the report."""
    try:
        return round(wait_for(what, check, timeout=timeout) - since, 1)
    except TimeoutError as timeout_error:
        return str(timeout_error)


def apply_ready(kubectl: cp.Kubectl, name: str, **serving) -> str:
    kubectl.run("apply", "-n", MODELS, "-f", "-", input=setup.digits_example(name, SOURCE, **serving))
    kubectl.wait(f"inferencemodel/{name}", "condition=Ready", namespace=MODELS, timeout=300)
    address = f"{kubectl.get_json('service', name, namespace=MODELS)['spec']['clusterIP']}:8080"
    clients.routed(address, name)
    return address


def load_step(kubectl: cp.Kubectl, kind: str, *, warm: float, hold: float) -> dict:
    name = f"step-{kind}"
    extra = {"resources": {"requests": {"cpu": "200m", "memory": "256Mi"}}} if kind == "cpu" else {}
    address = apply_ready(kubectl, name, autoscaling=AUTOSCALING[kind], **extra)
    if kind == "cpu":
        # The model's load can take the first reading above the target: the step starts from one
        # pod whose CPU is below it (after the HPA's scale-down window if it scaled up meanwhile).
        wait_for("one pod below the CPU target", lambda: replicas(kubectl, name) == (1, 1)
                 and _cpu_utilization(kubectl, name) < AUTOSCALING[kind]["targetCPUUtilization"], timeout=300)
    # On CPU, clients pace themselves (50 requests/s each): one unpaced client alone keeps a
    # server on this 2-core machine above any CPU target. Requests in flight need no pacing.
    pace = 0.02 if kind == "cpu" else 0
    wait_for("one pod", lambda: replicas(kubectl, name) == (1, 1), timeout=300)
    one = clients.Load(address, name, clients=1, max_seconds=warm + 900, pace=pace).start()
    time.sleep(warm)
    before = replicas(kubectl, name)[0]
    step = time.monotonic()
    many = clients.Load(address, name, clients=7, max_seconds=900, pace=pace).start()  # 1 + 7 = 8 clients
    second = waited("a second Ready pod", lambda: replicas(kubectl, name)[1] >= 2, since=step, timeout=600)
    scaled = step + second if isinstance(second, float) else time.monotonic()
    time.sleep(hold)
    at_high = replicas(kubectl, name)[0]
    high = time.monotonic()
    many.stop()
    one.stop()
    trickle = clients.Load(address, name, clients=1, max_seconds=900, pace=TRICKLE_PACE).start()
    one_pod = waited("back to one pod", lambda: replicas(kubectl, name) == (1, 1), since=high, timeout=600)
    trickle.stop()
    outcomes = one.outcomes + many.outcomes + trickle.outcomes
    failed = lambda start, end: sum(1 for o in outcomes if o.error and start <= o.started < end)  # noqa: E731
    result = {"second pod Ready after (s)": second, "scale down after load (s)": one_pod,
              "before": clients.percentiles(outcomes, 0, step),
              "during (1 pod)": clients.percentiles(outcomes, step, scaled),
              "after (2+ pods)": clients.percentiles(outcomes, scaled + 5, high),
              "failed up": failed(0, high), "failed down": failed(high, float("inf")),
              "requests down": sum(1 for o in outcomes if o.started >= high),
              "replicas before the step": before, "replicas at the end of the load": at_high}
    kubectl.run("delete", "inferencemodel", name, "-n", MODELS, "--wait=true")
    return result


def _cpu_utilization(kubectl: cp.Kubectl, name: str) -> float:
    """The HPA's last CPU reading, in percent of the pods' request (inf before its first)."""
    metrics = kubectl.get_json("hpa", name, namespace=MODELS).get("status", {}).get("currentMetrics") or []
    readings = [m["resource"]["current"].get("averageUtilization") for m in metrics if m.get("type") == "Resource"]
    return float(readings[0]) if readings and readings[0] is not None else float("inf")


def cold_starts(kubectl: cp.Kubectl, rounds: int) -> list[dict]:
    name = "cold"
    kubectl.run("apply", "-n", MODELS, "-f", "-", input=setup.digits_example(name, SOURCE, autoscaling={
        "minReplicas": 0, "maxReplicas": 1, "targetInflightRequests": 4, "idleSeconds": IDLE_SECONDS}))
    kubectl.wait(f"inferencemodel/{name}", "condition=Ready", namespace=MODELS, timeout=300)
    proxy = kubectl.get_json("service", "keda-add-ons-http-interceptor-proxy", namespace=scaling_stack.KEDA_NAMESPACE)
    interceptor, host = f"{proxy['spec']['clusterIP']}:8080", f"{name}.{MODELS}.svc"
    results = []
    for _ in range(rounds):
        wait_for("zero pods", lambda: replicas(kubectl, name)[0] == 0 and not _pods(kubectl, name), timeout=300)
        time.sleep(2)
        answer: dict = {}

        def call() -> None:
            try:
                clients.rest_infer_with_host(interceptor, host, name, timeout=300)
            except Exception as exc:  # noqa: BLE001 - counted as a failed cold request
                answer["error"] = repr(exc)
            answer["at"] = time.monotonic()

        sent = time.monotonic()
        thread = threading.Thread(target=call)
        thread.start()
        seen = {}
        while thread.is_alive() or len(seen) < 3:
            pods = _pods(kubectl, name)
            now = time.monotonic()
            if "decision" not in seen and replicas(kubectl, name)[0] >= 1:
                seen["decision"] = now
            if pods and "started" not in seen and pods[0]["status"].get("containerStatuses", [{}])[0] \
                    .get("state", {}).get("running"):
                seen["started"] = now
            if pods and "ready" not in seen and any(c["type"] == "Ready" and c["status"] == "True"
                                                    for c in pods[0]["status"].get("conditions", [])):
                seen["ready"] = now
            if not thread.is_alive() and now - answer["at"] > 5:
                break
            time.sleep(0.1)
        thread.join()
        marks = [sent] + [seen.get(k, answer["at"]) for k in ("decision", "started", "ready")] + [answer["at"]]
        parts = ("scaling decision", "pod start", "model load", "routing")
        row = {part: round(max(b - a, 0.0), 2) for part, a, b in zip(parts, marks, marks[1:])}
        row["first request -> answer"] = round(answer["at"] - sent, 2)
        row["failed"] = 1 if "error" in answer else 0
        results.append(row)
    return results


def _pods(kubectl: cp.Kubectl, name: str) -> list[dict]:
    return [p for p in kubectl.items("pods", namespace=MODELS, selector=f"modelkiln.io/model={name},"
                                     "app.kubernetes.io/component=serving")
            if not p["metadata"].get("deletionTimestamp")]


def steady_writes(kubectl: cp.Kubectl, audit_log: Path, *, seconds: float) -> dict:
    names = [im["metadata"]["name"] for im in kubectl.items("inferencemodels", namespace=MODELS)]
    since = operator_scale.utc_now()
    time.sleep(seconds)
    counts = operator_scale.audit_counts(audit_log, since=since, until=operator_scale.utc_now(), user=OPERATOR_USER)
    # kopf's peering keepalive is the operator's, not any model's: counted apart
    peering = sum(n for (kind, resource, _), n in counts.items() if kind == "write" and "peering" in resource)
    writes = operator_scale.total(counts, "write") - peering
    return {"models": len(names), "seconds": seconds, "model writes": writes,
            "writes per model per minute": round(writes / max(len(names), 1) / (seconds / 60), 3),
            "peering keepalives": peering,
            "what": {f"{verb} {resource}": n for (kind, resource, verb), n in counts.items() if kind == "write"}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, default=3, help="cold starts from zero (0: the load steps alone)")
    parser.add_argument("--warm", type=float, default=20, help="seconds of 1 client before the step")
    parser.add_argument("--hold", type=float, default=30, help="seconds of 8 clients after the second pod")
    parser.add_argument("--steady", type=float, default=120, help="seconds watching the operator's writes")
    args = parser.parse_args()
    reason = rn.cannot_run_containers()
    go = cp.find_go()
    if reason or go is None:
        print(f"cannot run a real node here: {reason or 'no Go toolchain'}", file=sys.stderr)
        return 2
    bin_dir = cp.build_binaries(go=go)
    components = scaling_stack.build()
    rn.install_packages()
    rn.build_images()
    work = Path(tempfile.mkdtemp(prefix="bench-autoscaling-"))
    policy, audit_log = work / "audit-policy.yaml", work / "audit.log"
    policy.write_text(yaml.safe_dump(operator_scale.audit_policy(user=OPERATOR_USER)))
    plane = cp.start_control_plane(bin_dir=bin_dir, work_dir=work / "control-plane", pools=("gpu", "npu"),
                                   apiserver_args=(*scaling_stack.aggregation_args(work / "front-proxy"),
                                                   f"--audit-policy-file={policy}",
                                                   f"--audit-log-path={audit_log}", "--audit-log-format=json"))
    try:
        node = rn.start_real_node(plane, bin_dir=bin_dir, work_dir=work / "node", cache=rn.cache_dir(),
                                  cluster_dns=scaling_stack.DNS_IP)
        try:
            stack = scaling_stack.install(plane.kubectl, node, components, work / "scaling")
            try:
                setup.install_on_real_node(plane.kubectl, Helm(bin_dir / "helm", work), work, values={
                    "autoscaling": {"prometheus": {"url": scaling_stack.PROMETHEUS_URL},
                                    "keda": {"pollingSeconds": 2}}})
                report(plane.kubectl, audit_log, args)
            finally:
                stack.stop()
        finally:
            node.stop()
    finally:
        plane.stop()
    return 0


def report(kubectl: cp.Kubectl, audit_log: Path, args) -> None:
    cpu = cpu_model()
    print(f"{datetime.date.today()}, {cpu}, {os.cpu_count()} cores", flush=True)
    for kind in AUTOSCALING:
        print(f"load step 1 -> 8 clients, {kind}: {load_step(kubectl, kind, warm=args.warm, hold=args.hold)}",
              flush=True)
    if not args.cold:
        return  # the load steps alone
    rounds = cold_starts(kubectl, args.cold)
    print("| cold start from zero (s) | " + " | ".join(f"round {i + 1}" for i in range(len(rounds))) + " |")
    print("| --- |" + " --- |" * len(rounds))
    for part in rounds[0]:
        print(f"| {part} | " + " | ".join(str(r[part]) for r in rounds) + " |")
    apply_ready(kubectl, "steady", autoscaling=AUTOSCALING["inflight"])
    # Steady: the cold model back at zero and Idle, the new one Ready, and a moment to settle.
    wait_for("the cold model Idle", lambda: kubectl.get_json("inferencemodel", "cold", namespace=MODELS)
             .get("status", {}).get("phase") == "Idle", timeout=300)
    time.sleep(30)
    print(f"operator while steady: {steady_writes(kubectl, audit_log, seconds=args.steady)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
