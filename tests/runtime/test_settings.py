"""Version policies and serving settings: pure logic, and how `modelkiln serve` refuses bad ones."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from modelkiln.runtime.serving.config import ModelSettings, load_config
from modelkiln.runtime.engine import EngineSettings
from modelkiln.runtime.versions import VersionPolicy


@pytest.mark.parametrize("policy, expected", [
    (None, {5}),
    ({"latest": 2}, {3, 5}),
    ({"latest": {"num_versions": 3}}, {1, 3, 5}),
    ({"specific": [1, 3, 9]}, {1, 3}),
    ({"specific": {"versions": [5]}}, {5}),
    ({"all": {}}, {1, 3, 5}),
])
def test_version_policy_selects_versions(policy, expected):
    assert VersionPolicy.parse(policy).select({1, 3, 5}) == expected


@pytest.mark.parametrize("policy, message", [
    ({"latest": 0}, "version policy latest: expected a positive integer, got 0"),
    ({"specific": []}, "version policy specific: expected a list of version numbers, got []"),
    ({"newest": 1}, 'expected {"latest": N}, {"specific": [versions]} or {"all": {}}'),
    ({"latest": 1, "all": {}}, 'expected {"latest": N}'),
])
def test_bad_version_policy_names_what_was_expected(policy, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        VersionPolicy.parse(policy)


def test_config_file_overrides_flags_per_model(tmp_path):
    path = tmp_path / "serving.yaml"
    path.write_text("models:\n  digits:\n    device: VPU\n    performanceHint: LATENCY\n"
                    "    inferencePrecision: f32\n    versionPolicy: {all: {}}\n")
    config = load_config(path, defaults=ModelSettings())
    digits = config.for_model("digits")
    assert digits.engine.openvino_device == "NPU"  # VPU is the NPU's older name
    assert digits.engine.compile_properties() == {"PERFORMANCE_HINT": "LATENCY",
                                                   "INFERENCE_PRECISION_HINT": "f32"}
    assert digits.policy.all
    assert config.for_model("other") == ModelSettings()
    assert EngineSettings().compile_properties() == {"PERFORMANCE_HINT": "THROUGHPUT"}


def test_config_file_typo_is_named(tmp_path):
    path = tmp_path / "serving.json"
    path.write_text(json.dumps({"models": {"digits": {"devcie": "CPU"}}}))
    with pytest.raises(ValueError, match=r"models.digits: unknown key\(s\) \['devcie'\]"):
        load_config(path, defaults=ModelSettings())


@pytest.mark.parametrize("flags, message", [
    (["--version-policy", '{"oldest": 1}'], "version policy"),
    (["--device", "TPU"], "invalid choice: 'TPU'"),
    (["--config", "/nonexistent.yaml"], "--config /nonexistent.yaml: no such file"),
])
def test_serve_refuses_bad_settings_before_listening(tmp_path, flags, message):
    result = subprocess.run([sys.executable, "-m", "modelkiln.cli", "serve", "--repository",
                             str(tmp_path), *flags], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
