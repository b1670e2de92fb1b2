"""Faults, each injected for real, and what a user then sees (kubectl, status, conditions, Events).

The operator SIGKILLed mid-conversion, the API server restarted (5 s and 75 s down), two
operator replicas with one SIGKILLed, a node of the CPU pool lost, a conversion OOMKilled. kwok
plays the nodes: a conversion whose source names "slow" runs 25 s, one naming "oom" is OOMKilled
(kwok-stages.yaml). A full repository (ENOSPC) is tests/converter/test_convert_failures.py's.
"""

from __future__ import annotations

import datetime
import json
import time

import kopf
import pytest

from control_plane import create_nodes, eventually
from modelkiln_setup import inference_model, operator_process
from test_e2e_lifecycle import READY_TIMEOUT, condition, jobs, serving_pods, wait_ready

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("operator")]
SLOW = "file:///models/slow-digits.onnx"  # converts for 25 s


def uids(objects: list[dict]) -> set[str]:
    return {o["metadata"]["uid"] for o in objects}


def model_of(kubectl, namespace: str, name: str) -> dict:
    return kubectl.get_json("inferencemodel", name, namespace=namespace)


def events_of(kubectl, namespace: str, name: str) -> list[dict]:
    return kubectl.get_json("events", "--field-selector", f"involvedObject.name={name}", namespace=namespace)["items"]


def conversion_in_flight(kubectl, namespace: str) -> dict:
    """The one conversion Job, once its pod runs (and before it finishes)."""
    (job,) = eventually("a conversion Job", lambda: jobs(kubectl, namespace))
    eventually("its pod Running", lambda: [p for p in kubectl.items("pods", namespace=namespace, selector="job-name")
                                           if p["status"].get("phase") == "Running"])
    return job


def test_an_operator_killed_mid_conversion_leaves_one_job_whose_result_the_next_one_adopts(
        cluster, namespace, operator):
    cluster.apply(inference_model("digits", source=SLOW), namespace=namespace)
    job = conversion_in_flight(cluster, namespace)
    operator.kill()
    try:
        (still,) = jobs(cluster, namespace)
        assert not still.get("status", {}).get("conditions"), "the conversion finished before the kill"
    finally:
        operator.start()
    im = wait_ready(cluster, namespace, "digits")
    assert uids(jobs(cluster, namespace)) == {job["metadata"]["uid"]}  # the same Job, no second one
    assert condition(im, "Converted")["status"] == "True"
    assert im["status"]["conversionJob"] == job["metadata"]["name"]
    assert len(cluster.items("replicasets", namespace=namespace)) == 1


def test_an_api_server_restart_loses_no_change_and_rolls_nothing_out(cluster, namespace, operator, control_plane):
    cluster.apply(inference_model("serving", replicas=1), namespace=namespace)
    wait_ready(cluster, namespace, "serving")
    cluster.apply(inference_model("converting", source=SLOW), namespace=namespace)
    eventually("the second conversion Job", lambda: len(jobs(cluster, namespace)) == 2)
    jobs_before, sets_before = uids(jobs(cluster, namespace)), uids(cluster.items("replicasets", namespace=namespace))
    pid = operator.process.popen.pid

    control_plane.restart_apiserver(down_seconds=5)
    cluster.apply(inference_model("serving", replicas=2), namespace=namespace)   # a spec change right after
    cluster.apply(inference_model("after"), namespace=namespace)                 # a new model

    eventually("two ready replicas of the changed model", lambda: model_of(cluster, namespace, "serving")[
        "status"].get("readyReplicas") == 2, timeout=READY_TIMEOUT)
    for name in ("serving", "converting", "after"):
        wait_ready(cluster, namespace, name)
    by_model = {j["metadata"]["uid"]: j["metadata"]["labels"]["modelkiln.io/model"] for j in jobs(cluster, namespace)}
    assert {uid for uid, model in by_model.items() if model != "after"} == jobs_before
    assert sorted(by_model.values()) == ["after", "converting", "serving"]
    sets = cluster.items("replicasets", namespace=namespace)
    assert uids(s for s in sets if s["metadata"]["labels"]["modelkiln.io/model"] == "serving") == sets_before
    assert len(sets) == 3
    # the operator reconnected by itself
    assert operator.process.popen.pid == pid and operator.process.popen.poll() is None


