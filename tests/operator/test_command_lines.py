"""The command lines an InferenceModel turns into (shared by conversion Jobs, serving pods and `modelkiln up`)."""

from __future__ import annotations

import json

from modelkiln.operator import schema
from modelkiln.operator.commands import artifact_key, convert_args, serve_args, serving_options
from modelkiln.operator.local import absolute_file_uri

SOURCE = {"uri": "https://models.example.com/digits.onnx"}


def test_the_artifact_key_ignores_serving_and_written_out_defaults():
    plain = {"source": SOURCE}
    explicit = {"source": SOURCE, "conversion": {"precision": "FP32"},
                "serving": {"device": "GPU", "replicas": 3}}
    assert artifact_key(plain) == artifact_key(explicit)
    assert len(artifact_key(plain)) == 64 and int(artifact_key(plain), 16) >= 0


def test_the_artifact_key_changes_with_the_source_or_the_conversion():
    keys = {artifact_key({"source": SOURCE}),
            artifact_key({"source": {**SOURCE, "uri": "https://models.example.com/other.onnx"}}),
            artifact_key({"source": SOURCE, "conversion": {"precision": "FP16"}}),
            artifact_key({"source": SOURCE, "conversion": {"inputShape": {"input": [1, 64]}}})}
    assert len(keys) == 4


def test_convert_args_for_fp32_name_source_output_precision_and_key():
    args = convert_args(spec={"source": {**SOURCE, "format": "onnx"}}, output="/models/digits", artifact_key="k1")
    assert args == ["--source", SOURCE["uri"], "--output", "/models/digits", "--precision", "FP32",
                    "--artifact-key", "k1", "--format", "onnx", "--keep-versions", "2"]


def test_an_archives_compression_ratio_limit_reaches_the_converter_and_a_raised_one_is_a_new_attempt():
    archive = {"uri": "s3://models/resnet/model.tar.gz"}
    raised = {"source": {**archive, "maxCompressionRatio": 2000}}
    args = convert_args(spec=raised, output="/models/resnet", artifact_key="k1")
    assert args[args.index("--max-compression-ratio") + 1] == "2000"
    assert "--max-compression-ratio" not in convert_args(spec={"source": archive}, output="/m", artifact_key="k1")
    assert artifact_key(raised) != artifact_key({"source": archive})


def test_convert_args_for_int8_carry_calibration_and_accuracy_bounds():
    spec = {"source": SOURCE, "conversion": {"precision": "INT8", "calibration": {"uri": "file://calib.npz"},
                                             "maxAccuracyDrop": 0.02, "minCosine": 0.98}}
    args = convert_args(spec=spec, output="/m/d", artifact_key="k")
    joined = " ".join(args)
    assert "--precision INT8" in joined
    assert "--calibration file://calib.npz --calibration-samples 300" in joined
    assert "--max-accuracy-drop 0.02" in joined and "--min-cosine 0.98" in joined


def test_convert_args_keep_float_operations_by_type_name_and_pattern():
    spec = {"source": SOURCE, "conversion": {"precision": "INT8", "calibration": {"synthetic": True},
                                             "keepFloat": {"types": ["GroupConvolution", "MatMul"],
                                                           "patterns": [".*head.*"]}}}
    args = convert_args(spec=spec, output="/m/d", artifact_key="k")
    assert "--keep-float-type GroupConvolution --keep-float-type MatMul --keep-float-pattern .*head.*" in " ".join(args)
    assert schema.validate({"apiVersion": "modelkiln.io/v1alpha1", "kind": "InferenceModel",
                            "metadata": {"name": "m"}, "spec": spec}) == []
    without = {**spec, "conversion": {k: v for k, v in spec["conversion"].items() if k != "keepFloat"}}
    assert artifact_key(spec) != artifact_key(without)


def test_convert_args_take_resolved_uris_and_preprocessing():
    spec = {"source": {**SOURCE, "sha256": "a" * 64},
            "conversion": {"precision": "INT8", "calibration": {"synthetic": True, "samples": 10},
                           "inputShape": {"input": [-1, 3, 224, 224]}, "layout": {"input": "NCHW"},
                           "mean": {"input": [123.7, 116.3, 103.5]}, "scale": {"input": [58.4, 57.1, 57.4]},
                           "reverseChannels": True}}
    args = convert_args(spec=spec, output="/m/d", artifact_key="k", source_uri="file:///abs/model.onnx")
    assert args[:2] == ["--source", "file:///abs/model.onnx"]
    joined = " ".join(args)
    for expected in ("--sha256 " + "a" * 64, "--input-shape input=-1,3,224,224", "--layout input=NCHW",
                     "--mean input=123.7,116.3,103.5", "--scale input=58.4,57.1,57.4", "--reverse-channels",
                     "--synthetic-calibration --calibration-samples 10"):
        assert expected in joined
    assert "--calibration " not in joined
    both = convert_args(spec={"source": SOURCE, "conversion": {"precision": "INT8", "calibration": {
        "uri": "file://c.npz", "synthetic": True}}}, output="/m/d", artifact_key="k")
    assert "--calibration file://c.npz --synthetic-calibration" in " ".join(both)  # data only for verification


