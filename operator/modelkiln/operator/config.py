"""The operator's settings, read once from its environment (the Deployment sets them).

Builders never read these themselves: flows pass the values in, so a builder's output depends
only on its arguments. Device pools are not here: they live in a ConfigMap, read on every
reconcile so that an edit needs no restart.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import string

SERVICEACCOUNT_NAMESPACE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
    """Where KEDA finds the request metrics, and the HTTP add-on's addresses (chart: `autoscaling`)."""

    # Prometheus as KEDA's prometheus trigger reaches it; "" when the cluster has none for us
    prometheus_url: str = ""
    # PromQL with $namespace and $model: in-flight requests and requests per second of one model
    inflight_query: str = 'sum(modelkiln_inflight_requests{namespace="$namespace",model="$model"})'
    rate_query: str = 'sum(rate(modelkiln_requests_total{namespace="$namespace",model="$model"}[1m]))'
    polling_seconds: int = 15  # how often KEDA asks its triggers
    # the HTTP add-on (scale to zero): its external scaler, and the interceptor's proxy Service
    http_scaler: str = "keda-add-ons-http-external-scaler.keda:9090"
    interceptor: str = "keda-add-ons-http-interceptor-proxy.keda.svc.cluster.local"


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    namespace: str  # where the device-pool ConfigMap lives (the operator's own namespace)
    device_pools_configmap: str
    server_image: str  # serving Deployments (`modelkiln serve`)
    converter_image: str  # conversion Jobs (`modelkiln convert`)
    repository_claim: str  # PVC holding the model repository, in each InferenceModel's namespace
    resync_seconds: float
    scaling: ScalingConfig = ScalingConfig()

    @property
    def device_pools_source(self) -> str:
        return f"ConfigMap {self.namespace}/{self.device_pools_configmap}"


def _own_namespace() -> str:
    if SERVICEACCOUNT_NAMESPACE.is_file():
        return SERVICEACCOUNT_NAMESPACE.read_text().strip()
    return "modelkiln-system"


def _positive(env: dict[str, str], name: str, default: str, kind=float) -> float:
    text = env.get(name, default)
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise ValueError(f"{name} must be a {'whole ' if kind is int else ''}number of seconds above 0, got {text!r}")
    return value


def _query(env: dict[str, str], name: str, default: str) -> str:
    text = env.get(name) or default
    try:
        string.Template(text).substitute(namespace="n", model="m")
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{name} may use only $namespace and $model (a literal $ is $$), got {text!r}: "
                         f"{exc}") from None
    return text


def scaling_from_environment(env: dict[str, str]) -> ScalingConfig:
    defaults = ScalingConfig()
    return ScalingConfig(
        prometheus_url=env.get("MODELKILN_PROMETHEUS_URL", "").rstrip("/"),
        inflight_query=_query(env, "MODELKILN_PROMETHEUS_INFLIGHT_QUERY", defaults.inflight_query),
        rate_query=_query(env, "MODELKILN_PROMETHEUS_RATE_QUERY", defaults.rate_query),
        polling_seconds=_positive(env, "MODELKILN_KEDA_POLLING_SECONDS", str(defaults.polling_seconds), int),
        http_scaler=env.get("MODELKILN_KEDA_HTTP_SCALER") or defaults.http_scaler,
        interceptor=env.get("MODELKILN_KEDA_HTTP_INTERCEPTOR") or defaults.interceptor,
    )


def from_environment(environ: dict[str, str] | None = None) -> OperatorConfig:
    env = os.environ if environ is None else environ
    resync = _positive(env, "MODELKILN_RESYNC_SECONDS", "10")
    return OperatorConfig(
        namespace=env.get("MODELKILN_NAMESPACE") or _own_namespace(),
        device_pools_configmap=env.get("MODELKILN_DEVICE_POOLS_CONFIGMAP", "modelkiln-device-pools"),
        server_image=env.get("MODELKILN_SERVER_IMAGE", "ghcr.io/modelkiln/server:0.1.0"),
        converter_image=env.get("MODELKILN_CONVERTER_IMAGE", "ghcr.io/modelkiln/converter:0.1.0"),
        repository_claim=env.get("MODELKILN_REPOSITORY_CLAIM", "modelkiln-models"),
        resync_seconds=resync,
        scaling=scaling_from_environment(env),
    )
