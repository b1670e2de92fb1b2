"""The real API server rejects invalid InferenceModels with the CRD's own messages.

Each case is one mistake a person could make in YAML; `kubectl apply` must fail, show the
message written in crds/ (so it names the field and what was expected), and create nothing.
"""

from __future__ import annotations

import copy

import pytest

VALID = {
    "apiVersion": "modelkiln.io/v1alpha1",
    "kind": "InferenceModel",
    "metadata": {"name": "invalid"},
    "spec": {
        "source": {"uri": "s3://models/sagemaker/model.tar.gz#1/model.onnx", "format": "onnx",
                   "credentials": {"secretName": "s3-keys"}, "serviceAccountName": "model-reader"},
        "conversion": {"precision": "FP32"},
        "serving": {"device": "CPU", "replicas": 1},
    },
}


def _with(path: str, value) -> dict:
    """VALID with one field set (or removed, when value is None); path like 'spec.serving.device'."""
    doc = copy.deepcopy(VALID)
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(leaf)
    else:
        node[leaf] = value
    return doc


INVALID = {
    "bad device enum": (
        _with("spec.serving.device", "TPU"), 'spec.serving.device: Unsupported value: "TPU"'),
    "bad precision enum": (
        _with("spec.conversion.precision", "INT4"), 'spec.conversion.precision: Unsupported value: "INT4"'),
    "calibration without INT8": (
        _with("spec.conversion", {"precision": "FP16", "calibration": {"synthetic": True}}),
        "calibration is only valid with precision INT8"),
    "caConfigMap without a name": (
        _with("spec.source.caConfigMap", {"key": "ca.crt"}), "spec.source.caConfigMap.name: Required value"),
    "keepFloat without INT8": (
        _with("spec.conversion", {"precision": "FP16", "keepFloat": {"types": ["GroupConvolution"]}}),
        "keepFloat is only valid with precision INT8"),
    "empty keepFloat": (
        _with("spec.conversion", {"precision": "INT8", "calibration": {"synthetic": True}, "keepFloat": {}}),
        "keepFloat needs at least one of types, names or patterns"),
    "Auto keepFloat without calibration": (
        _with("spec.conversion", {"precision": "Auto", "keepFloat": {"types": ["GroupConvolution"]}}),
        "keepFloat with precision Auto shapes its INT8 candidate, which needs calibration"),
    "unknown Auto objective": (
        _with("spec.conversion", {"precision": "Auto", "objective": "speed"}),
        'spec.conversion.objective: Unsupported value: "speed"'),
    "objective without Auto": (
        _with("spec.conversion", {"precision": "FP16", "objective": "latency"}),
        "objective is only valid with precision Auto"),
    "INT8 without calibration": (
        _with("spec.conversion.precision", "INT8"), "precision INT8 needs calibration"),
    "minReplicas above maxReplicas": (
        _with("spec.serving", {"autoscaling": {"minReplicas": 5, "maxReplicas": 2, "targetCPUUtilization": 70}}),
        "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"),
    "unknown source scheme": (
        _with("spec.source.uri", "s4://bucket/model.onnx"),
        "source.uri must start with file://, http://, https://, pvc://, s3://, gs:// or az://"),
    "object storage URI without a key": (
        _with("spec.source.uri", "s3://models"), "an object storage URI must name the bucket (or container)"),
    "a #path after a name that is no archive": (
        _with("spec.source.uri", "https://models.example.com/m.onnx#inside"),
        "a #path names a file inside an archive"),
    "a #path leaving the archive": (
        _with("spec.source.uri", "s3://models/model.tar.gz#../../etc/passwd"),
        "a #path inside an archive must be relative"),
    "credentials naming no Secret": (
        _with("spec.source.credentials", {}), "spec.source.credentials.secretName: Required value"),
    "keepVersions of 0": (
        _with("spec.conversion.keepVersions", 0), "spec.conversion.keepVersions: Invalid value: 0"),
    "negative replicas": (
        _with("spec.serving.replicas", -1), "spec.serving.replicas: Invalid value: -1"),
    "missing source": (
        _with("spec.source", None), 'spec.source: Required value'),
    "replicas and autoscaling together": (
        _with("spec.serving", {"replicas": 2, "autoscaling": {"maxReplicas": 3, "targetCPUUtilization": 70}}),
        "set either replicas or autoscaling, not both"),
    "scale to zero on CPU": (
        _with("spec.serving", {"autoscaling": {"minReplicas": 0, "maxReplicas": 3, "targetCPUUtilization": 70}}),
        "autoscaling.minReplicas 0 (scale to zero) needs targetInflightRequests or targetRequestsPerSecond"),
    "idle time without scale to zero": (
        _with("spec.serving", {"autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetInflightRequests": 4,
                                               "idleSeconds": 60}}),
        "autoscaling.idleSeconds is only valid with minReplicas 0 (scale to zero)"),
    "pvc URI without a path": (
        _with("spec.source.uri", "pvc://models"), "a pvc:// URI must name the claim and a path"),
    "pvc path leaving its claim": (
        _with("spec.source.uri", "pvc://models/../other/model.onnx"), "a pvc:// path must stay inside its claim"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_inference_model_is_rejected_with_the_crd_message(cluster, namespace, case):
    manifest, expected = INVALID[case]
    result = cluster.apply(manifest, namespace=namespace, check=False)
    assert result.returncode != 0, f"{case}: kubectl apply accepted it:\n{result.stdout}"
    assert expected in result.stderr, f"{case}: expected {expected!r} in:\n{result.stderr}"
    assert cluster.items("inferencemodels", namespace=namespace) == []
    assert cluster.items("jobs", namespace=namespace) == []


def test_the_valid_base_case_is_accepted(cluster, namespace):
    # Guards the table above: each case must fail for its own field, not for the base.
    cluster.apply(VALID, namespace=namespace)
    assert [im["metadata"]["name"] for im in cluster.items("inferencemodels", namespace=namespace)] == ["invalid"]