def test_serve_args_say_device_hint_precision_and_pin_the_converted_version():
    args = serve_args(name="digits", spec={"source": SOURCE, "serving": {"device": "VPU"}},
                      repository="/models", version=3)
    assert args == ["--repository", "/models", "--model", "digits", "--device", "NPU",
                    "--performance-hint", "THROUGHPUT", "--inference-precision", "auto",
                    "--version-policy", '{"specific":[3]}']


def test_serve_args_follow_the_spec_version_policy_and_default_to_latest():
    spec = {"source": SOURCE, "serving": {"versionPolicy": {"latest": 2}, "performanceHint": "LATENCY"}}
    args = serve_args(name="m", spec=spec, repository="/r", version=7)
    assert json.loads(args[args.index("--version-policy") + 1]) == {"latest": 2}
    assert args[args.index("--performance-hint") + 1] == "LATENCY"
    unpinned = serve_args(name="m", spec={"source": SOURCE}, repository="/r")
    assert json.loads(unpinned[unpinned.index("--version-policy") + 1]) == {"latest": 1}


def test_serving_options_are_the_config_file_form_with_a_device_override():
    spec = {"source": SOURCE, "serving": {"device": "VPU", "inferencePrecision": "f16"}}
    assert serving_options(spec=spec, version=2) == {"device": "NPU", "performanceHint": "THROUGHPUT",
                                                     "inferencePrecision": "f16", "versionPolicy": {"specific": [2]}}
    assert serving_options(spec=spec, device="CPU")["device"] == "CPU"


def test_retention_arguments_follow_keep_versions_and_the_version_policy_but_not_the_artifact_key():
    spec = {"source": SOURCE, "conversion": {"keepVersions": 5}, "serving": {"versionPolicy": {"latest": 2}}}
    args = convert_args(spec=spec, output="/m/d", artifact_key="k")
    assert args[-4:] == ["--keep-versions", "5", "--version-policy", '{"latest":2}']
    assert artifact_key(spec) == artifact_key({"source": SOURCE})


def test_local_mode_resolves_a_relative_archive_and_keeps_the_path_inside_it(tmp_path):
    assert absolute_file_uri("model.tar.gz#1/model.onnx", tmp_path) == (tmp_path / "model.tar.gz").as_uri() + \
        "#1/model.onnx"
    assert absolute_file_uri("s3://b/model.tar.gz#1/model.onnx", tmp_path) == "s3://b/model.tar.gz#1/model.onnx"
    # elsewhere '#' belongs to the file's name
    assert absolute_file_uri("model#2.onnx", tmp_path) == (tmp_path / "model#2.onnx").as_uri()


AUTO = {"precision": "Auto"}


def test_the_artifact_key_of_auto_covers_where_and_how_it_was_measured():
    base = {"source": SOURCE, "conversion": AUTO}
    keys = {artifact_key(base),
            artifact_key({**base, "serving": {"device": "GPU"}}),
            artifact_key({**base, "nodePool": "cpu-large"}),
            artifact_key({**base, "serving": {"performanceHint": "LATENCY"}}),
            artifact_key({**base, "serving": {"inferencePrecision": "f32"}}),
            artifact_key({**base, "conversion": {**AUTO, "objective": "latency"}})}
    assert len(keys) == 6
    # ... but replicas are not measured, VPU is the NPU, and the documented defaults change nothing
    assert artifact_key({**base, "serving": {"replicas": 4}}) == artifact_key(base)
    assert artifact_key({**base, "serving": {"device": "VPU"}}) == artifact_key({**base, "serving": {"device": "NPU"}})
    assert artifact_key({**base, "conversion": {**AUTO, "objective": "throughput", "secondsPerCandidate": 10}}) == \
        artifact_key(base)


def test_convert_args_for_auto_say_where_and_how_to_measure():
    spec = {"source": SOURCE, "conversion": {**AUTO, "calibration": {"uri": "file://c.npz"}, "objective": "latency"},
            "serving": {"device": "VPU", "performanceHint": "LATENCY"}}
    args = convert_args(spec=spec, output="/m/d", artifact_key="k")
    assert ("--calibration file://c.npz --calibration-samples 300 --objective latency --seconds-per-candidate 10 "
            "--device NPU --performance-hint LATENCY --inference-precision auto --keep-versions 2") in " ".join(args)
    assert "--precision Auto" in " ".join(args)


def test_the_inference_precision_auto_chose_is_served_unless_the_spec_sets_one():
    spec = {"source": SOURCE, "conversion": AUTO}
    assert serving_options(spec=spec, chosen_precision="bf16")["inferencePrecision"] == "bf16"
    args = serve_args(name="m", spec=spec, repository="/r", version=1, chosen_precision="f32")
    assert args[args.index("--inference-precision") + 1] == "f32"
    pinned = {**spec, "serving": {"inferencePrecision": "f16"}}
    assert serving_options(spec=pinned, chosen_precision="bf16")["inferencePrecision"] == "f16"
    assert serving_options(spec={"source": SOURCE})["inferencePrecision"] == "auto"
