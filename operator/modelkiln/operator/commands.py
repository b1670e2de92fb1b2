"""The runtime command lines an InferenceModel turns into, shared by the cluster and the laptop.

The conversion Job and the serving pod run `modelkiln convert ...` and `modelkiln serve ...`; the
local mode (`modelkiln up`) runs the same commands as subprocesses. Building the arguments in one
place keeps both paths converting and serving exactly alike (docs/interfaces.md lists the flags).
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse

from modelkiln.operator.schema import with_defaults

# VPU is the name people still use for Intel's NPU; OpenVINO and the device pools say NPU.
DEVICE_ALIASES = {"VPU": "NPU"}
AUTO = "Auto"
# precision Auto's documented defaults (the converter's), written into the key so that spelling
# them out changes nothing; not CRD defaults, which would change every existing model's key.
AUTO_DEFAULTS = {"objective": "throughput", "secondsPerCandidate": 10}
# What the converter unpacks (runtime/modelkiln/runtime/conversion/archives.py).
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def defaulted_spec(spec: dict) -> dict:
    """`spec` with the CRD's defaults applied (an API server has done this already; a file has not)."""
    return with_defaults({"spec": spec})["spec"]


def is_archive(uri: str) -> bool:
    """Whether the converter unpacks the source at `uri` (a #path/inside may follow)."""
    return urllib.parse.urlsplit(uri).path.lower().endswith(ARCHIVE_SUFFIXES)


def canonical_device(device: str) -> str:
    return DEVICE_ALIASES.get(device, device)


def artifact_key(spec: dict) -> str:
    """SHA-256 (hex) of what decides the artifact: spec.source and spec.conversion, defaults applied.

    Two specs that differ only in serving (or in conversion.keepVersions, which decides what stays
    in the repository, not what the artifact is) share an artifact; writing a default out changes nothing.
    With precision Auto the artifact is what measured fastest where it serves: the device, its
    pool and the serving settings it was measured with are part of the key too.
    """
    spec = defaulted_spec(spec)
    conversion = {field: value for field, value in spec["conversion"].items() if field != "keepVersions"}
    decisive = {"source": spec["source"], "conversion": conversion}
    if conversion["precision"] == AUTO:
        serving = spec["serving"]
        decisive["conversion"] = {**AUTO_DEFAULTS, **conversion}
        decisive["measuredOn"] = {"device": canonical_device(serving["device"]), "nodePool": spec.get("nodePool"),
                                  "performanceHint": serving["performanceHint"],
                                  "inferencePrecision": serving["inferencePrecision"]}
    canonical = json.dumps(decisive, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def convert_args(*, spec: dict, output: str, artifact_key: str, source_uri: str | None = None,
                 calibration_uri: str | None = None) -> list[str]:
    """Arguments after `modelkiln convert` for `spec`.

    `source_uri` / `calibration_uri` replace the spec's URIs where the caller has resolved them
    (local mode: a file:// path relative to the YAML file made absolute).
    """
    spec = defaulted_spec(spec)
    source, conversion = spec["source"], spec["conversion"]
    args = ["--source", source_uri or source["uri"], "--output", output,
            "--precision", conversion["precision"], "--artifact-key", artifact_key]
    if "format" in source:
        args += ["--format", source["format"]]
    if "sha256" in source:
        args += ["--sha256", source["sha256"]]
    if "maxBytes" in source:
        args += ["--max-download-bytes", str(source["maxBytes"])]
    if "maxCompressionRatio" in source:
        args += ["--max-compression-ratio", str(source["maxCompressionRatio"])]
    if "timeoutSeconds" in source:
        args += ["--download-timeout", str(source["timeoutSeconds"])]
    if source.get("allowLinkLocal"):
        args.append("--allow-link-local")
    for flag, field in (("--input-shape", "inputShape"), ("--layout", "layout"), ("--mean", "mean"),
                        ("--scale", "scale")):
        for name, value in conversion.get(field, {}).items():
            text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
            args += [flag, f"{name}={text}"]
    if conversion.get("reverseChannels"):
        args.append("--reverse-channels")
    calibration = conversion.get("calibration")
    if calibration:
        if calibration.get("uri"):
            args += ["--calibration", calibration_uri or calibration["uri"]]
        if calibration.get("synthetic"):
            args.append("--synthetic-calibration")
        args += ["--calibration-samples", str(calibration["samples"])]
    keep_float = conversion.get("keepFloat", {})
    for flag, field in (("--keep-float-type", "types"), ("--keep-float-name", "names"),
                        ("--keep-float-pattern", "patterns")):
        for value in keep_float.get(field, []):
            args += [flag, value]
    if "maxAccuracyDrop" in conversion:
        args += ["--max-accuracy-drop", str(conversion["maxAccuracyDrop"])]
    if "minCosine" in conversion:
        args += ["--min-cosine", str(conversion["minCosine"])]
    if conversion["precision"] == AUTO:
        serving = spec["serving"]
        measured = {**AUTO_DEFAULTS, **conversion}
        args += ["--objective", measured["objective"], "--seconds-per-candidate", str(measured["secondsPerCandidate"]),
                 "--device", canonical_device(serving["device"]), "--performance-hint", serving["performanceHint"],
                 "--inference-precision", serving["inferencePrecision"]]
    args += ["--keep-versions", str(conversion["keepVersions"])]
    policy = spec["serving"].get("versionPolicy")
    if policy:
        args += ["--version-policy", json.dumps(policy, separators=(",", ":"))]
    return args


def version_policy(*, spec: dict, version: int | None = None) -> dict:
    """The versions to serve: the spec's policy, else exactly `version` (the artifact this spec
    converted to: an older artifact reused after a revert is not the latest), else the latest."""
    policy = defaulted_spec(spec)["serving"].get("versionPolicy")
    if policy:
        return policy
    return {"specific": [version]} if version is not None else {"latest": 1}


def serving_options(*, spec: dict, version: int | None = None, device: str | None = None,
                    chosen_precision: str | None = None) -> dict:
    """One model's entry in `modelkiln serve --config` (docs/interfaces.md): how `spec` serves it.

    `device` overrides the spec's (local mode's explicit --device-fallback); `chosen_precision`,
    the inference precision that precision Auto chose, is used unless the spec sets one."""
    serving = defaulted_spec(spec)["serving"]
    precision = serving["inferencePrecision"]
    return {"device": canonical_device(device or serving["device"]),
            "performanceHint": serving["performanceHint"],
            "inferencePrecision": chosen_precision if precision == "auto" and chosen_precision else precision,
            "versionPolicy": version_policy(spec=spec, version=version)}


def serve_args(*, name: str, spec: dict, repository: str, version: int | None = None,
               chosen_precision: str | None = None, rollout: dict | None = None) -> list[str]:
    """Arguments after `modelkiln serve` that serve model `name` of `repository` as `spec` says;
    `rollout` (rollout.serve_plan's) serves its stable and candidate versions, split and compared."""
    options = serving_options(spec=spec, version=version, chosen_precision=chosen_precision)
    policy = {"specific": sorted([rollout["stable"], rollout["candidate"]])} if rollout else options["versionPolicy"]
    args = ["--repository", repository, "--model", name, "--device", options["device"],
            "--performance-hint", options["performanceHint"],
            "--inference-precision", options["inferencePrecision"],
            "--version-policy", json.dumps(policy, separators=(",", ":"))]
    return args + ["--rollout", json.dumps(rollout, separators=(",", ":"))] if rollout else args
