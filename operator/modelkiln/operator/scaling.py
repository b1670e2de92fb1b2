"""How an InferenceModel's serving pods scale: which autoscaler, and the objects that make it.

The components are the ones clusters already run, never a scaler of ours:
- CPU utilization: a HorizontalPodAutoscaler, which metrics-server feeds.
- Requests (in flight, or per second): KEDA. A ScaledObject whose prometheus trigger reads the
  pods' `modelkiln_*` metrics from the user's Prometheus (the HPA's Pods metric would need a
  custom-metrics adapter, which clusters rarely have; GPU and NPU pools need this, CPU says
  nothing of their load). KEDA then owns the Deployment's HPA: never both.
- To zero (minReplicas 0): KEDA's HTTP add-on. Its interceptor holds the requests that arrive
  while no pod is Ready and counts them; the ScaledObject's external trigger asks the add-on's
  scaler. The model's Service becomes a DNS name for the interceptor, so clients keep calling
  the address on the status, and a `-pods` Service reaches the pods behind it.

`plan` decides from the spec and what the cluster has; the builders are pure.
"""

from __future__ import annotations

import dataclasses
import string

from modelkiln.operator import objects
from modelkiln.operator.config import ScalingConfig

COMPONENT = "serving"
HTTP_PORT = 8080
GRPC_SERVICE = "/inference.GRPCInferenceService/"  # the KServe v2 gRPC service's paths
# How long the interceptor holds a request for a pod to become Ready: as long as the startup
# probe lets a pod load its model (serving.py).
WAKE_TIMEOUT = "600s"

HPA, SCALED_OBJECT = "HorizontalPodAutoscaler", "ScaledObject"


@dataclasses.dataclass(frozen=True)
class Plan:
    autoscaler: str | None  # HPA, SCALED_OBJECT, or None (nothing scales the Deployment)
    through_interceptor: bool  # scale to zero: the model's Service names the HTTP add-on's interceptor
    # the Autoscaling condition: (ok, reason, message), None without spec.serving.autoscaling
    condition: tuple[bool, str, str] | None


def target(autoscaling: dict) -> tuple[str, int]:
    """(the spec's target field, its value)."""
    for field in ("targetCPUUtilization", "targetInflightRequests", "targetRequestsPerSecond"):
        if field in autoscaling:
            return field, autoscaling[field]
    raise ValueError("autoscaling without a target (the CRD requires one)")


def plan(autoscaling: dict | None, *, keda: bool, http_add_on: bool, prometheus_url: str) -> Plan:
    """What scales the model, given its spec.serving.autoscaling and the cluster's components."""
    if autoscaling is None:
        return Plan(None, False, None)
    field, value = target(autoscaling)
    low, high = autoscaling["minReplicas"], autoscaling["maxReplicas"]
    bounds = f"{low}-{high} pods"
    if field == "targetCPUUtilization":
        return Plan(HPA, False, (True, "HorizontalPodAutoscaler",
                                 f"{bounds} at {value}% CPU utilization (metrics-server)"))
    asked = f"{field} {value}"
    if not keda:
        return Plan(None, False, (False, "KEDAMissing",
                                  f"{asked} scales through KEDA, whose ScaledObject CRD (keda.sh/v1alpha1) is not "
                                  f"installed: {max(low, 1)} pod(s), not scaled; install KEDA (the chart's README)"))
    if low == 0:
        if not http_add_on:
            return Plan(None, False, (False, "HTTPAddOnMissing",
                                      "minReplicas 0 needs KEDA's HTTP add-on (InterceptorRoute CRD, "
                                      "http.keda.sh/v1beta1), which is not installed: 1 pod, not scaled"))
        return Plan(SCALED_OBJECT, True, (True, "KEDAHTTPAddOn",
                                          f"{bounds} on {asked} seen by KEDA's HTTP add-on, zero after "
                                          f"{autoscaling.get('idleSeconds', 300)} s without a request"))
    if not prometheus_url:
        return Plan(None, False, (False, "PrometheusNotConfigured",
                                  f"{asked} reads Prometheus, whose address the operator was not given "
                                  f"(chart value autoscaling.prometheus.url, MODELKILN_PROMETHEUS_URL): "
                                  f"{low} pod(s), not scaled"))
    return Plan(SCALED_OBJECT, False, (True, "KEDA", f"{bounds} on {asked} (KEDA, Prometheus)"))


