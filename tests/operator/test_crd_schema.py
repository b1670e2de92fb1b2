"""The CRD as the API: what it accepts, what it refuses (with the API server's words), its defaults."""

from __future__ import annotations

import copy
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from modelkiln.operator import schema

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))

VALID = {
    "apiVersion": "modelkiln.io/v1alpha1",
    "kind": "InferenceModel",
    "metadata": {"name": "resnet50"},
    "spec": {"source": {"uri": "https://models.example.com/resnet50.onnx"}},
}


def with_spec(**parts) -> dict:
    obj = copy.deepcopy(VALID)
    obj["spec"].update(parts)
    return obj


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_is_valid(path):
    for obj in yaml.safe_load_all(path.read_text()):
        if obj and obj.get("kind") == "InferenceModel":
            assert schema.validate(obj) == []


def test_the_examples_cover_each_precision_and_device():
    specs = [schema.with_defaults(yaml.safe_load(p.read_text()))["spec"] for p in EXAMPLES]
    assert {s["conversion"]["precision"] for s in specs} >= {"FP32", "FP16", "INT8", "Auto"}
    assert {s["serving"]["device"] for s in specs} >= {"CPU", "GPU", "VPU"}
    assert any("calibration" in s["conversion"] for s in specs)


def test_a_minimal_model_is_valid_and_gets_the_documented_defaults():
    assert schema.validate(VALID) == []
    spec = schema.with_defaults(VALID)["spec"]
    assert spec["conversion"] == {"precision": "FP32", "keepVersions": 2}
    assert spec["serving"] == {"device": "CPU", "performanceHint": "THROUGHPUT", "inferencePrecision": "auto"}
    assert "replicas" not in spec["serving"]  # a default would collide with autoscaling


def test_a_ca_config_map_defaults_to_the_ca_crt_key():
    spec = schema.with_defaults(with_spec(source={"uri": "https://x/m.onnx", "caConfigMap": {"name": "internal-ca"}}))["spec"]
    assert spec["source"]["caConfigMap"] == {"name": "internal-ca", "key": "ca.crt"}


def test_tls_and_a_token_secret_are_valid_and_the_token_key_defaults_to_token():
    obj = with_spec(serving={"tls": {"secretName": "digits-tls"},
                             "auth": {"tokenSecret": {"name": "digits-tokens"}}})
    assert schema.validate(obj) == []
    serving = schema.with_defaults(obj)["spec"]["serving"]
    assert serving["tls"] == {"secretName": "digits-tls"}
    assert serving["auth"] == {"tokenSecret": {"name": "digits-tokens", "key": "token"}}


def test_defaults_do_not_change_the_input_and_fill_nested_objects():
    obj = with_spec(conversion={"precision": "INT8", "calibration": {"uri": "file://c.npz"}},
                    serving={"autoscaling": {"maxReplicas": 3, "targetCPUUtilization": 60}})
    before = copy.deepcopy(obj)
    spec = schema.with_defaults(obj)["spec"]
    assert obj == before
    assert spec["conversion"]["calibration"]["samples"] == 300
    assert spec["serving"]["autoscaling"]["minReplicas"] == 1


