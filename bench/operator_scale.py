"""How the operator copes with many InferenceModels at once, on the real control plane.

Starts the e2e control plane (e2e/control_plane.py: etcd, kube-apiserver with an audit log,
controller-manager, scheduler, kwok nodes), runs `modelkiln operator` from this checkout with
its own ServiceAccount, applies N InferenceModels in one `kubectl apply`, and measures:
- the time until every model is Ready (conversion Jobs and serving pods are kwok's, so this is
  the operator's and the control plane's share of the work, not conversion or model loading);
- reconciles per second (the operator's modelkiln_operator_reconciles_total);
- API requests per model, from the API server's audit log of the operator's user, split into
  writes (create/patch/update/delete) and reads, until all are Ready and then in a steady-state
  window in which nothing changes;
- the operator's peak RSS (VmHWM);
- where the time goes: the control plane's writes by program (controller-manager, scheduler,
  kwok) second by second, and the CPU seconds of each process until all are Ready (with
  --profile, a py-spy record of the operator over that time);
- a restarted operator: how long until it has reconciled every model once, and its requests in
  a window as long as the steady one: its resume handlers and resyncs look at every model again,
  and should change nothing.
Targets (issue 21): 1,000 models all Ready, RSS below 300 MB, 0 writes per model per minute while
steady and after a restart, and the times bounded by the control plane (its clients' QPS
limits, its CPU), not by the operator's own work.

Run from the repository root with the project's venv (builds the control plane when missing):

    .venv/bin/python bench/operator_scale.py [--models 100] [--resync 10] [--steady 60] \
        [--restarts 1] [--workers N] [--controller-qps 20] [--profile stacks.txt]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "e2e"))

import control_plane as cp  # noqa: E402
from machine import cpu_model  # noqa: E402
from modelkiln_setup import (OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, create_model_namespace,  # noqa: E402
                             inference_model, install_modelkiln, operator_process)

OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
CONTROL_PLANE_USER = "admin"  # the controllers, the scheduler and kwok share the admin kubeconfig
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
NAMESPACE = "bench"
# Room for every conversion and serving pod at once, so scheduling never waits on capacity.
BIG_CPU_NODE = {"cpu": "400", "memory": "2Ti", "pods": "1000"}


def audit_policy(user: str = OPERATOR_USER) -> dict:
    """Log the operator's requests and the control plane's writes (metadata only), nothing else."""
    return {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [{"level": "Metadata", "users": [user]},
                      {"level": "Metadata", "users": [CONTROL_PLANE_USER], "verbs": sorted(WRITE_VERBS)},
                      {"level": "None"}]}


def audit_events(log: Path, *, since: str = "", until: str = "~", user: str = OPERATOR_USER) -> list[dict]:
    """The requests by `user` logged in [since, until)."""
    events = (json.loads(line) for line in log.read_text().splitlines())
    return [e for e in events if e["user"]["username"] == user and since <= e["requestReceivedTimestamp"] < until]


def audit_counts(log: Path, *, since: str = "", until: str = "~", user: str = OPERATOR_USER) -> collections.Counter:
    """(verb class, resource, verb) -> requests by `user` logged in [since, until)."""
    counts: collections.Counter = collections.Counter()
    for event in audit_events(log, since=since, until=until, user=user):
        ref = event.get("objectRef", {})
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        kind = "write" if event["verb"] in WRITE_VERBS else "read"
        counts[(kind, resource, event["verb"])] += 1
    return counts


def seconds_since(start: str, stamp: str) -> float:
    parse = lambda text: datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    return (parse(stamp) - parse(start)).total_seconds()


def write_rates(log: Path, *, since: str, until: str) -> dict[str, dict]:
    """The control plane's writes in [since, until) by program (its user agent): how many, from the
    first to the last second, and the busiest second. A program held at its client's QPS limit
    writes at that rate, second after second."""
    by_client: dict[str, list[float]] = collections.defaultdict(list)
    for event in audit_events(log, since=since, until=until, user=CONTROL_PLANE_USER):
        client = event.get("userAgent", "?").split("/")[0]
        by_client[client].append(seconds_since(since, event["requestReceivedTimestamp"]))
    rates = {}
    for client, times in sorted(by_client.items(), key=lambda item: -len(item[1])):
        per_second = collections.Counter(int(t) for t in times)
        span = max(times) - min(times)
        rates[client] = {"writes": len(times), "firstSecond": round(min(times), 1), "lastSecond": round(max(times), 1),
                         "writesPerSecond": round(len(times) / span, 1) if span else None,
                         "busiestSecond": max(per_second.values())}
    return rates


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reconciles(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("modelkiln_operator_reconciles_total{"))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def utc_now() -> str:
    # The audit log's timestamp format (RFC 3339, microseconds), comparable as strings.
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ready_count(kubectl: cp.Kubectl) -> int:
    items = kubectl.get_json("inferencemodels", namespace=NAMESPACE)["items"]
    return sum(any(c["type"] == "Ready" and c["status"] == "True" for c in im.get("status", {}).get("conditions", []))
               for im in items)


def total(counts: collections.Counter, kind: str) -> int:
    return sum(n for (k, _, _), n in counts.items() if k == kind)


def per_model(counts: collections.Counter, models: int) -> dict[str, float]:
    table: dict[str, float] = collections.defaultdict(float)
    for (kind, resource, verb), n in counts.items():
        table[f"{kind} {verb} {resource}"] += n / models
    return dict(sorted(table.items()))


def reconciled_once_each(metrics_port: int, models: int) -> bool:
    """Whether a (re)started operator has reconciled as many times as there are models."""
    try:
        return reconciles(metrics_port) >= models
    except OSError:
        return False  # still starting


def py_spy() -> str:
    """py-spy (`pip install py-spy`): beside this Python (a venv's bin/ need not be on PATH), else on PATH."""
    found = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise SystemExit("operator_scale: --profile needs py-spy: pip install py-spy")
    return found


def record(pid: int, output: Path) -> subprocess.Popen:
    """py-spy sampling process `pid` 50 times a second, collapsed stacks to `output` once stopped."""
    return subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
                             "--output", str(output)], stdout=subprocess.DEVNULL)


