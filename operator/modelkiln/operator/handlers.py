"""The kopf handlers: thin, each hands the InferenceModel to `flows.reconcile`.

A create, a spec change and the operator's resume react at once; a timer resyncs each model
every `resync_seconds` to follow the conversion Job and the Deployment's readiness. All of them
run the same level-triggered reconcile, so it does not matter which one runs, or how often.
"""

from __future__ import annotations

import datetime
import logging

import kopf

from modelkiln.operator import flows, kube, metrics
from modelkiln.operator.config import OperatorConfig
from modelkiln.operator.schema import GROUP, PLURAL, VERSION

RETRY_SECONDS = 10
# Transitions are logged here; kopf's own per-handler lines (every resync) stay at DEBUG level.
LOG = logging.getLogger("modelkiln.operator")

# What kopf calls for these handlers, and what the API server checks for ownerReferences with
# blockOwnerDeletion; kube.PERMISSIONS has the operator's own calls. The ClusterRole grants the union.
FRAMEWORK_PERMISSIONS: dict[tuple[str, str], frozenset[str]] = {
    (GROUP, PLURAL): frozenset({"list", "watch", "patch"}),
    (GROUP, f"{PLURAL}/status"): frozenset({"patch"}),
    (GROUP, f"{PLURAL}/finalizers"): frozenset({"update"}),
    ("", "events"): frozenset({"create"}),
    ("apiextensions.k8s.io", "customresourcedefinitions"): frozenset({"list", "watch"}),
    ("kopf.dev", "clusterkopfpeerings"): frozenset({"get", "list", "watch", "patch"}),
}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    if body.metadata.deletion_timestamp:
        return  # going away (foreground deletion): applying children now would only recreate them
    model = {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}
    try:
        with metrics.RECONCILE_DURATION.time():
            result = flows.reconcile(model=model, api=memo.api, config=memo.config, now=_now())
    except Exception as exc:
        metrics.RECONCILES.labels(outcome="error").inc()
        if isinstance(exc, kube.KubeError):
            raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=RETRY_SECONDS) from exc
        raise  # kopf logs it with its traceback and retries with backoff
    metrics.RECONCILES.labels(outcome="success").inc()
    metrics.record_phase(body.metadata.uid, result.status["phase"])
    # A merge patch: fields the new status no longer has are removed explicitly.
    patch.status.update({field: None for field in model["status"] if field not in result.status})
    patch.status.update(result.status)
    for kind, reason, message in result.events:
        kopf.event(body, type=kind, reason=reason, message=message)
        log = LOG.warning if kind == "Warning" else LOG.info
        log("%s/%s: %s: %s", body.metadata.namespace, body.metadata.name, reason, message)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the handlers for the InferenceModel resource in `registry`."""
    resource = dict(group=GROUP, version=VERSION, plural=PLURAL)

    @kopf.on.login(registry=registry)
    def login(**kwargs) -> kopf.ConnectionInfo | None:
        # A registry of our own has no default login: use the kubernetes client's (in-cluster or KUBECONFIG).
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def connect(memo: kopf.Memo, settings: kopf.OperatorSettings, **_) -> None:
        memo.api = kube.Kube.from_environment()
        memo.config = config
        # Progress and the last-handled spec as annotations of our own: the structural schema
        # would prune kopf's default `status.kopf`.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="modelkiln.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="modelkiln.io", key="last-handled-configuration")
        if not settings.peering.standalone:
            # One cluster-scoped peering object, also when watching only some namespaces; kopf
            # does not create it, and without it replicas would not coordinate.
            settings.peering.clusterwide = True
            memo.api.create(kube.PEERINGS, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                                            "metadata": {"name": settings.peering.name}})

    @kopf.on.resume(**resource, registry=registry)
    @kopf.on.create(**resource, registry=registry)
    @kopf.on.update(**resource, field="spec", registry=registry)
    def spec_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_) -> None:
        _reconcile(body, patch, memo)

    @kopf.timer(**resource, interval=config.resync_seconds, initial_delay=config.resync_seconds,
                registry=registry)
    def resync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_) -> None:
        _reconcile(body, patch, memo)

    @kopf.on.delete(**resource, optional=True, registry=registry)
    def deleted(body: kopf.Body, **_) -> None:
        # Children go with ownerReferences (Kubernetes' garbage collector); only the gauge is ours.
        metrics.record_phase(body.metadata.uid, None)