def test_after_a_75_second_api_server_outage_a_new_model_converts(cluster, namespace, operator, control_plane):
    cluster.apply(inference_model("before"), namespace=namespace)
    wait_ready(cluster, namespace, "before")
    pid = operator.process.popen.pid

    control_plane.restart_apiserver(down_seconds=75)   # longer than kopf's default retries (54 s)
    back = time.monotonic()
    cluster.apply(inference_model("after"), namespace=namespace)
    eventually("the new model's conversion Job", lambda: len(jobs(cluster, namespace)) == 2, timeout=READY_TIMEOUT)
    recovered = time.monotonic() - back
    print(f"\nAPI server back after 75 s down: the operator created the new model's Job {recovered:.1f} s later")
    wait_ready(cluster, namespace, "after")
    assert operator.process.popen.pid == pid and operator.process.popen.poll() is None
    assert len(jobs(cluster, namespace)) == 2 and len(cluster.items("replicasets", namespace=namespace)) == 2


def peers(kubectl, peering: str) -> dict:
    """The replicas in the peering object, by kopf's identity."""
    found = kubectl.run("get", "clusterkopfpeering", peering, "-o", "json", check=False)
    return json.loads(found.stdout).get("status") or {} if found.returncode == 0 else {}


@pytest.fixture
def two_replicas(cluster, operator, tmp_path):
    """Two `modelkiln operator --peering` replicas (priority 200 acts, 100 stands by) in place of
    the session's standalone operator."""
    peering = "e2e-faults"
    replicas = []
    for priority in (200, 100):
        replica = operator_process(cluster, tmp_path / f"replica-{priority}")
        replica.argv += [f"--peering={peering}", f"--priority={priority}"]
        replicas.append(replica)
    operator.stop()
    try:
        for count, replica in enumerate(replicas, start=1):   # the standby starts once the active one is a peer
            replica.start()
            eventually(f"{count} peer(s) in ClusterKopfPeering {peering}",
                       lambda: len(peers(cluster, peering)) == count, timeout=60)
        yield peering, *replicas
    finally:
        for replica in replicas:
            replica.stop()
        cluster.run("delete", "clusterkopfpeering", peering, "--ignore-not-found")
        operator.start()


def test_of_two_operator_replicas_one_acts_and_the_other_takes_over_when_it_is_killed(
        cluster, namespace, two_replicas):
    peering, active, standby = two_replicas
    cluster.apply(inference_model("first"), namespace=namespace)
    wait_ready(cluster, namespace, "first")
    assert f"{namespace}/first: " in active.process.log.read_text()
    assert f"{namespace}/first: " not in standby.process.log.read_text()
    standing_by = standby.process.log.read_text()
    # kopf starts a replica paused until the peering object shows it is the highest
    assert "Pausing the watch-stream for inferencemodels" in standing_by and "Resuming" not in standing_by
    assert sorted(p["priority"] for p in peers(cluster, peering).values()) == [100, 200]
    assert len(jobs(cluster, namespace)) == 1

    active.kill()
    killed = time.monotonic()
    cluster.apply(inference_model("second"), namespace=namespace)
    lifetime = kopf.OperatorSettings().peering.lifetime   # a dead peer counts as alive this long
    eventually("the standby to create the new model's Job", lambda: len(jobs(cluster, namespace)) == 2,
               timeout=lifetime + 60)
    failover = time.monotonic() - killed
    print(f"\nfailover: the standby replica acted {failover:.1f} s after the active one was SIGKILLed "
          f"(kopf peering lifetime {lifetime} s)")
    assert failover <= lifetime + 30
    wait_ready(cluster, namespace, "second")
    assert "Resuming operations after the pause" in standby.process.log.read_text()
    assert f"{namespace}/second: " in standby.process.log.read_text()