def stop(spy: subprocess.Popen) -> None:
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)


def run(*, models: int, resync: float, steady: float, restarts: int, controller_qps: int | None, workers: int | None,
        profile: Path | None, work: Path) -> dict:
    go = cp.find_go()
    if go is None:
        raise SystemExit("operator_scale: needs Go (to build the control plane); see e2e/README.md")
    bin_dir = cp.build_binaries(go=go)
    policy, audit_log = work / "audit-policy.yaml", work / "audit.log"
    policy.write_text(yaml.safe_dump(audit_policy()))
    qps = (f"--kube-api-qps={controller_qps}", f"--kube-api-burst={2 * controller_qps}") if controller_qps else ()
    plane = cp.start_control_plane(bin_dir=bin_dir, work_dir=work / "control-plane", apiserver_args=(
        f"--audit-policy-file={policy}", f"--audit-log-path={audit_log}", "--audit-log-format=json"),
        controller_manager_args=qps)
    try:
        kubectl = plane.kubectl
        install_modelkiln(kubectl, ROOT)
        for i in range(4):
            kubectl.apply(cp.simulated_node(f"bench-cpu-{i}", pool="cpu", allocatable=BIG_CPU_NODE))
        kubectl.run("wait", "--for=condition=Ready", "--timeout=120s", "node", "--all")
        create_model_namespace(kubectl, NAMESPACE)
        metrics_port = cp.free_port()
        # as deployed: kopf's per-handler lines (--verbose) would cost a good part of its time here
        operator = operator_process(kubectl, work / "operator", resync_seconds=resync, metrics_port=metrics_port,
                                    verbose=False, workers=workers)
        operator.start()
        cp.wait_until("the operator's metrics endpoint", lambda: reconciles(metrics_port) >= 0,
                      timeout=60, procs=[operator.process])

        manifest = {"apiVersion": "v1", "kind": "List",
                    "items": [inference_model(f"model-{i:03d}", replicas=1) for i in range(models)]}
        pids = {p.name: p.popen.pid for p in plane.processes} | {"operator": operator.process.popen.pid}
        cpu_at_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        spy = profile and record(pids["operator"], profile)
        start_stamp, start = utc_now(), time.monotonic()
        kubectl.apply(manifest, namespace=NAMESPACE)
        cp.wait_until(f"{models} Ready InferenceModels", lambda: ready_count(kubectl) == models,
                      timeout=1800, procs=[operator.process])
        all_ready = time.monotonic() - start
        ready_stamp, reconciles_at_ready = utc_now(), reconciles(metrics_port)
        cpu_until_ready = {name: round(cpu_seconds(pid) - cpu_at_start[name], 1) for name, pid in pids.items()}
        if spy:
            stop(spy)
        operator_cpu = cpu_seconds(pids["operator"])
        time.sleep(steady)
        steady_stamp, reconciles_at_end = utc_now(), reconciles(metrics_port)
        operator_cpu_steady = cpu_seconds(pids["operator"]) - operator_cpu
        rss = peak_rss_mb(operator.process.popen.pid)
        resynced_after_restart, rss_restarted = [], []
        for restart in range(restarts):
            operator.restart()
            restarted = time.monotonic()
            spy = profile and restart == 0 and record(operator.process.popen.pid,
                                                      profile.with_name(profile.name + ".restart"))
            cp.wait_until("the restarted operator's first reconcile of every model",
                          lambda: reconciled_once_each(metrics_port, models), timeout=600, procs=[operator.process])
            resynced_after_restart.append(round(time.monotonic() - restarted, 1))
            if spy:
                stop(spy)
            # the last restart is watched as long as the steady window; the others until their burst is over
            time.sleep(max(0.0, (steady if restart == restarts - 1 else 10.0) - resynced_after_restart[-1]))
            rss_restarted.append(round(peak_rss_mb(operator.process.popen.pid), 1))
        restarted_stamp = utc_now()
        operator.stop()
    finally:
        plane.stop()

    to_ready = audit_counts(audit_log, since=start_stamp, until=ready_stamp)
    in_steady = audit_counts(audit_log, since=ready_stamp, until=steady_stamp)
    after_restart = audit_counts(audit_log, since=steady_stamp, until=restarted_stamp)
    operator_writes: dict[str, list[float]] = collections.defaultdict(list)
    for event in audit_events(audit_log, since=start_stamp, until=ready_stamp):
        if event["verb"] in WRITE_VERBS:
            ref = event.get("objectRef", {})
            kind = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            operator_writes[f"{event['verb']} {kind}"].append(seconds_since(start_stamp, event["requestReceivedTimestamp"]))
    return {
        "models": models, "resyncSeconds": resync, "steadySeconds": steady,
        "controllerManagerQPS": controller_qps or "default (20, burst 30)",
        "operatorWorkers": workers or "default (kopf's: cores + 4)",
        "secondsUntilAllReady": round(all_ready, 1),
        # when the operator did its part: e.g. all 1,000 Jobs created by second N
        "operatorWritesFirstAndLastSecond": {kind: [round(min(t), 1), round(max(t), 1), len(t)]
                                             for kind, t in sorted(operator_writes.items())},
        "controlPlaneWritesUntilReady": write_rates(audit_log, since=start_stamp, until=ready_stamp),
        "cpuSecondsUntilReady": cpu_until_ready,
        "reconcilesPerSecond": round(reconciles_at_ready / all_ready, 1),
        "reconcilesPerModelUntilReady": round(reconciles_at_ready / models, 1),
        "writesPerModelUntilReady": round(total(to_ready, "write") / models, 1),
        "readsPerModelUntilReady": round(total(to_ready, "read") / models, 1),
        "writesPerModelPerMinuteSteady": round(total(in_steady, "write") / models * 60 / steady, 1),
        "readsPerModelPerMinuteSteady": round(total(in_steady, "read") / models * 60 / steady, 1),
        "reconcilesPerSecondSteady": round((reconciles_at_end - reconciles_at_ready) / steady, 1),
        "operatorCpuShareSteady": round(operator_cpu_steady / steady, 2),
        "operatorPeakRssMB": round(rss, 1),
        # one entry per restart, in order
        "restartedOperatorPeakRssMB": rss_restarted,
        "secondsUntilEveryModelReconciledAfterRestart": resynced_after_restart,
        "writesPerModelAfterRestarts": round(total(after_restart, "write") / models, 1),
        "readsPerModelAfterRestarts": round(total(after_restart, "read") / models, 1),
        "untilReadyByRequest": per_model(to_ready, models),
        "steadyByRequest": per_model(in_steady, models),
        "afterRestartByRequest": per_model(after_restart, models),
        "machine": {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=100)
    p.add_argument("--resync", type=float, default=10.0, help="MODELKILN_RESYNC_SECONDS (the manifests' 10)")
    p.add_argument("--steady", type=float, default=60.0,
                   help="seconds observed after all are Ready, and again after a restart of the operator")
    p.add_argument("--restarts", type=int, default=1,
                   help="restart the operator this many times, one after another, once all are Ready")
    p.add_argument("--controller-qps", type=int, help="kube-controller-manager's --kube-api-qps (burst twice that)")
    p.add_argument("--workers", type=int, help="the operator's --workers (threads for reconciles)")
    p.add_argument("--profile", type=Path,
                   help="record the operator with py-spy until all are Ready (collapsed stacks, to this file), "
                        "and after its restart until it has reconciled every model (to this file + .restart)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
        result = run(models=args.models, resync=args.resync, steady=args.steady, restarts=args.restarts,
                     controller_qps=args.controller_qps,
                     workers=args.workers, profile=args.profile, work=Path(tmp))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
