"""Device pools: where the pods of each device land.

A cluster has node pools per accelerator; which labels, taints and extended resources mark them
is the cluster owner's choice, so it lives in the operator's ConfigMap (read on every reconcile:
an edit takes effect without a restart). `serving.device` picks the pool named after the device
(VPU means the NPU pool, AUTO falls back to the CPU pool); `spec.nodePool` names another one.
"""

from __future__ import annotations

from typing import TypedDict

import yaml

from modelkiln.operator.commands import canonical_device

CONFIG_KEY = "devicePools"


class DevicePool(TypedDict, total=False):
    nodeSelector: dict[str, str]
    tolerations: list[dict]
    resource: str  # an extended resource such as gpu.intel.com/i915; one per pod
    supplementalGroups: list[int]  # e.g. the node's `render` group, which opens /dev/dri to non-root


class DevicePoolError(Exception):
    """The configuration has no usable pool for a model; the message says what to add."""


_FIELDS = {"nodeSelector": dict, "tolerations": list, "resource": str, "supplementalGroups": list}


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
    return pools


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
    return {key: value for key, value in pool.items() if key in ("nodeSelector", "tolerations")}