def test_a_conversion_oomkilled_says_so_in_one_line_with_its_memory_limit(cluster, namespace):
    model = inference_model("digits", source="file:///models/oom-digits.onnx")
    model["spec"]["conversion"]["resources"] = {"requests": {"cpu": "500m", "memory": "256Mi"},
                                                "limits": {"memory": "512Mi"}}
    cluster.apply(model, namespace=namespace)
    im = eventually("phase Failed", lambda: (m := model_of(cluster, namespace, "digits")).get(
        "status", {}).get("phase") == "Failed" and m, timeout=READY_TIMEOUT)
    converted = condition(im, "Converted")
    expected = ("the converter ran out of memory (OOMKilled at its limit of 512Mi); "
                "raise spec.conversion.resources.limits.memory")
    assert (converted["status"], converted["reason"], converted["message"]) == ("False", "ConversionFailed", expected)
    assert condition(im, "Stalled")["message"] == expected
    assert any(e["type"] == "Warning" and e["message"] == expected for e in events_of(cluster, namespace, "digits"))
    (pod,) = cluster.items("pods", namespace=namespace, selector="job-name")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)


LOST = "cpu-1"


@pytest.fixture
def lost_node(cluster):
    """Takes `LOST` away from kwok as a network partition would (its Lease held by someone else,
    so nobody renews it, and its Ready condition Unknown, as the node-lifecycle controller sets it);
    afterwards the node is made anew."""
    def lose() -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        cluster.run("patch", "lease", LOST, "-n", "kube-node-lease", "--type=merge", "-p", json.dumps({"spec": {
            "holderIdentity": "e2e-network-partition", "leaseDurationSeconds": 3600,
            "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}))
        time.sleep(2)  # kwok sees the Lease is not its own before the status changes
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        cluster.run("patch", "node", LOST, "--subresource=status", "--type=strategic", "-p", json.dumps({
            "status": {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                                       "message": "Kubelet stopped posting node status.",
                                       "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}]}}))
    yield lose
    cluster.run("delete", "node", LOST, "--wait=true", "--timeout=60s")
    cluster.run("delete", "lease", LOST, "-n", "kube-node-lease", "--ignore-not-found")
    create_nodes(cluster, timeout=120, pools=("cpu",))


def test_a_node_not_ready_is_named_on_the_model_and_its_pods_move_to_the_pools_other_node(
        cluster, namespace, lost_node):
    cluster.run("cordon", "cpu-2")   # both pods on cpu-1 first
    try:
        cluster.apply(inference_model("digits", replicas=2), namespace=namespace)
        wait_ready(cluster, namespace, "digits")
    finally:
        cluster.run("uncordon", "cpu-2")
    assert {p["spec"]["nodeName"] for p in serving_pods(cluster, namespace, "digits")} == {LOST}

    lost_node()
    im = eventually("Ready False with reason NodeNotReady", lambda: (m := model_of(cluster, namespace, "digits")) and
                    condition(m, "Ready").get("reason") == "NodeNotReady" and m, timeout=60)
    ready = condition(im, "Ready")
    assert ready["status"] == "False" and f"node {LOST} is not Ready (Ready is Unknown" in ready["message"]
    assert condition(im, "Reconciling")["reason"] == "NodeNotReady"
    assert any(e["type"] == "Warning" and e["reason"] == "NodeNotReady" and LOST in e["message"]
               for e in events_of(cluster, namespace, "digits"))

    # evicted after their 20 s toleration of the unreachable taint, replaced on cpu-2
    def moved():
        pods = serving_pods(cluster, namespace, "digits")
        m = model_of(cluster, namespace, "digits")
        return (len(pods) == 2 and {p["spec"]["nodeName"] for p in pods} == {"cpu-2"}
                and condition(m, "Ready").get("status") == "True" and m)
    im = eventually("both pods on cpu-2 and the model Ready", moved, timeout=READY_TIMEOUT)
    assert condition(im, "Ready")["reason"] == "MinimumReplicasAvailable"
