"""manifests/ renders with kubectl, grants exactly what the operator calls, and runs it locked down."""

from __future__ import annotations

import collections
import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

from modelkiln.operator import config, handlers, kube, objects, serving
from modelkiln.operator import main as operator_main
from modelkiln.operator.devicepools import CONFIG_KEY, parse_device_pools

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def kustomize(directory: pathlib.Path) -> dict[str, list[dict]]:
    """`kubectl kustomize DIRECTORY`, objects by kind."""
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=True)
    by_kind = collections.defaultdict(list)
    for obj in yaml.safe_load_all(result.stdout):
        by_kind[obj["kind"]].append(obj)
    return by_kind


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return kustomize(ROOT / "manifests")


# Prometheus as kube-prometheus-stack runs it: its namespace and its pods.
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}


def images_env() -> dict[str, str]:
    """manifests/images.env, the one place the base names its images."""
    lines = (ROOT / "manifests" / "images.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def operator_container(rendered: dict[str, list[dict]]) -> dict:
    (deployment,) = rendered["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def configmaps(rendered: dict[str, list[dict]]) -> dict[str, dict]:
    return {c["metadata"]["name"]: c for c in rendered["ConfigMap"]}


def operator_environment(rendered: dict[str, list[dict]]) -> dict[str, str]:
    """The operator's environment: its ConfigMaps (envFrom) overridden by its env values."""
    container = operator_container(rendered)
    env = {}
    for source in container["envFrom"]:
        env.update(configmaps(rendered)[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    return env


def grants(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_the_base_installs_every_piece(rendered):
    assert {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
            "Role", "RoleBinding", "Deployment", "ConfigMap", "PersistentVolumeClaim", "NetworkPolicy"} <= rendered.keys()
    crds = {crd["metadata"]["name"] for crd in rendered["CustomResourceDefinition"]}
    assert "inferencemodels.modelkiln.io" in crds


def test_the_cluster_role_grants_exactly_what_the_operator_and_kopf_call(rendered):
    (role,) = rendered["ClusterRole"]
    needed = {(r.group, r.plural, verb) for r, verbs in kube.PERMISSIONS.items() for verb in verbs}
    needed |= {(group, plural, verb) for (group, plural), verbs in handlers.FRAMEWORK_PERMISSIONS.items()
               for verb in verbs}
    assert grants(role["rules"]) == needed


def test_the_namespaced_role_reads_only_the_device_pool_configmap(rendered):
    (role,) = rendered["Role"]
    assert role["metadata"]["namespace"] == "modelkiln-system"
    needed = {(r.group, r.plural, verb) for r, verbs in kube.NAMESPACED_PERMISSIONS.items() for verb in verbs}
    assert grants(role["rules"]) == needed
    assert [rule["resourceNames"] for rule in role["rules"]] == [["modelkiln-device-pools"]]


def test_the_bindings_give_the_roles_to_the_operators_service_account(rendered):
    (account,) = rendered["ServiceAccount"]
    (deployment,) = rendered["Deployment"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    for binding in rendered["ClusterRoleBinding"] + rendered["RoleBinding"]:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                        "namespace": account["metadata"]["namespace"]}]


def test_the_operator_runs_non_root_with_a_read_only_root_filesystem(rendered):
    (deployment,) = rendered["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (operator,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert operator["securityContext"]["readOnlyRootFilesystem"] is True
    assert operator["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert operator["args"][0] == "operator" and "--peering=modelkiln" in operator["args"]
    assert operator["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_images_are_named_in_images_env_only(rendered):
    images = images_env()
    assert set(images) == {"MODELKILN_OPERATOR_IMAGE", "MODELKILN_SERVER_IMAGE", "MODELKILN_CONVERTER_IMAGE"}
    container = operator_container(rendered)
    assert container["image"] == images["MODELKILN_OPERATOR_IMAGE"]
    (source,) = container["envFrom"]
    configmap = configmaps(rendered)[source["configMapRef"]["name"]]
    # A generated name with a hash of the contents: a changed image rolls the operator.
    assert configmap["metadata"]["name"].startswith("modelkiln-images-")
    assert configmap["metadata"]["namespace"] == "modelkiln-system"
    assert configmap["data"] == images
    settings = config.from_environment(operator_environment(rendered))
    assert (settings.server_image, settings.converter_image) == (images["MODELKILN_SERVER_IMAGE"],
                                                                 images["MODELKILN_CONVERTER_IMAGE"])


def test_the_shipped_configuration_matches_the_operators_defaults(rendered):
    defaults = config.from_environment({})
    assert config.from_environment(operator_environment(rendered)) == defaults  # images included
    pools_configmap = configmaps(rendered)[defaults.device_pools_configmap]
    pools = parse_device_pools(pools_configmap["data"][CONFIG_KEY], source="manifests")
    assert {"CPU", "GPU", "NPU"} <= pools.keys()
    (claim,) = rendered["PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == defaults.repository_claim
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_model_servers_admit_only_their_namespace_the_interceptor_and_prometheus(rendered):
    policies = {p["metadata"]["name"]: p for p in rendered["NetworkPolicy"]}
    policy = policies["modelkiln-serving"]
    (claim,) = rendered["PersistentVolumeClaim"]
    assert policy["metadata"]["namespace"] == claim["metadata"]["namespace"]  # where the base's models live
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= objects.labels(name="digits",
                                                                                  component=serving.COMPONENT).items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    own_namespace, monitoring = policy["spec"]["ingress"]
    interceptor = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
                   "podSelector": {"matchLabels": {"app.kubernetes.io/instance": "interceptor",
                                                   "app.kubernetes.io/part-of": "keda"}}}  # scale to zero
    assert own_namespace == {"from": [{"podSelector": {}}, interceptor],
                             "ports": [{"port": serving.HTTP_PORT, "protocol": "TCP"},
                                       {"port": serving.GRPC_PORT, "protocol": "TCP"}]}
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "modelkiln-system"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "modelkiln",
                                                "app.kubernetes.io/component": "operator"}}}  # rollouts
    assert operator["podSelector"]["matchLabels"].items() <= \
        rendered["Deployment"][0]["spec"]["template"]["metadata"]["labels"].items()
    assert monitoring == {"from": [PROMETHEUS, operator], "ports": [{"port": serving.HTTP_PORT, "protocol": "TCP"}]}


def test_the_operator_admits_prometheus_on_its_metrics_port_and_its_namespace_on_its_health_port(rendered):
    policy = {p["metadata"]["name"]: p for p in rendered["NetworkPolicy"]}["modelkiln-operator"]
    (deployment,) = rendered["Deployment"]
    assert policy["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    args = operator_main.parser().parse_args(operator_container(rendered)["args"][1:])
    assert policy["spec"]["ingress"] == [
        {"from": [PROMETHEUS], "ports": [{"port": args.metrics_port, "protocol": "TCP"}]},
        {"from": [{"podSelector": {}}], "ports": [{"port": args.health_port, "protocol": "TCP"}]}]


def test_the_open_network_component_drops_the_policies_and_nothing_else(rendered, tmp_path):
    base = os.path.relpath(ROOT / "manifests", tmp_path)  # kustomize refuses absolute paths
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{base}]\ncomponents: [{base}/components/open-network]\n")
    opened = kustomize(tmp_path)
    assert "NetworkPolicy" not in opened
    assert {kind: objs for kind, objs in rendered.items() if kind != "NetworkPolicy"} == dict(opened)
