"""Shared inputs of the operator tests: InferenceModels as the API server would store them."""

from __future__ import annotations

import copy

import pytest

from modelkiln.operator.schema import with_defaults

BASE = {
    "apiVersion": "modelkiln.io/v1alpha1",
    "kind": "InferenceModel",
    "metadata": {"name": "digits", "namespace": "vision", "uid": "0a1b2c3d-uid", "generation": 1},
    "spec": {"source": {"uri": "https://models.example.com/digits.onnx", "format": "onnx"}},
}


def _make_model(**spec_parts) -> dict:
    model = copy.deepcopy(BASE)
    model["spec"].update(copy.deepcopy(spec_parts))
    return with_defaults(model)


@pytest.fixture
def make_model():
    """Makes an InferenceModel with BASE's source and the given spec parts, defaults applied."""
    return _make_model


_POOLS = {
    "CPU": {"nodeSelector": {"modelkiln.io/pool": "cpu"}},
    "GPU": {"nodeSelector": {"modelkiln.io/pool": "gpu"},
            "tolerations": [{"key": "modelkiln.io/accelerator", "operator": "Exists", "effect": "NoSchedule"}],
            "resource": "gpu.intel.com/i915"},
    "NPU": {"nodeSelector": {"modelkiln.io/pool": "npu"},
            "tolerations": [{"key": "modelkiln.io/accelerator", "operator": "Exists", "effect": "NoSchedule"}],
            "resource": "npu.intel.com/accel"},
}


@pytest.fixture
def pools() -> dict:
    """Device pools as in manifests/device-pools.yaml."""
    return copy.deepcopy(_POOLS)
