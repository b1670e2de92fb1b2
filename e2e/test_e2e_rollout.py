"""Rollouts that check themselves, on the real node: Shadow and Canary on live traffic through the Service.

A client sends held-out digits through the model's ClusterIP Service all along; the serving pods
compare the new version with the serving one on those requests, and the operator (the chart's, as
a pod) reads their /metrics and decides. The tests run in file order and share the release; the
analysis is short (seconds, not the default minutes) to keep the run short.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
import yaml
from onnx import numpy_helper

import modelkiln_setup as setup
from control_plane import Kubectl, eventually
from test_e2e_real_node import READY_TIMEOUT, Client, apply_and_wait_ready, cluster_ip, held_out_digits

pytestmark = [pytest.mark.real_node, pytest.mark.rollout]

MODELS, UPLOADS = setup.REAL_NODE_MODELS, setup.UPLOADS
SOURCE = f"pvc://{UPLOADS}/digits/model.onnx"
OTHER_SOURCE = f"pvc://{UPLOADS}/other/model.onnx"
# short, but enough requests for the gates to mean something; INT8 on 2 shared cores is noisy
ANALYSIS = {"minDurationSeconds": 20, "minRequests": 150, "maxLatencyRatio": 5}


@pytest.fixture(scope="module")
def release(real_node_cluster) -> Kubectl:
    """The chart, and in the uploads claim a second digits classifier: the same signature, its
    classes shuffled (what a wrong source looks like to clients: plausible answers, other ones)."""
    kubectl, _, work, helm = real_node_cluster
    setup.install_on_real_node(kubectl, helm, work)
    other = onnx.load(setup.DIGITS / "model.onnx")
    shuffled = np.random.default_rng(3).permutation(10)
    for initializer in other.graph.initializer:
        if initializer.name in ("w2", "b2"):
            weights = numpy_helper.to_array(initializer)
            initializer.CopyFrom(numpy_helper.from_array(weights[..., shuffled].copy(), initializer.name))
    (work / "uploads" / "other").mkdir()
    onnx.save(other, work / "uploads" / "other" / "model.onnx")
    setup.owned_by_runtime_user(work / "uploads")
    return kubectl


def digits(name: str, source: str = SOURCE, precision: str = "FP32", **rollout) -> dict:
    model = yaml.safe_load(setup.digits_example(name, source, precision=precision))
    model["spec"]["serving"]["rollout"] = {"analysis": ANALYSIS, **rollout}
    if precision == "INT8":
        model["spec"]["conversion"]["calibration"] = {"uri": f"pvc://{UPLOADS}/digits/calibration.npz",
                                                      "samples": 100}
    return model


def rollout_of(kubectl: Kubectl, name: str) -> dict:
    return kubectl.get_json("inferencemodel", name, namespace=MODELS)["status"].get("rollout") or {}


def wait_for_phase(kubectl: Kubectl, name: str, phase: str) -> dict:
    return eventually(f"rollout {phase}", lambda: (r := rollout_of(kubectl, name)).get("phase") == phase and r,
                      timeout=READY_TIMEOUT)


def served_versions(kubectl: Kubectl, name: str) -> str:
    args = kubectl.get_json("deployment", name, namespace=MODELS)["spec"]["template"]["spec"]["containers"][0]["args"]
    return args[args.index("--version-policy") + 1]


def describe(kubectl: Kubectl, name: str) -> str:
    return kubectl.run("describe", "-n", MODELS, "inferencemodel", name).stdout


def test_fp32_to_int8_in_shadow_mode_is_measured_on_live_traffic_and_promoted(release):
    kubectl = release
    apply_and_wait_ready(kubectl, yaml.safe_dump(digits("digits-shadow", strategy="Shadow")), "digits-shadow")
    with Client(f"{cluster_ip(kubectl, 'digits-shadow')}:8080", "digits-shadow") as client:
        kubectl.apply(digits("digits-shadow", precision="INT8", strategy="Shadow",
                             **{"analysis": {**ANALYSIS, "minAgreement": 0.95, "minCosine": 0.95}}),
                      namespace=MODELS)
        analysing = wait_for_phase(kubectl, "digits-shadow", "Analysing")
        assert (analysing["stable"], analysing["candidate"]) == (1, 2)
        eventually("both versions served", lambda: served_versions(kubectl, "digits-shadow") == '{"specific":[1,2]}')
        promoted = wait_for_phase(kubectl, "digits-shadow", "Promoted")
        kubectl.wait("inferencemodel/digits-shadow", "condition=Ready", namespace=MODELS, timeout=READY_TIMEOUT)
        # Ready once the previous spec's pod is gone; the Service's endpoints follow a moment later
        eventually("clients answered by version 2", lambda: client.versions[-1] == "2", timeout=60)
    model = kubectl.get_json("inferencemodel", "digits-shadow", namespace=MODELS)
    assert model["status"]["artifact"]["version"] == 2 and model["status"]["artifact"]["precision"] == "INT8"
    assert promoted["measured"]["compared"] >= 1 and promoted["measured"]["requests"] >= ANALYSIS["minRequests"]
    assert promoted["measured"]["agreement"] >= 0.95
    assert served_versions(kubectl, "digits-shadow") == '{"specific":[2]}'
    text = describe(kubectl, "digits-shadow")
    assert "Promoted" in text and "top-1 agreement" in text
    assert client.versions[0] == "1" and "2" in client.versions
    assert client.failures == [] and client.answers > ANALYSIS["minRequests"]


def test_a_different_model_with_the_same_signature_is_rolled_back_and_no_client_gets_its_answers(release):
    kubectl = release
    with Client(f"{cluster_ip(kubectl, 'digits-shadow')}:8080", "digits-shadow") as client:
        kubectl.apply(digits("digits-shadow", source=OTHER_SOURCE, strategy="Shadow"), namespace=MODELS)
        rolled_back = wait_for_phase(kubectl, "digits-shadow", "RolledBack")
        kubectl.wait("inferencemodel/digits-shadow", "condition=Stalled", namespace=MODELS, timeout=READY_TIMEOUT)
        eventually("only the stable version served", lambda: served_versions(kubectl, "digits-shadow")
                   == '{"specific":[2]}')
    assert rolled_back["candidate"] == 3 and rolled_back["measured"]["agreement"] < 0.99
    assert rolled_back["message"].startswith("rolled back to version 2: top-1 agreement")
    model = kubectl.get_json("inferencemodel", "digits-shadow", namespace=MODELS)
    stalled = next(c for c in model["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "RolledBack" and model["status"]["phase"] == "Failed"
    assert model["status"]["artifact"]["version"] == 2
    assert "RolledBack" in describe(kubectl, "digits-shadow")
    assert "3" not in client.versions and client.failures == []


def test_a_canary_at_10_percent_answers_10_percent_of_unversioned_requests_from_the_new_version(release):
    kubectl = release
    # an analysis that outlasts the test: the split is counted at 10%
    canary = {"strategy": "Canary", "steps": [10], "analysis": {"minDurationSeconds": 3600}}
    apply_and_wait_ready(kubectl, yaml.safe_dump(digits("digits-canary", **canary)), "digits-canary")
    kubectl.apply(digits("digits-canary", precision="FP16", **canary), namespace=MODELS)
    wait_for_phase(kubectl, "digits-canary", "Analysing")

    def rolled_out() -> bool:
        deployment = kubectl.get_json("deployment", "digits-canary", namespace=MODELS)
        status = deployment["status"]
        pods = kubectl.items("pods", namespace=MODELS, selector="modelkiln.io/model=digits-canary,"
                                                                 "app.kubernetes.io/component=serving")
        return ("--rollout" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
                and status.get("updatedReplicas") == status.get("replicas") == status.get("availableReplicas") == 1
                and len(pods) == 1)
    eventually("the canary's pods alone serving", rolled_out, timeout=READY_TIMEOUT)
    images, _ = held_out_digits()
    client = httpclient.InferenceServerClient(f"{cluster_ip(kubectl, 'digits-canary')}:8080")
    versions = []
    for i in range(2000):
        inp = httpclient.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(images[i % len(images)][None])
        versions.append(client.infer("digits-canary", [inp]).get_response()["model_version"])
    assert set(versions) == {"1", "2"}
    assert 0.07 * 2000 <= versions.count("2") <= 0.13 * 2000, versions.count("2")


def test_abort_by_hand_serves_the_old_version_only(release):
    kubectl = release
    with Client(f"{cluster_ip(kubectl, 'digits-canary')}:8080", "digits-canary") as client:
        kubectl.run("annotate", "-n", MODELS, "inferencemodel/digits-canary", "modelkiln.io/rollout=abort")
        aborted = wait_for_phase(kubectl, "digits-canary", "Aborted")
        kubectl.wait("inferencemodel/digits-canary", "condition=Stalled", namespace=MODELS, timeout=READY_TIMEOUT)
        eventually("only version 1 served", lambda: served_versions(kubectl, "digits-canary") == '{"specific":[1]}')
        eventually("the annotation removed", lambda: "modelkiln.io/rollout" not in (
            kubectl.get_json("inferencemodel", "digits-canary", namespace=MODELS)["metadata"].get("annotations") or {}))
    assert aborted["message"].startswith("aborted by hand")
    assert client.failures == []
    assert json.loads(kubectl.run("get", "-n", MODELS, "inferencemodel", "digits-canary", "-o",
                                  "jsonpath={.status.artifact}").stdout)["version"] == 1