@pytest.mark.parametrize("obj, message", [
    (with_spec(serving={"device": "TPU"}),
     'spec.serving.device: Unsupported value: "TPU": supported values: "CPU", "GPU", "VPU", "NPU", "AUTO"'),
    (with_spec(conversion={"precision": "FP8"}),
     'spec.conversion.precision: Unsupported value: "FP8": supported values: "FP32", "FP16", "INT8", "Auto"'),
    (with_spec(conversion={"precision": "FP16", "calibration": {"uri": "file://c.npz"}}),
     'spec.conversion: Invalid value: "object": calibration is only valid with precision INT8 or Auto'),
    (with_spec(conversion={"precision": "FP16", "keepFloat": {"types": ["GroupConvolution"]}}),
     'spec.conversion: Invalid value: "object": keepFloat is only valid with precision INT8 or Auto'),
    (with_spec(conversion={"precision": "Auto", "keepFloat": {"types": ["GroupConvolution"]}}),
     'spec.conversion: Invalid value: "object": keepFloat with precision Auto shapes its INT8 candidate, which '
     'needs calibration: set calibration.uri, or calibration.synthetic: true'),
    (with_spec(conversion={"precision": "Auto", "objective": "speed"}),
     'spec.conversion.objective: Unsupported value: "speed": supported values: "throughput", "latency"'),
    (with_spec(conversion={"precision": "INT8", "calibration": {"synthetic": True}, "objective": "latency"}),
     'spec.conversion: Invalid value: "object": objective is only valid with precision Auto'),
    (with_spec(conversion={"precision": "FP32", "secondsPerCandidate": 5}),
     'spec.conversion: Invalid value: "object": secondsPerCandidate is only valid with precision Auto'),
    (with_spec(conversion={"precision": "Auto", "secondsPerCandidate": 0.5}),
     "spec.conversion.secondsPerCandidate: Invalid value: 0.5: spec.conversion.secondsPerCandidate in body "
     "should be greater than or equal to 1"),
    (with_spec(conversion={"precision": "INT8", "calibration": {"synthetic": True}, "keepFloat": {"names": []}}),
     'spec.conversion.keepFloat: Invalid value: "object": keepFloat needs at least one of types, names or patterns'),
    (with_spec(conversion={"precision": "INT8"}),
     'spec.conversion: Invalid value: "object": precision INT8 needs calibration: '
     'set calibration.uri, or calibration.synthetic: true'),
    (with_spec(conversion={"precision": "INT8", "calibration": {"samples": 10}}),
     'spec.conversion.calibration: Invalid value: "object": calibration needs uri, or synthetic: true'),
    (with_spec(serving={"autoscaling": {"minReplicas": 5, "maxReplicas": 2, "targetCPUUtilization": 70}}),
     'spec.serving.autoscaling.minReplicas: Invalid value: "object": '
     'autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas'),
    (with_spec(serving={"autoscaling": {"maxReplicas": 2}}),
     'spec.serving.autoscaling: Invalid value: "object": '
     'autoscaling needs exactly one target, targetCPUUtilization, targetInflightRequests or targetRequestsPerSecond'),
    (with_spec(serving={"autoscaling": {"maxReplicas": 2, "targetCPUUtilization": 50,
                                        "targetInflightRequests": 4}}),
     'spec.serving.autoscaling: Invalid value: "object": '
     'autoscaling needs exactly one target, targetCPUUtilization, targetInflightRequests or targetRequestsPerSecond'),
    (with_spec(serving={"replicas": 2, "autoscaling": {"maxReplicas": 4, "targetCPUUtilization": 50}}),
     'spec.serving: Invalid value: "object": set either replicas or autoscaling, not both'),
    (with_spec(serving={"autoscaling": {"minReplicas": 0, "maxReplicas": 4, "targetCPUUtilization": 50}}),
     'spec.serving.autoscaling.minReplicas: Invalid value: "object": autoscaling.minReplicas 0 (scale to zero) '
     'needs targetInflightRequests or targetRequestsPerSecond: a model with no pod uses no CPU, so a CPU target '
     'could never wake it'),
    (with_spec(serving={"autoscaling": {"maxReplicas": 4, "targetInflightRequests": 4, "idleSeconds": 60}}),
     'spec.serving.autoscaling.idleSeconds: Invalid value: "object": '
     'autoscaling.idleSeconds is only valid with minReplicas 0 (scale to zero)'),
    (with_spec(serving={"tls": {"secretName": "t"},
                        "autoscaling": {"minReplicas": 0, "maxReplicas": 4, "targetRequestsPerSecond": 20}}),
     'spec.serving.tls: Invalid value: "object": tls cannot be used with autoscaling.minReplicas 0: requests to '
     "a model scaled to zero pass through KEDA's HTTP add-on, which routes them by their cleartext Host header"),
    (with_spec(serving={"replicas": -1}),
     "spec.serving.replicas: Invalid value: -1: spec.serving.replicas in body should be greater than or equal to 0"),
    (with_spec(serving={"replicas": "two"}),
     'spec.serving.replicas: Invalid value: "string": spec.serving.replicas in body must be of type integer: "string"'),
    (with_spec(source={"uri": "ftp://bucket/model.onnx"}),
     'spec.source.uri: Invalid value: "string": source.uri must start with file://, http://, https://, pvc://, '
     's3://, gs:// or az://'),
    (with_spec(source={"uri": "s3://models"}),
     'spec.source.uri: Invalid value: "string": an object storage URI must name the bucket (or container) and a '
     'key or prefix: s3://BUCKET/path/to/model.onnx'),
    (with_spec(source={"uri": "gs://Models/x.onnx"}),
     'spec.source.uri: Invalid value: "string": an object storage URI must name the bucket (or container) and a '
     'key or prefix: s3://BUCKET/path/to/model.onnx'),
    (with_spec(source={"uri": "https://x/model.onnx#inside"}),
     'spec.source.uri: Invalid value: "string": a #path names a file inside an archive: it must follow a name '
     'ending in .tar.gz, .tgz, .tar or .zip'),
    (with_spec(source={"uri": "s3://b/model.tar.gz#1/../../etc/passwd"}),
     'spec.source.uri: Invalid value: "string": a #path inside an archive must be relative, without ".." segments'),
    (with_spec(source={"uri": "s3://b/m.onnx", "credentials": {"secretName": "S3_Keys"}}),
     'spec.source.credentials.secretName: Invalid value: "S3_Keys": spec.source.credentials.secretName in body '
     "should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'"),
    (with_spec(source={"uri": "s3://b/m.onnx"}, conversion={"keepVersions": 0}),
     "spec.conversion.keepVersions: Invalid value: 0: spec.conversion.keepVersions in body should be greater "
     "than or equal to 1"),
    (with_spec(source={"uri": "pvc://models"}),
     'spec.source.uri: Invalid value: "string": a pvc:// URI must name the claim and a path: '
     'pvc://CLAIM/path/to/model.onnx'),
    (with_spec(source={"uri": "pvc://models/../other/model.onnx"}),
     'spec.source.uri: Invalid value: "string": a pvc:// path must stay inside its claim: no ".." segments'),
    (with_spec(conversion={"precision": "INT8", "calibration": {"uri": "pvc://models/data/../../x.npz"}}),
     'spec.conversion.calibration.uri: Invalid value: "string": a pvc:// path must stay inside its claim: '
     'no ".." segments'),
    (with_spec(source={"uri": "https://x/m.onnx", "sha256": "ABC"}),
     "spec.source.sha256: Invalid value: \"ABC\": spec.source.sha256 in body should match '^[0-9a-f]{64}$'"),
    (with_spec(source={}), "spec.source.uri: Required value"),
    (with_spec(source={"uri": "https://x/m.onnx", "caConfigMap": {"key": "ca.crt"}}),
     "spec.source.caConfigMap.name: Required value"),
    (with_spec(source={"uri": "https://x/m.onnx", "caConfigMap": {"name": "Internal_CA"}}),
     "spec.source.caConfigMap.name: Invalid value: \"Internal_CA\": spec.source.caConfigMap.name in body should "
     "match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'"),
    (with_spec(source={"uri": "https://x/m.onnx", "maxBytes": 0}),
     "spec.source.maxBytes: Invalid value: 0: spec.source.maxBytes in body should be greater than or equal to 1"),
    (with_spec(source={"uri": "https://x/m.onnx", "timeoutSeconds": 86401}),
     "spec.source.timeoutSeconds: Invalid value: 86401: spec.source.timeoutSeconds in body should be less than "
     "or equal to 86400"),
    (with_spec(source={"uri": "https://x/m.onnx", "allowLinkLocal": "yes"}),
     'spec.source.allowLinkLocal: Invalid value: "string": spec.source.allowLinkLocal in body must be of type '
     'boolean: "string"'),
    (with_spec(serving={"tls": {}}), "spec.serving.tls.secretName: Required value"),
    (with_spec(serving={"tls": {"secretName": "Digits_TLS"}}),
     "spec.serving.tls.secretName: Invalid value: \"Digits_TLS\": spec.serving.tls.secretName in body should "
     "match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'"),
    (with_spec(serving={"tls": {"secretName": "t", "cert": "x"}}), 'unknown field "spec.serving.tls.cert"'),
    (with_spec(serving={"auth": {}}), "spec.serving.auth.tokenSecret: Required value"),
    (with_spec(serving={"auth": {"tokenSecret": {"key": "token"}}}),
     "spec.serving.auth.tokenSecret.name: Required value"),
    (with_spec(serving={"auth": {"tokenSecret": {"name": "t", "key": "a/b"}}}),
     "spec.serving.auth.tokenSecret.key: Invalid value: \"a/b\": spec.serving.auth.tokenSecret.key in body "
     "should match '^[-._a-zA-Z0-9]+$'"),
    (with_spec(serving={"versionPolicy": {"latest": 1, "all": {}}}),
     'spec.serving.versionPolicy: Invalid value: "object": versionPolicy needs exactly one of latest, specific or all'),
    (with_spec(serving={"device": "CPU", "gpus": 1}), 'unknown field "spec.serving.gpus"'),
    (with_spec(nodePool="x" * 64), "spec.nodePool: Too long: may not be more than 63 bytes"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_an_invalid_model_is_refused_with_the_api_servers_message(obj, message):
    assert message in schema.validate(obj)


def test_a_model_without_source_is_refused():
    obj = copy.deepcopy(VALID)
    del obj["spec"]["source"]
    assert schema.validate(obj) == ["spec.source: Required value", schema.RULES_SKIPPED]


def test_a_name_too_long_for_the_job_name_is_refused():
    obj = copy.deepcopy(VALID)
    obj["metadata"]["name"] = "m" * 47
    assert schema.validate(obj) == [
        '<nil>: Invalid value: "object": metadata.name must be at most 46 characters: '
        "it names the Service and the conversion Job <name>-convert-<key8>"]


def test_a_name_that_is_not_a_dns_subdomain_is_refused_as_the_api_server_does():
    obj = copy.deepcopy(VALID)
    obj["metadata"]["name"] = "ResNet_50"
    assert schema.validate(obj) == [
        'metadata.name: Invalid value: "ResNet_50": a lowercase RFC 1123 subdomain must consist of lower '
        "case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character "
        "(e.g. 'example.com', regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"]
    obj["metadata"]["name"] = "m" * 254
    assert f'metadata.name: Invalid value: "{"m" * 254}": must be no more than 253 characters' \
        in schema.validate(obj)


def test_a_document_that_is_not_an_object_is_refused():
    assert schema.validate(["spec"]) == ['<nil>: Invalid value: "array": an InferenceModel must be an object '
                                         'with apiVersion, kind, metadata and spec']


def test_wrong_kind_and_missing_name_are_refused():
    errors = schema.validate({"apiVersion": "v1", "kind": "Model", "metadata": {}, "spec": {}})
    assert errors == ['apiVersion: Unsupported value: "v1": supported values: "modelkiln.io/v1alpha1"',
                      'kind: Unsupported value: "Model": supported values: "InferenceModel"',
                      "metadata.name: Required value: name or generateName is required"]


def test_rules_run_once_the_structure_is_right_as_on_the_api_server():
    obj = with_spec(source={"uri": "ftp://x"}, serving={"device": "TPU", "replicas": -3})
    assert schema.validate(obj) == [
        "spec.serving.device: Unsupported value: \"TPU\": supported values: \"CPU\", \"GPU\", \"VPU\", \"NPU\", \"AUTO\"",
        "spec.serving.replicas: Invalid value: -3: spec.serving.replicas in body should be greater than or equal to 0",
        schema.RULES_SKIPPED]
    obj["spec"]["serving"] = {"device": "GPU"}
    assert schema.validate(obj) == ['spec.source.uri: Invalid value: "string": source.uri must start with '
                                    'file://, http://, https://, pvc://, s3://, gs:// or az://']


def test_the_crd_has_the_subresources_columns_and_short_name_kubectl_uses():
    crd = schema.load_crd()
    assert crd["spec"]["names"]["shortNames"] == ["im"]
    (version,) = crd["spec"]["versions"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {"specReplicasPath": ".spec.serving.replicas",
                                                "statusReplicasPath": ".status.replicas",
                                                "labelSelectorPath": ".status.selector"}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Device", "Precision", "Chosen", "Phase", "Ready", "Age"]
    assert columns["Chosen"] == ".status.artifact.chosen"     # what precision Auto picked


def test_auto_accepts_calibration_keep_float_and_its_own_fields():
    obj = with_spec(conversion={"precision": "Auto", "calibration": {"uri": "https://x/c.npz"},
                                "keepFloat": {"types": ["GroupConvolution"]}, "objective": "latency",
                                "secondsPerCandidate": 5, "maxAccuracyDrop": 0.02, "minCosine": 0.995})
    assert schema.validate(obj) == []
    assert schema.validate(with_spec(conversion={"precision": "Auto"})) == []
    # no CRD default for Auto's fields: a default would change every existing model's artifact key
    # (keepVersions has one: it is left out of the key)
    assert schema.with_defaults(with_spec(conversion={"precision": "Auto"}))["spec"]["conversion"] == \
        {"precision": "Auto", "keepVersions": 2}


def _spec_fields(node: dict, path: str):
    for key, sub in node.get("properties", {}).items():
        yield f"{path}.{key}", sub
        yield from _spec_fields(sub, f"{path}.{key}")


def test_every_spec_field_has_a_description_for_kubectl_explain():
    spec = schema.load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    undocumented = [path for path, sub in _spec_fields(spec, "spec") if "description" not in sub]
    assert undocumented == []


def _walk(node):
    if isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key != "anyOf":  # int-or-string alternatives, bounded by the pattern
                yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_every_string_list_and_map_under_spec_is_bounded_for_cel_cost_estimation():
    spec = schema.load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for node in _walk(spec):
        if node.get("type") == "string" and "enum" not in node and "pattern" not in node:
            assert "maxLength" in node, node
        if node.get("type") == "array":
            assert "maxItems" in node, node
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, node


def test_the_crd_is_found_where_the_wheel_puts_it(tmp_path):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packaged = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]["crds"]
    # Lay the package out as the wheel does: the module tree plus crds/ at the force-include target.
    shutil.copytree(ROOT / "operator" / "modelkiln", tmp_path / "modelkiln")
    shutil.copytree(ROOT / "crds", tmp_path / packaged)
    result = subprocess.run(
        [sys.executable, "-c", "from modelkiln.operator import schema; print(schema.crd_path()); "
                               "print(schema.load_crd()['metadata']['name'])"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, check=True)
    assert result.stdout.split() == [str(tmp_path / packaged / schema.CRD_FILE), "inferencemodels.modelkiln.io"]


def test_the_crd_is_found_in_a_checkout():
    assert schema.crd_path() == ROOT / "crds" / schema.CRD_FILE


@pytest.mark.parametrize("uri", ["s3://models/sagemaker/model.tar.gz", "gs://my_models/resnet/", "az://models/r.onnx",
                                 "s3://b/model.tar.gz#1/model.onnx", "https://h/m.tgz?X-Amz-Signature=x#m/model.xml",
                                 "pvc://models/m.zip#saved_model"])
def test_object_storage_and_archive_sources_are_valid(uri):
    assert schema.validate(with_spec(source={"uri": uri, "credentials": {"secretName": "s3-keys"},
                                             "serviceAccountName": "model-reader"})) == []


def test_a_shadow_rollout_gets_the_conversion_gates_defaults():
    obj = with_spec(serving={"rollout": {"strategy": "Shadow"}})
    assert schema.validate(obj) == []
    assert schema.with_defaults(obj)["spec"]["serving"]["rollout"]["analysis"] == {
        "minDurationSeconds": 300, "minRequests": 500, "maxErrorRate": 0.01, "maxLatencyRatio": 1.5,
        "minAgreement": 0.99, "minCosine": 0.99}


@pytest.mark.parametrize("rollout, message", [
    ({"strategy": "Shadow", "steps": [10, 50]},
     'spec.serving.rollout.steps: Invalid value: "object": rollout.steps is only valid with strategy Canary'),
    ({"strategy": "Canary", "shadowSample": 0.5},
     'spec.serving.rollout.shadowSample: Invalid value: "object": rollout.shadowSample is only valid with '
     'strategy Shadow'),
    ({"strategy": "Blue"},
     'spec.serving.rollout.strategy: Unsupported value: "Blue": supported values: "Immediate", "Shadow", "Canary"'),
    ({"strategy": "Canary", "steps": [0]},
     "spec.serving.rollout.steps[0]: Invalid value: 0: spec.serving.rollout.steps[0] in body should be greater "
     "than or equal to 1"),
    ({"strategy": "Shadow", "analysis": {"maxLatencyRatio": 0.5}},
     "spec.serving.rollout.analysis.maxLatencyRatio: Invalid value: 0.5: spec.serving.rollout.analysis."
     "maxLatencyRatio in body should be greater than or equal to 1"),
])
def test_an_invalid_rollout_is_refused_with_the_api_servers_message(rollout, message):
    assert message in schema.validate(with_spec(serving={"rollout": rollout}))


def test_a_rollout_chooses_the_versions_so_a_version_policy_is_refused():
    obj = with_spec(serving={"rollout": {"strategy": "Canary"}, "versionPolicy": {"latest": 2}})
    assert schema.validate(obj) == [
        'spec.serving.versionPolicy: Invalid value: "object": versionPolicy cannot be used with rollout strategy '
        'Shadow or Canary: the rollout chooses the versions served (the serving one and the new one)']
    immediate = with_spec(serving={"rollout": {"strategy": "Immediate"}, "versionPolicy": {"latest": 2}})
    assert schema.validate(immediate) == []