def fixed_replicas(autoscaling: dict) -> int:
    """The pods a model keeps when its autoscaler cannot run: at least one, so it serves."""
    return max(autoscaling["minReplicas"], 1)


def _behavior(autoscaling: dict) -> dict:
    return {"scaleDown": {"stabilizationWindowSeconds": autoscaling.get("scaleDownDelaySeconds", 300)}}


def build_hpa(*, model: dict, autoscaling: dict) -> dict:
    """An autoscaling/v2 HPA on the Deployment's CPU utilization (of the pods' CPU requests)."""
    name = model["metadata"]["name"]
    return {"apiVersion": "autoscaling/v2", "kind": HPA,
            "metadata": objects.metadata(model=model, name=name, component=COMPONENT),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicas": autoscaling["minReplicas"], "maxReplicas": autoscaling["maxReplicas"],
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                         "type": "Utilization", "averageUtilization": autoscaling["targetCPUUtilization"]}}}],
                     "behavior": _behavior(autoscaling)}}


def route_names(name: str) -> tuple[str, str]:
    """The InterceptorRoutes of a model scaled to zero: REST, and gRPC (another port of its pods)."""
    return name, f"{name}-grpc"


def _prometheus_trigger(*, model: dict, autoscaling: dict, config: ScalingConfig) -> dict:
    field, value = target(autoscaling)
    meta = model["metadata"]
    query = config.inflight_query if field == "targetInflightRequests" else config.rate_query
    return {"type": "prometheus", "metricType": "AverageValue",  # the sum over pods, per pod
            "metadata": {"serverAddress": config.prometheus_url,
                         "query": string.Template(query).substitute(namespace=meta["namespace"], model=meta["name"]),
                         "threshold": str(value)}}


def build_scaled_object(*, model: dict, autoscaling: dict, config: ScalingConfig, to_zero: bool) -> dict:
    """KEDA's ScaledObject on the Deployment: the prometheus trigger, or (to zero) the HTTP add-on's."""
    name = model["metadata"]["name"]
    if to_zero:
        triggers = [{"type": "external-push", "metadata": {"scalerAddress": config.http_scaler,
                                                           "interceptorRoute": route}}
                    for route in route_names(name)]
    else:
        triggers = [_prometheus_trigger(model=model, autoscaling=autoscaling, config=config)]
    spec = {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": autoscaling["minReplicas"], "maxReplicaCount": autoscaling["maxReplicas"],
            "pollingInterval": config.polling_seconds,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(autoscaling)}},
            "triggers": triggers}
    if to_zero:
        spec["cooldownPeriod"] = autoscaling.get("idleSeconds", 300)
    return {"apiVersion": "keda.sh/v1alpha1", "kind": SCALED_OBJECT,
            "metadata": objects.metadata(model=model, name=name, component=COMPONENT), "spec": spec}


def hosts(*, name: str, namespace: str) -> list[str]:
    """The names a client in the cluster may call the model's Service by (the Host it sends)."""
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]


def build_interceptor_routes(*, model: dict, autoscaling: dict, pods_service: str) -> list[dict]:
    """The HTTP add-on's routes from the model's names to its `-pods` Service: REST to the http port,
    the KServe v2 gRPC service (HTTP/2 over the same interceptor port) to the grpc port."""
    meta = model["metadata"]
    names = hosts(name=meta["name"], namespace=meta["namespace"])
    field, value = target(autoscaling)
    metric = ({"concurrency": {"targetValue": value}} if field == "targetInflightRequests"
              else {"requestRate": {"targetValue": value, "window": "1m", "granularity": "1s"}})
    rest, grpc = route_names(meta["name"])
    routes = []
    for route, port, rules in ((rest, "http", [{"hosts": names}]),
                               (grpc, "grpc", [{"hosts": names, "paths": [{"value": GRPC_SERVICE}]}])):
        routes.append({"apiVersion": "http.keda.sh/v1beta1", "kind": "InterceptorRoute",
                       "metadata": objects.metadata(model=model, name=route, component=COMPONENT),
                       "spec": {"target": {"service": pods_service, "portName": port}, "rules": rules,
                                "scalingMetric": metric, "timeouts": {"readiness": WAKE_TIMEOUT}}})
    return routes
