"""Autoscaling spec to objects: the HPA, KEDA's ScaledObject, the HTTP add-on's routes, and which
one a model gets given what the cluster has (`scaling.plan`)."""

from __future__ import annotations

import pytest

from modelkiln.operator import scaling
from modelkiln.operator.config import ScalingConfig
from modelkiln.operator.serving import build_interceptor_service, build_service, endpoints

PROMETHEUS = "http://prometheus.monitoring.svc:9090"
CONFIG = ScalingConfig(prometheus_url=PROMETHEUS, polling_seconds=5)


def test_cpu_utilization_gets_a_plain_hpa_with_the_scale_down_delay(make_model):
    autoscaling = {"minReplicas": 1, "maxReplicas": 5, "targetCPUUtilization": 70, "scaleDownDelaySeconds": 30}
    hpa = scaling.build_hpa(model=make_model(), autoscaling=autoscaling)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "digits"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 5)
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 30}}
    assert scaling.plan(autoscaling, keda=False, http_add_on=False, prometheus_url="").autoscaler == scaling.HPA


@pytest.mark.parametrize("field, query", [
    ("targetInflightRequests", 'sum(modelkiln_inflight_requests{namespace="vision",model="digits"})'),
    ("targetRequestsPerSecond", 'sum(rate(modelkiln_requests_total{namespace="vision",model="digits"}[1m]))'),
])
def test_requests_scale_through_a_scaled_object_reading_prometheus(make_model, field, query):
    autoscaling = {"minReplicas": 1, "maxReplicas": 8, field: 4}
    assert scaling.plan(autoscaling, keda=True, http_add_on=False, prometheus_url=PROMETHEUS) == scaling.Plan(
        scaling.SCALED_OBJECT, False, (True, "KEDA", f"1-8 pods on {field} 4 (KEDA, Prometheus)"))
    scaled = scaling.build_scaled_object(model=make_model(), autoscaling=autoscaling, config=CONFIG, to_zero=False)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    assert scaled["metadata"]["ownerReferences"][0]["name"] == "digits"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "digits" and (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 8)
    assert spec["pollingInterval"] == 5 and "cooldownPeriod" not in spec
    assert spec["triggers"] == [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
        "serverAddress": PROMETHEUS, "query": query, "threshold": "4"}}]
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == {
        "scaleDown": {"stabilizationWindowSeconds": 300}}


def test_the_queries_are_the_operators_to_configure(make_model):
    config = ScalingConfig(prometheus_url=PROMETHEUS, inflight_query='max(inflight{ns="$namespace",m="$model"})')
    scaled = scaling.build_scaled_object(model=make_model(), config=config, to_zero=False,
                                         autoscaling={"minReplicas": 1, "maxReplicas": 2, "targetInflightRequests": 1})
    assert scaled["spec"]["triggers"][0]["metadata"]["query"] == 'max(inflight{ns="vision",m="digits"})'


def test_scale_to_zero_waits_on_the_http_add_ons_counts_of_rest_and_grpc_requests(make_model):
    autoscaling = {"minReplicas": 0, "maxReplicas": 3, "targetInflightRequests": 2, "idleSeconds": 45}
    model = make_model()
    scaled = scaling.build_scaled_object(model=model, autoscaling=autoscaling, config=CONFIG, to_zero=True)
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["cooldownPeriod"] == 45
    assert scaled["spec"]["triggers"] == [
        {"type": "external-push", "metadata": {"scalerAddress": "keda-add-ons-http-external-scaler.keda:9090",
                                               "interceptorRoute": route}} for route in ("digits", "digits-grpc")]
    rest, grpc = scaling.build_interceptor_routes(model=model, autoscaling=autoscaling, pods_service="digits-pods")
    names = ["digits", "digits.vision", "digits.vision.svc", "digits.vision.svc.cluster.local"]
    assert rest["spec"]["rules"] == [{"hosts": names}]
    assert rest["spec"]["target"] == {"service": "digits-pods", "portName": "http"}
    assert grpc["metadata"]["name"] == "digits-grpc"
    assert grpc["spec"]["rules"] == [{"hosts": names, "paths": [{"value": "/inference.GRPCInferenceService/"}]}]
    assert grpc["spec"]["target"] == {"service": "digits-pods", "portName": "grpc"}
    assert rest["spec"]["scalingMetric"] == {"concurrency": {"targetValue": 2}}
    # a request held while the model is at zero waits as long as a pod may take to load it
    assert rest["spec"]["timeouts"] == {"readiness": "600s"}
    by_rate = {"minReplicas": 0, "maxReplicas": 3, "targetRequestsPerSecond": 9}
    (rate, _) = scaling.build_interceptor_routes(model=model, autoscaling=by_rate, pods_service="digits-pods")
    assert rate["spec"]["scalingMetric"] == {"requestRate": {"targetValue": 9, "window": "1m", "granularity": "1s"}}


def test_a_model_scaled_to_zero_is_called_at_its_own_name_which_points_at_the_interceptor(make_model):
    model = make_model()
    service = build_interceptor_service(model=model, interceptor=CONFIG.interceptor)
    assert service["metadata"]["name"] == "digits"
    assert service["spec"] == {"type": "ExternalName",
                               "externalName": "keda-add-ons-http-interceptor-proxy.keda.svc.cluster.local",
                               "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}]}
    pods = build_service(model=model, pods=True)
    assert pods["metadata"]["name"] == "digits-pods"
    assert {p["name"]: p["appProtocol"] for p in pods["spec"]["ports"]} == {"http": "http", "grpc": "kubernetes.io/h2c"}
    # one interceptor port for both protocols
    assert endpoints(name="digits", namespace="vision", through_interceptor=True) == {
        "rest": "http://digits.vision.svc:8080", "grpc": "digits.vision.svc:8080"}


@pytest.mark.parametrize("autoscaling, keda, add_on, prometheus, reason", [
    ({"minReplicas": 1, "maxReplicas": 3, "targetInflightRequests": 2}, False, False, PROMETHEUS, "KEDAMissing"),
    ({"minReplicas": 1, "maxReplicas": 3, "targetRequestsPerSecond": 2}, True, False, "", "PrometheusNotConfigured"),
    ({"minReplicas": 0, "maxReplicas": 3, "targetInflightRequests": 2}, False, False, PROMETHEUS, "KEDAMissing"),
    ({"minReplicas": 0, "maxReplicas": 3, "targetInflightRequests": 2}, True, False, PROMETHEUS, "HTTPAddOnMissing"),
])
def test_without_its_components_a_model_serves_unscaled_and_says_why(autoscaling, keda, add_on, prometheus, reason):
    plan = scaling.plan(autoscaling, keda=keda, http_add_on=add_on, prometheus_url=prometheus)
    assert plan.autoscaler is None and not plan.through_interceptor
    ok, got, message = plan.condition
    assert (ok, got) == (False, reason)
    assert "not scaled" in message
    assert scaling.fixed_replicas(autoscaling) == max(autoscaling["minReplicas"], 1)


def test_scale_to_zero_needs_no_prometheus():
    plan = scaling.plan({"minReplicas": 0, "maxReplicas": 2, "targetRequestsPerSecond": 5, "idleSeconds": 60},
                        keda=True, http_add_on=True, prometheus_url="")
    assert plan == scaling.Plan(scaling.SCALED_OBJECT, True, (
        True, "KEDAHTTPAddOn", "0-2 pods on targetRequestsPerSecond 5 seen by KEDA's HTTP add-on, zero after "
                               "60 s without a request"))
