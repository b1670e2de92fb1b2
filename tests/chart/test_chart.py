"""charts/modelkiln renders valid Kubernetes 1.34 objects that configure the operator as the kustomize base does.

Every test renders the chart of this checkout with the real helm; the objects are checked offline
against the Kubernetes 1.34 OpenAPI schemas (kubernetes-validate) and against what the operator's
own code reads (its argument parser, settings, device-pool parser and permissions).
"""

from __future__ import annotations

import json

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_helpers import CHART, ROOT, by_kind, one

from modelkiln.operator import config, handlers, kube, objects, schema, serving
from modelkiln.operator import main as operator_main
from modelkiln.operator.devicepools import CONFIG_KEY, parse_device_pools, pod_defaults

ALL_VALUES = yaml.safe_load((ROOT / "tests" / "chart" / "all-values.yaml").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor")
# Kinds outside the Kubernetes API, and the CRD each must satisfy (None: the Prometheus Operator's,
# not shipped here; test_monitors_* check what they select).
CUSTOM_KINDS = {"ClusterKopfPeering": CHART / "crds" / "kopf.dev_clusterkopfpeerings.yaml",
                "ServiceMonitor": None, "PodMonitor": None}


def leaves(values: dict, prefix: str = "") -> set[str]:
    """Dotted paths of the documented values (maps of free keys count as one value)."""
    paths = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        free_map = key in {"devicePools", "resources", "affinity", "labels", "annotations", "podAnnotations",
                           "podLabels", "nodeSelector", "matchLabels"}
        if isinstance(value, dict) and value and not free_map:
            paths |= leaves(value, f"{path}.")
        else:
            paths.add(path)
    return paths


def container(deployment: dict) -> dict:
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    return found


def operator_env(deployment: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(deployment)["env"] if "value" in e}


def kustomize_images() -> dict[str, str]:
    """manifests/images.env: the base's images, a ConfigMap its operator reads (envFrom)."""
    lines = (ROOT / "manifests" / "images.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_test_values_set_every_documented_value():
    assert leaves(ALL_VALUES) == leaves(DEFAULTS)


def test_helm_lint_strict_passes_with_default_and_with_every_value(helm):
    helm.run("lint", "--strict", str(CHART))
    helm.run("lint", "--strict", str(CHART), values=ALL_VALUES)


@pytest.mark.parametrize("values", [None, ALL_VALUES], ids=["defaults", "every-value"])
def test_every_rendered_object_is_valid_for_kubernetes_1_34(helm, values):
    rendered = helm.render(values, api_versions=MONITORING_APIS)
    assert rendered
    for obj in rendered:
        name = f"{obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] in CUSTOM_KINDS:
            crd_path = CUSTOM_KINDS[obj["kind"]]
            if crd_path is not None:
                crd = yaml.safe_load(crd_path.read_text())
                jsonschema.validate(obj.get("status", {}), crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
                                    ["properties"]["status"])
                assert obj["apiVersion"] == f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}", name
            continue
        try:
            kubernetes_validate.validate(obj, "1.34.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} is not a valid Kubernetes 1.34 object: {exc.message} at {list(exc.path)}")


def test_the_charts_crds_are_the_repositorys():
    assert (CHART / "crds" / "modelkiln.io_inferencemodels.yaml").read_text() == \
        (ROOT / "crds" / "modelkiln.io_inferencemodels.yaml").read_text()
    assert (CHART / "crds" / "kopf.dev_clusterkopfpeerings.yaml").read_text() == \
        (ROOT / "manifests" / "peering.yaml").read_text()
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [
        "kopf.dev_clusterkopfpeerings.yaml", "modelkiln.io_inferencemodels.yaml"]


def test_the_example_models_are_valid_inference_models():
    examples = sorted((ROOT / "examples").glob("*/*.yaml"))
    models = [doc for path in examples for doc in yaml.safe_load_all(path.read_text())
              if doc and doc.get("kind") == schema.KIND]
    assert models
    for model in models:
        assert schema.validate(model) == [], model["metadata"]["name"]


def grants(rules: list[dict]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    return {(group, resource, verb, tuple(rule.get("resourceNames", ()))) for rule in rules
            for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}


def test_the_roles_grant_exactly_what_the_operator_and_kopf_call(helm):
    rendered = helm.render()
    needed = {(r.group, r.plural, verb, ()) for r, verbs in kube.PERMISSIONS.items() for verb in verbs}
    needed |= {(group, plural, verb, ()) for (group, plural), verbs in handlers.FRAMEWORK_PERMISSIONS.items()
               for verb in verbs}
    assert grants(one(rendered, "ClusterRole")["rules"]) == needed
    role = one(rendered, "Role")
    configmap = one(rendered, "ConfigMap")["metadata"]["name"]
    assert grants(role["rules"]) == {(r.group, r.plural, verb, (configmap,))
                                     for r, verbs in kube.NAMESPACED_PERMISSIONS.items() for verb in verbs}
    base = [doc for doc in yaml.safe_load_all((ROOT / "manifests" / "rbac.yaml").read_text()) if doc]
    for kind in ("ClusterRole", "Role"):
        assert one(rendered, kind)["rules"] == [
            {**rule, "resourceNames": [configmap]} if "resourceNames" in rule else rule for rule in one(base, kind)["rules"]]


@pytest.mark.parametrize("values", [None, ALL_VALUES], ids=["defaults", "every-value"])
def test_the_roles_are_bound_to_the_operators_service_account(helm, values):
    rendered = helm.render(values)
    account = one(rendered, "ServiceAccount")["metadata"]
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"]
    subject = [{"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}]
    for binding in by_kind(rendered, "ClusterRoleBinding") + by_kind(rendered, "RoleBinding"):
        assert binding["subjects"] == subject
        namespace = binding["metadata"].get("namespace")
        assert [r for r in by_kind(rendered, binding["roleRef"]["kind"])
                if (r["metadata"]["name"], r["metadata"].get("namespace")) == (binding["roleRef"]["name"], namespace)]


def test_with_watch_namespaces_the_operator_gets_a_role_in_each_and_only_nodes_and_peering_cluster_wide(helm):
    rendered = helm.render({"operator": {"watchNamespaces": ["models", "staging"]}})
    assert operator_main.parser().parse_args(container(one(rendered, "Deployment"))["args"][1:]).namespace == [
        "models", "staging"]
    peering, nodes = (kube.PEERINGS.group, kube.PEERINGS.plural), (kube.NODES.group, kube.NODES.plural)
    framework = {(group, plural, verb, ()) for (group, plural), verbs in handlers.FRAMEWORK_PERMISSIONS.items()
                 if (group, plural) not in (handlers.CRDS, peering, nodes) for verb in verbs}
    namespaced = framework | {(r.group, r.plural, verb, ()) for r, verbs in kube.PERMISSIONS.items() if r.namespaced
                              for verb in verbs}
    # Nodes are cluster-scoped, and the peering object is one for all replicas, whatever they
    # watch; CRDs are not watched.
    node_rules = {(*nodes, verb, ()) for verb in handlers.FRAMEWORK_PERMISSIONS[nodes]}
    cluster_wide = node_rules | {(*peering, verb, ())
                                 for verb in kube.PERMISSIONS[kube.PEERINGS] | handlers.FRAMEWORK_PERMISSIONS[peering]}
    assert grants(one(rendered, "ClusterRole")["rules"]) == cluster_wide
    watched = [role for role in by_kind(rendered, "Role") if role["metadata"]["namespace"] != "modelkiln-system"]
    assert sorted(role["metadata"]["namespace"] for role in watched) == ["models", "staging"]
    for role in watched:
        assert grants(role["rules"]) == namespaced
    assert sorted(b["metadata"]["namespace"] for b in by_kind(rendered, "RoleBinding")) == [
        "modelkiln-system", "models", "staging"]
    standalone = helm.render({"operator": {"watchNamespaces": ["models"], "peering": {"enabled": False}}})
    assert grants(one(standalone, "ClusterRole")["rules"]) == node_rules
    assert len(by_kind(standalone, "ClusterRoleBinding")) == 1


def test_the_default_operator_is_configured_as_the_kustomize_base(helm):
    deployment = one(helm.render(), "Deployment")
    base = next(doc for doc in yaml.safe_load_all((ROOT / "manifests" / "operator.yaml").read_text()))
    images = kustomize_images()
    assert container(deployment)["image"] == images.pop("MODELKILN_OPERATOR_IMAGE")
    assert operator_env(deployment) == {**images, **operator_env(base)}
    # The one difference: the chart makes the peering object itself, so its operator must not race
    # Helm to it (a pod that made it first failed `helm install` with "already exists" on a real
    # node); the base has only the CRD and lets the operator make the object.
    assert [a for a in container(deployment)["args"] if a != "--no-create-peering"] == container(base)["args"]
    assert operator_main.parser().parse_args(container(deployment)["args"][1:]).create_peering is False
    assert operator_main.parser().parse_args(container(base)["args"][1:]).create_peering is True
    assert container(deployment)["securityContext"] == container(base)["securityContext"]
    assert deployment["spec"]["template"]["spec"]["securityContext"] == base["spec"]["template"]["spec"]["securityContext"]
    assert container(deployment)["livenessProbe"] == container(base)["livenessProbe"]
    assert container(deployment)["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_every_operator_value_reaches_the_operators_parser_and_settings(helm):
    rendered = helm.render(ALL_VALUES)
    deployment = one(rendered, "Deployment")
    args = container(deployment)["args"]
    assert args[0] == "operator"
    parsed = operator_main.parser().parse_args(args[1:])
    assert (parsed.peering, parsed.namespace, parsed.metrics_port, parsed.health_port, parsed.verbose) == (
        "ml-kiln", ["models", "staging"], 9191, 8181, True)
    settings = config.from_environment({**operator_env(deployment), "MODELKILN_NAMESPACE": "modelkiln-system"})
    assert settings.server_image == "registry.example.com/modelkiln/server:0.1.1"
    assert settings.converter_image == "registry.example.com/modelkiln/converter:0.1.1"
    assert settings.repository_claim == "kiln-models"
    assert settings.resync_seconds == 30
    assert settings.scaling == config.ScalingConfig(
        prometheus_url="http://prometheus-server.observability.svc:9090",
        inflight_query='max(modelkiln_inflight_requests{ns="$namespace",model="$model"})',
        rate_query='sum(rate(modelkiln_requests_total{ns="$namespace",model="$model"}[30s]))', polling_seconds=5,
        http_scaler="http-scaler.keda-system:9090", interceptor="http-interceptor.keda-system.svc.cluster.local")
    assert settings.device_pools_configmap == one(rendered, "ConfigMap")["metadata"]["name"]
    assert one(rendered, "ClusterKopfPeering")["metadata"]["name"] == parsed.peering
    assert container(deployment)["image"] == "registry.example.com/modelkiln/operator:0.1.1"
    assert container(deployment)["imagePullPolicy"] == "Always"
    (test_pod,) = by_kind(rendered, "Pod")
    assert test_pod["spec"]["containers"][0]["image"] == container(deployment)["image"]
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert {p["name"]: p["containerPort"] for p in container(deployment)["ports"]} == {"health": 8181, "metrics": 9191}


def test_the_image_tags_default_to_the_charts_app_version(helm):
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    deployment = one(helm.render(), "Deployment")
    assert container(deployment)["image"] == f"ghcr.io/modelkiln/operator:{app_version}"
    assert operator_env(deployment)["MODELKILN_SERVER_IMAGE"] == f"ghcr.io/modelkiln/server:{app_version}"
    assert operator_env(deployment)["MODELKILN_CONVERTER_IMAGE"] == f"ghcr.io/modelkiln/converter:{app_version}"


def test_device_pools_from_values_are_read_by_the_operator_with_vpu_as_npu(helm):
    default_pools = parse_device_pools(one(helm.render(), "ConfigMap")["data"][CONFIG_KEY], source="chart")
    assert set(default_pools) == {"CPU", "GPU", "NPU"}
    text = one(helm.render(ALL_VALUES), "ConfigMap")["data"][CONFIG_KEY]
    pools = parse_device_pools(text, source="chart")
    assert set(pools) == {"CPU", "GPU", "NPU", "big-cpu"}
    assert pools["CPU"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "c7i.4xlarge"}
    assert pod_defaults(pools["CPU"], "serving") == {"resources": {"requests": {"cpu": "2", "memory": "4Gi"},
                                                                   "limits": {"memory": "8Gi"}},
                                                     "emptyDirSizeLimit": "16Gi"}
    assert pod_defaults(pools["CPU"], "conversion")["emptyDirSizeLimit"] == "64Gi"
    assert yaml.safe_load(text)["GPU"] == {**ALL_VALUES["devicePools"]["GPU"],
                                           "nodeSelector": {"intel.feature.node.kubernetes.io/gpu": "true"}}
    # VPU replaces the default NPU pool (tolerations included, as the values did not set any).
    assert yaml.safe_load(text)["NPU"] == ALL_VALUES["devicePools"]["VPU"]
    assert "GPU" not in parse_device_pools(one(helm.render({"devicePools": {"GPU": None}}), "ConfigMap")["data"][CONFIG_KEY],
                                           source="chart")


@pytest.mark.parametrize(("values", "expected"), [
    ({"operator": {"replicas": -1}}, "at '/operator/replicas': minimum: got -1, want 0"),
    ({"operator": {"replicas": 2, "peering": {"enabled": False}}}, "operator.replicas above 1 needs operator.peering.enabled=true"),
    ({"devicePools": {"GPU": {"resurce": "gpu.intel.com/i915"}}}, "at '/devicePools/GPU': additional properties 'resurce' not allowed"),
    ({"devicePools": {"GPU": {"supplementalGroups": ["render"]}}}, "at '/devicePools/GPU/supplementalGroups/0': got string, want integer"),
    ({"devicePools": {"CPU": {"serving": {"emptyDirSizeLimit": "lots"}}}}, "at '/devicePools/CPU/serving/emptyDirSizeLimit'"),
    ({"devicePools": {"CPU": {"serving": {"resources": {"request": {"cpu": 1}}}}}},
     "at '/devicePools/CPU/serving/resources': additional properties 'request' not allowed"),
    ({"repository": {"accessMode": "ReadWriteAlways"}}, "at '/repository/accessMode': value must be one of 'ReadWriteMany'"),
    ({"repository": {"size": "lots"}}, "at '/repository/size': 'lots' does not match pattern"),
    ({"operator": {"resyncSeconds": 0}}, "at '/operator/resyncSeconds': exclusiveMinimum: got 0, want 0"),
    ({"monitoring": {"podMonitor": {"interval": "soon"}}}, "at '/monitoring/podMonitor/interval': 'soon' does not match pattern"),
    ({"operatr": {"replicas": 1}}, "additional properties 'operatr' not allowed"),
    ({"image": {"registry": "registry.example.com/"}}, "at '/image/registry': 'registry.example.com/' does not match pattern"),
    ({"operator": {"image": {"repository": "registry.example.com/operator"}}},
     "at '/operator': additional properties 'image' not allowed"),
], ids=["negative-replicas", "replicas-without-peering", "pool-field-typo", "group-name", "scratch-size",
        "requests-typo", "access-mode", "size",
        "resync", "interval", "top-level-typo", "registry-slash", "image-per-component"])
def test_a_wrong_value_fails_at_render_with_a_message_naming_it(helm, values, expected):
    result = helm.template(values, check=False)
    assert result.returncode != 0
    assert expected in result.stderr


def test_monitors_render_only_with_the_prometheus_operators_crds_or_when_forced(helm):
    def kinds(values=None, **kwargs):
        return {obj["kind"] for obj in helm.render(values, **kwargs)} & {"ServiceMonitor", "PodMonitor"}
    assert kinds() == set()
    assert kinds(api_versions=MONITORING_APIS) == {"ServiceMonitor", "PodMonitor"}
    assert kinds({"monitoring": {"serviceMonitor": {"force": True}}}) == {"ServiceMonitor"}
    assert kinds({"monitoring": {"podMonitor": {"enabled": False}}}, api_versions=MONITORING_APIS) == {"ServiceMonitor"}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("values", [None, ALL_VALUES], ids=["defaults", "every-value"])
def test_the_service_monitor_scrapes_the_operators_metrics_port(helm, values):
    rendered = helm.render(values, api_versions=MONITORING_APIS)
    monitor, service, deployment = (one(rendered, kind) for kind in ("ServiceMonitor", "Service", "Deployment"))
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    metrics_port = operator_main.parser().parse_args(container(deployment)["args"][1:]).metrics_port
    assert next(p["containerPort"] for p in container(deployment)["ports"] if p["name"] == port["targetPort"]) == metrics_port
    assert endpoint["path"] == "/metrics"


def serving_pod_labels() -> dict[str, str]:
    return objects.labels(name="digits", component=serving.COMPONENT)


def test_the_pod_monitor_scrapes_the_model_servers_http_port(helm):
    monitor = one(helm.render(api_versions=MONITORING_APIS), "PodMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], serving_pod_labels())
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    restricted = one(helm.render(ALL_VALUES), "PodMonitor")
    assert restricted["spec"]["namespaceSelector"] == {"matchNames": ["models", "staging"]}
    assert restricted["metadata"]["labels"]["release"] == "prometheus"


def test_network_policies_are_on_by_default_as_in_the_kustomize_base(helm):
    policies = {p["metadata"]["name"]: p for p in by_kind(helm.render(), "NetworkPolicy")}
    base = {p["metadata"]["name"]: p for p in yaml.safe_load_all((ROOT / "manifests" / "networkpolicy.yaml").read_text())}
    assert policies.keys() == base.keys() == {"modelkiln-serving", "modelkiln-operator"}
    assert policies["modelkiln-serving"]["spec"] == base["modelkiln-serving"]["spec"]
    assert policies["modelkiln-serving"]["metadata"]["namespace"] == "default"  # repository.namespaces
    assert policies["modelkiln-operator"]["spec"]["ingress"] == base["modelkiln-operator"]["spec"]["ingress"]
    assert by_kind(helm.render({"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_model_servers_admit_their_namespace_prometheus_and_the_callers_named(helm):
    values = {**ALL_VALUES["networkPolicy"], "enabled": True}
    rendered = helm.render({**ALL_VALUES, "networkPolicy": values})
    policies = {p["metadata"]["name"]: p for p in by_kind(rendered, "NetworkPolicy")}
    model_policy, operator_policy = policies.pop("ml-kiln-serving"), policies.pop("ml-kiln-operator")
    assert policies == {} and model_policy["metadata"]["namespace"] == "models"
    assert selects(model_policy["spec"]["podSelector"]["matchLabels"], serving_pod_labels())
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
                  "podSelector": {"matchLabels": {"app": "prometheus-server"}}}  # the default label dropped
    own_namespace, monitoring = model_policy["spec"]["ingress"]
    interceptor = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda-system"}},
                   "podSelector": {"matchLabels": {"app": "http-interceptor"}}}  # the default labels dropped
    assert own_namespace == {"from": [{"podSelector": {}}, *values["from"], interceptor],
                             "ports": [{"port": serving.HTTP_PORT, "protocol": "TCP"},
                                       {"port": serving.GRPC_PORT, "protocol": "TCP"}]}
    operator_pod = one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_policy["metadata"]
                                                      ["namespace"]}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": operator_pod["app.kubernetes.io/name"],
                                                "app.kubernetes.io/component": "operator"}}}  # rollouts
    assert selects(operator["podSelector"]["matchLabels"], operator_pod)
    assert monitoring == {"from": [prometheus, operator], "ports": [{"port": serving.HTTP_PORT, "protocol": "TCP"}]}
    assert selects(operator_policy["spec"]["podSelector"]["matchLabels"],
                   one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"])
    assert operator_policy["spec"]["ingress"] == [
        {"from": [prometheus], "ports": [{"port": 9191, "protocol": "TCP"}]},  # metrics
        {"from": [{"podSelector": {}}], "ports": [{"port": 8181, "protocol": "TCP"}]}]  # health, for `helm test`
    watched = helm.render({"operator": {"watchNamespaces": ["a", "b"]}})
    assert sorted(p["metadata"]["namespace"] for p in by_kind(watched, "NetworkPolicy")
                  if p["metadata"]["name"].endswith("-serving")) == ["a", "b"]


def test_the_repository_claim_is_created_per_namespace_or_left_to_an_existing_one(helm):
    claims = by_kind(helm.render(ALL_VALUES), "PersistentVolumeClaim")
    assert [c["metadata"]["namespace"] for c in claims] == ["models", "staging"]
    for claim in claims:
        assert claim["metadata"]["name"] == "kiln-models"
        assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "nfs-client",
                                 "resources": {"requests": {"storage": "200Gi"}}}
        assert "annotations" not in claim["metadata"]
    (default,) = by_kind(helm.render(), "PersistentVolumeClaim")
    assert "storageClassName" not in default["spec"]  # the cluster's default class
    assert default["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    (static,) = by_kind(helm.render({"repository": {"storageClass": ""}}), "PersistentVolumeClaim")
    assert static["spec"]["storageClassName"] == ""
    assert by_kind(helm.render({"repository": {"existingClaim": True}}), "PersistentVolumeClaim") == []


def test_helm_test_calls_the_operators_liveness_endpoint_through_its_service(helm):
    rendered = helm.render()
    (pod,) = [p for p in by_kind(rendered, "Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    service = one(rendered, "Service")
    script = pod["spec"]["containers"][0]["command"][-1]
    health = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "health")
    assert f"http://{service['metadata']['name']}.modelkiln-system.svc:{health}/healthz" in script


def test_values_schema_is_valid_json_schema():
    jsonschema.Draft7Validator.check_schema(json.loads((CHART / "values.schema.json").read_text()))
    jsonschema.validate(DEFAULTS, json.loads((CHART / "values.schema.json").read_text()))
