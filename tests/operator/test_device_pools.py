"""Device pools: which pool a device lands on, and what a broken or missing pool says."""

from __future__ import annotations

import pytest

from modelkiln.operator.devicepools import (DEFAULTS, DevicePoolError, conversion_pool, parse_device_pools, pod_defaults,
                                            pool_for)

SOURCE = "ConfigMap modelkiln-system/modelkiln-device-pools"


def test_vpu_lands_on_the_npu_pool(pools):
    assert pool_for(pools, device="VPU", source=SOURCE) == ("NPU", pools["NPU"])


def test_auto_falls_back_to_the_cpu_pool_and_node_pool_overrides_the_device(pools):
    assert pool_for(pools, device="AUTO", source=SOURCE)[0] == "CPU"
    assert pool_for(pools, device="CPU", node_pool="GPU", source=SOURCE)[0] == "GPU"


def test_a_device_without_a_pool_says_what_to_add_and_what_exists(pools):
    with pytest.raises(DevicePoolError) as caught:
        pool_for({"CPU": pools["CPU"]}, device="GPU", source=SOURCE)
    assert str(caught.value) == (f"no device pool 'GPU' for device GPU: add devicePools.GPU to {SOURCE} "
                                 "(configured pools: CPU)")


def test_parsing_reads_yaml_and_names_the_bad_field():
    text = "CPU:\n  nodeSelector: {pool: cpu}\nGPU:\n  resource: gpu.intel.com/i915\n  gpus: 2\n"
    with pytest.raises(DevicePoolError, match="pool 'GPU' has unknown field 'gpus'; expected nodeSelector"):
        parse_device_pools(text, source=SOURCE)
    assert parse_device_pools("CPU:\n  nodeSelector: {pool: cpu}\n", source=SOURCE) == {
        "CPU": {"nodeSelector": {"pool": "cpu"}}}


def test_parsing_refuses_a_wrong_type_and_broken_yaml():
    with pytest.raises(DevicePoolError, match="field 'tolerations' must be a list, got dict"):
        parse_device_pools("GPU:\n  tolerations: {key: x}\n", source=SOURCE)
    with pytest.raises(DevicePoolError, match="is not valid YAML"):
        parse_device_pools("GPU: [\n", source=SOURCE)


def test_conversion_runs_on_the_cpu_pool_without_its_accelerator():
    pools = {"CPU": {"nodeSelector": {"pool": "cpu"}, "resource": "example.com/cpu-slot", "supplementalGroups": [5]}}
    assert conversion_pool(pools) == {"nodeSelector": {"pool": "cpu"}}
    assert conversion_pool({}) == {}


def test_pod_defaults_are_read_and_a_wrong_one_is_named():
    text = ("CPU:\n  serving: {resources: {requests: {cpu: 500m}, limits: {memory: 2Gi}}, emptyDirSizeLimit: 1Gi}\n"
            "  conversion: {emptyDirSizeLimit: 50Gi}\n")
    cpu = parse_device_pools(text, source=SOURCE)["CPU"]
    assert pod_defaults(cpu, "serving") == {"resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "2Gi"}},
                                            "emptyDirSizeLimit": "1Gi"}
    assert pod_defaults(cpu, "conversion") == {**DEFAULTS["conversion"], "emptyDirSizeLimit": "50Gi"}
    assert conversion_pool({"CPU": cpu})["conversion"] == {"emptyDirSizeLimit": "50Gi"}


@pytest.mark.parametrize("text, message", [
    ("GPU:\n  conversion: {emptyDirSizeLimit: 1Gi}\n",
     f"{SOURCE}: pool 'GPU' has field 'conversion', but conversion Jobs run on the CPU pool: "
     "set devicePools.CPU.conversion instead"),
    ("CPU:\n  serving: {resources: {request: {cpu: 1}}}\n",
     f"{SOURCE}: devicePools.CPU.serving.resources must be {{requests: {{cpu: 500m, memory: 1Gi}}, "
     "limits: {memory: 2Gi}}, got {'request': {'cpu': 1}}"),
    ("CPU:\n  serving: {resources: {limits: {memory: 2GB}}}\n",
     f"{SOURCE}: devicePools.CPU.serving.resources.limits.memory must be a Kubernetes quantity such as 500m, "
     "2Gi or 4, got '2GB'"),
    ("CPU:\n  serving: {sizeLimit: 1Gi}\n",
     f"{SOURCE}: devicePools.CPU.serving has unknown field 'sizeLimit'; expected resources, emptyDirSizeLimit"),
], ids=["conversion-off-the-cpu-pool", "requests-typo", "not-a-quantity", "unknown-field"])
def test_a_wrong_pod_default_is_refused_with_what_is_expected(text, message):
    with pytest.raises(DevicePoolError) as caught:
        parse_device_pools(text, source=SOURCE)
    assert str(caught.value) == message
