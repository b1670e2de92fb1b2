"""`modelkiln operator` settings: environment defaults, and a bad value refused before starting."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from modelkiln.operator.config import from_environment
from modelkiln.operator.main import log_handler


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


def test_the_operator_command_refuses_a_thread_count_below_one_by_name():
    for bad in ("0", "-2", "many"):
        result = subprocess.run([sys.executable, "-m", "modelkiln.cli", "operator", f"--workers={bad}"],
                                capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
        assert result.returncode == 2
        assert f"argument --workers: a whole number of threads, 1 or more, is expected, got '{bad}'" in result.stderr


def test_the_operators_log_never_shows_credentials_or_signatures_in_uris():
    # at DEBUG (--verbose) the Kubernetes client logs every response body, a Job's arguments included
    stream, handler = io.StringIO(), log_handler()
    handler.setStream(stream)
    logger = logging.getLogger("kubernetes.client.rest.test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    job = {"spec": {"containers": [{"args": ["convert", "--source",
                                             "https://reader:pa55word@models.example.com/m.onnx?sig=s3cr3t"]}]}}
    try:
        logger.debug("response body: %s", json.dumps(job))
        try:
            raise RuntimeError("cannot reach https://reader:pa55word@models.example.com/m.onnx")
        except RuntimeError:
            logger.exception("handler failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert 'response body: {"spec": {"containers": [{"args": ["convert", "--source", ' \
           '"https://***@models.example.com/m.onnx?***"]}]}}' in text
    assert "RuntimeError: cannot reach https://***@models.example.com/m.onnx" in text
    assert "pa55word" not in text and "s3cr3t" not in text
