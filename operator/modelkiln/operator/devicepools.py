"""Device pools: where the pods of each device land.

A cluster has node pools per accelerator; which labels, taints and extended resources mark them
is the cluster owner's choice, so it lives in the operator's ConfigMap (read on every reconcile:
an edit takes effect without a restart). `serving.device` picks the pool named after the device
(VPU means the NPU pool, AUTO falls back to the CPU pool); `spec.nodePool` names another one.
A pool also holds the defaults of its pods: the resources of a serving pod whose model sets none
(`serving`), those of the conversion Jobs (`conversion`, CPU pool only: conversion runs there),
and the size limit of their emptyDirs; what a pool leaves out comes from DEFAULTS.
"""

from __future__ import annotations

import re
from typing import TypedDict

import yaml

from modelkiln.operator.commands import canonical_device

CONFIG_KEY = "devicePools"


class PodDefaults(TypedDict, total=False):
    resources: dict[str, dict[str, str]]  # {requests: {...}, limits: {...}}, when the model sets none
    emptyDirSizeLimit: str  # the sizeLimit of each of the pod's emptyDirs


class DevicePool(TypedDict, total=False):
    nodeSelector: dict[str, str]
    tolerations: list[dict]
    resource: str  # an extended resource such as gpu.intel.com/i915; one per pod
    supplementalGroups: list[int]  # e.g. the node's `render` group, which opens /dev/dri to non-root
    serving: PodDefaults
    conversion: PodDefaults  # CPU pool only


# Serving: a floor for scheduling and for the CPU autoscaler (its utilization is of the request),
# and a memory cap; /tmp and the compiled-model cache hold about a model each. Conversion: the
# source, the IR and NNCF's statistics in memory; downloads and the converters' files on disk.
DEFAULTS: dict[str, PodDefaults] = {
    "serving": {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
                "emptyDirSizeLimit": "4Gi"},
    "conversion": {"resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}},
                   "emptyDirSizeLimit": "20Gi"},
}
# A Kubernetes quantity, as the API server's (and the CRD's) pattern has it.
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
_QUANTITY = re.compile(rf"^[+-]?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?{_NUMBER}))?$")


class DevicePoolError(Exception):
    """The configuration has no usable pool for a model; the message says what to add."""


_FIELDS = {"nodeSelector": dict, "tolerations": list, "resource": str, "supplementalGroups": list,
           "serving": dict, "conversion": dict}


def _check_pod_defaults(defaults: dict, *, where: str) -> None:
    for field, value in defaults.items():
        if field == "emptyDirSizeLimit":
            _check_quantity(value, where=f"{where}.{field}")
        elif field == "resources":
            if not (isinstance(value, dict) and set(value) <= {"requests", "limits"}
                    and all(isinstance(amounts, dict) for amounts in value.values())):
                raise DevicePoolError(f"{where}.resources must be {{requests: {{cpu: 500m, memory: 1Gi}}, "
                                      f"limits: {{memory: 2Gi}}}}, got {value!r}")
            for kind, amounts in value.items():
                for name, amount in amounts.items():
                    _check_quantity(amount, where=f"{where}.resources.{kind}.{name}")
        else:
            raise DevicePoolError(f"{where} has unknown field {field!r}; expected resources, emptyDirSizeLimit")


def _check_quantity(value: object, *, where: str) -> None:
    if not isinstance(value, (str, int)) or not _QUANTITY.match(str(value)):
        raise DevicePoolError(f"{where} must be a Kubernetes quantity such as 500m, 2Gi or 4, got {value!r}")


def parse_device_pools(text: str, *, source: str) -> dict[str, DevicePool]:
    """The pools in `text` (YAML: pool name -> pool). `source` names the file or ConfigMap in errors."""
    try:
        pools = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise DevicePoolError(f"{source}: {CONFIG_KEY} is not valid YAML: {exc}") from None
    if not isinstance(pools, dict):
        raise DevicePoolError(f"{source}: {CONFIG_KEY} must map pool names to pools, got {type(pools).__name__}")
    for name, pool in pools.items():
        if not isinstance(pool, dict):
            raise DevicePoolError(f"{source}: pool {name!r} must be a mapping, got {type(pool).__name__}")
        for field, value in pool.items():
            if field not in _FIELDS:
                raise DevicePoolError(f"{source}: pool {name!r} has unknown field {field!r}; "
                                      f"expected {', '.join(_FIELDS)}")
            if not isinstance(value, _FIELDS[field]):
                raise DevicePoolError(f"{source}: pool {name!r} field {field!r} must be a "
                                      f"{_FIELDS[field].__name__}, got {type(value).__name__}")
            if field == "conversion" and name != "CPU":
                raise DevicePoolError(f"{source}: pool {name!r} has field 'conversion', but conversion Jobs "
                                      f"run on the CPU pool: set {CONFIG_KEY}.CPU.conversion instead")
            if field in DEFAULTS:
                _check_pod_defaults(value, where=f"{source}: {CONFIG_KEY}.{name}.{field}")
    return pools


def pod_defaults(pool: DevicePool, kind: str) -> PodDefaults:
    """The `kind` ("serving" or "conversion") defaults of `pool`, DEFAULTS filling what it leaves out."""
    return {**DEFAULTS[kind], **pool.get(kind, {})}


def pool_for(pools: dict[str, DevicePool], *, device: str, node_pool: str | None = None,
             source: str) -> tuple[str, DevicePool]:
    """The (name, pool) serving `device`, or DevicePoolError naming the missing pool."""
    name = node_pool or canonical_device(device)
    if not node_pool and name == "AUTO" and name not in pools and "CPU" in pools:
        name = "CPU"
    if name not in pools:
        configured = ", ".join(sorted(pools)) or "none"
        asked = f"spec.nodePool {name!r}" if node_pool else f"device {device}"
        raise DevicePoolError(f"no device pool {name!r} for {asked}: add {CONFIG_KEY}.{name} to "
                              f"{source} (configured pools: {configured})")
    return name, pools[name]


def conversion_pool(pools: dict[str, DevicePool]) -> DevicePool:
    """Conversion is CPU work: it runs on the CPU pool, or anywhere when none is configured."""
    pool = pools.get("CPU", {})
    # The CPU pool's accelerator settings (if any) are for serving; a Job needs no device.
    return {key: value for key, value in pool.items() if key in ("nodeSelector", "tolerations", "conversion")}
