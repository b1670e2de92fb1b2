"""`modelkiln operator` settings: environment defaults, and a bad value refused before starting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelkiln.operator.config import from_environment


def test_settings_come_from_the_environment_with_documented_defaults():
    config = from_environment({"MODELKILN_NAMESPACE": "ops", "MODELKILN_SERVER_IMAGE": "s:2",
                               "MODELKILN_CONVERTER_IMAGE": "c:2", "MODELKILN_RESYNC_SECONDS": "2.5"})
    assert (config.namespace, config.server_image, config.converter_image, config.resync_seconds) == (
        "ops", "s:2", "c:2", 2.5)
    assert (config.device_pools_configmap, config.repository_claim) == ("modelkiln-device-pools", "modelkiln-models")
    assert config.device_pools_source == "ConfigMap ops/modelkiln-device-pools"


def test_a_resync_interval_that_is_not_a_number_is_refused_by_name():
    for bad in ("soon", "0", "-1"):
        with pytest.raises(ValueError, match=f"MODELKILN_RESYNC_SECONDS must be a number of seconds above 0, got '{bad}'"):
            from_environment({"MODELKILN_RESYNC_SECONDS": bad})


def test_the_operator_command_refuses_bad_settings_before_connecting():
    result = subprocess.run([sys.executable, "-m", "modelkiln.cli", "operator"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "MODELKILN_RESYNC_SECONDS": "soon"}, timeout=60)
    assert result.returncode == 2
    assert "MODELKILN_RESYNC_SECONDS must be a number of seconds" in result.stderr
