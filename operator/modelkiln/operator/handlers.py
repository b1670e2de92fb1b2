"""The kopf handlers: thin, each hands an InferenceModel to `flows.reconcile`.

A create, a spec change and the operator's resume react at once; so does any change of a child
Deployment, conversion Job or Service (kopf watches them, and the ownerReference names the
model), which is how a model follows its conversion and its rollout and gets a deleted Service
back. kopf also keeps our children in indexes, so reading them costs no request. One
operator-wide task resyncs every model every `resync_seconds` as a safety net, for what does not
reconcile the model by itself (an edit of the device-pool ConfigMap, the repository claim
appearing). All of them run the same level-triggered reconcile, one at a time per model, so it
does not matter which one runs, or how often: when nothing changed it makes no request at all
(the model and its children come from kopf's watches, the device-pool ConfigMap from an answer
at most 5 s old; the status is patched only with what differs, an Event only on a condition's
transition).

No handler needs a finalizer on the model (DESIGN.md: a finalizer only for what garbage
collection cannot do): children go with their ownerReferences, so a model deletes at once even
while no operator runs. That is why the resync is not a kopf timer (kopf puts its finalizer on
every object a timer or daemon runs for) but a task of our own over kopf's index of the models.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import copy
import dataclasses
import datetime
import itertools
import logging
import threading
from collections.abc import Callable, Mapping

import kopf

from modelkiln.operator import flows, kube, metrics, nodes, objects
from modelkiln.operator import rollout as ro
from modelkiln.operator import status as st
from modelkiln.operator.config import OperatorConfig
from modelkiln.operator.schema import GROUP, KIND, PLURAL, VERSION

RETRY_SECONDS = 10
# How often a model whose rollout is analysed reads its pods' metrics and decides (only then: a
# steady model costs no request).
ANALYSIS_SECONDS = 5
# Transitions are logged here; kopf's own per-handler lines (every resync) stay at DEBUG level.
LOG = logging.getLogger("modelkiln.operator")

# Children kopf watches (ours only, by label) and keeps in indexes: reads of them are answered
# from memory. A change of a Deployment, conversion Job or Service also reconciles its model.
# KEDA's objects are watched only where its CRDs are installed (kopf watches what discovery lists).
WATCHED_CHILDREN = (kube.DEPLOYMENTS, kube.JOBS, kube.SERVICES, kube.AUTOSCALERS, kube.DISRUPTION_BUDGETS,
                    kube.SCALED_OBJECTS, kube.INTERCEPTOR_ROUTES)
TRIGGERING_CHILDREN = (kube.DEPLOYMENTS, kube.JOBS, kube.SERVICES)
# kopf's index of the InferenceModels (each as the watch last saw it, by key): what the resync
# tasks go through and what a reconcile reads.
MODELS_INDEX = PLURAL
# kopf's index of the nodes that are not Ready (nodes.py), by (None, name).
UNREADY_NODES_INDEX = "unready_nodes"
# Seconds between kopf's retries of a failed API request (its watches, its patches): endless, the
# last one repeated. kopf's default sequence ends after 54 s, and then its watcher of a resource
# fails for good, so an API server down a little longer (an upgrade) left a running operator
# that no longer saw a new model.
API_RETRY_SECONDS = (1, 1, 2, 3, 5, 8, 10)


class EndlessBackoffs:
    """API_RETRY_SECONDS, then its last value forever: an iterable kopf walks anew for each request."""

    def __iter__(self):
        return itertools.chain(API_RETRY_SECONDS, itertools.repeat(API_RETRY_SECONDS[-1]))

# What kopf calls for these handlers, and what the API server checks for ownerReferences with
# blockOwnerDeletion; kube.PERMISSIONS has the operator's own calls. The ClusterRole grants the union;
# an operator watching some namespaces gets the namespaced part as a Role in each, and keeps only
# the peering object cluster-wide (it does not watch CRDs: see `register`).
CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")
FRAMEWORK_PERMISSIONS: dict[tuple[str, str], frozenset[str]] = {
    (GROUP, PLURAL): frozenset({"list", "watch", "patch"}),
    (GROUP, f"{PLURAL}/status"): frozenset({"patch"}),
    (GROUP, f"{PLURAL}/finalizers"): frozenset({"update"}),  # blockOwnerDeletion; kopf adds no finalizer
    ("", "events"): frozenset({"create"}),
    **{(child.group, child.plural): frozenset({"list", "watch"}) for child in WATCHED_CHILDREN},
    CRDS: frozenset({"list", "watch"}),
    (kube.PEERINGS.group, kube.PEERINGS.plural): frozenset({"get", "list", "watch", "patch"}),
    (kube.NODES.group, kube.NODES.plural): frozenset({"list", "watch"}),  # cluster-scoped, like peering
}

# Sync handlers run in kopf's thread pool: a child's event, the model's own handler and the resync
# may run at once, and two reconciles of one model would race on its status and Events.
_locks: collections.defaultdict[tuple[str, str], threading.Lock] = collections.defaultdict(threading.Lock)
_locks_guard = threading.Lock()
# A model as our last patch of it answered, with the resourceVersion it had before: until the
# watch brings a newer version than that one, a reconcile reads this (else it would patch the
# same status and post the same Events again). Read and written under the model's lock.
_written: dict[tuple[str, str], tuple[str, dict]] = {}


def _model_lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks[namespace, name]


def _forget(namespace: str, name: str) -> None:
    """Drop the lock of a model that is gone (a child's last events may come after the model's own)."""
    with _locks_guard:
        _locks.pop((namespace, name), None)
    _written.pop((namespace, name), None)


def _current(namespace: str, name: str, models: kube.Known) -> tuple[dict | None, str]:
    """A copy of the model as the watch last saw it, or as our own patch left it while the watch has
    not shown that patch yet; and the resourceVersion the watch saw."""
    seen = next(iter(models.get((namespace, name), ())), None)
    if seen is None:
        return None, ""
    version = seen["metadata"]["resourceVersion"]
    written = _written.pop((namespace, name), None)
    if written is not None and written[0] == version:
        _written[namespace, name] = written
        return copy.deepcopy(written[1]), version
    return copy.deepcopy(seen), version


def _trimmed(body: kopf.Body) -> dict:
    """`body` without its managedFields, which nothing here (nor kopf) reads, dropped from kopf's own
    copy too: kopf holds every listed object until its handlers have run, and at a restart they all
    wait at once at its startup gate."""
    body["metadata"].pop("managedFields", None)
    return dict(body)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reconcile(namespace: str, name: str, memo: kopf.Memo, indexes: Mapping[str, kube.Known]) -> None:
    """Reconcile the model as the watch last saw it (not as the event that called saw it: that one may
    be older) and patch what changed in its status."""
    with _model_lock(namespace, name):
        api = memo.api.knowing({**{child: indexes[child.plural] for child in WATCHED_CHILDREN},
                                kube.NODES: indexes[UNREADY_NODES_INDEX]})
        try:
            model, seen_version = _current(namespace, name, indexes[MODELS_INDEX])
            if model is None or model["metadata"].get("deletionTimestamp"):
                _forget(namespace, name)
                return  # gone or going (foreground deletion): applying children now would only recreate them
            with metrics.RECONCILE_DURATION.time():
                result = flows.reconcile(model=model, api=api, config=memo.config, now=_now())
            changes = st.patch(model.get("status") or {}, result.status)
            if changes:
                patched = api.merge_patch(kube.MODEL_STATUS, namespace=namespace, name=name, patch={"status": changes})
                _written[namespace, name] = (seen_version, patched)
            if result.clear_annotation:  # acted on (or refused with an Event): once is enough
                patched = api.merge_patch(kube.MODELS, namespace=namespace, name=name,
                                          patch={"metadata": {"annotations": {ro.ANNOTATION: None}}})
                _written[namespace, name] = (seen_version, patched)
        except Exception as exc:
            metrics.RECONCILES.labels(outcome="error").inc()
            if isinstance(exc, (kube.KubeError, kube.Unreachable)):
                raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=RETRY_SECONDS) from exc
            raise  # kopf logs it with its traceback and retries with backoff
    metrics.RECONCILES.labels(outcome="success").inc()
    metrics.record_phase(model["metadata"]["uid"], result.status["phase"])
    for kind, reason, message in result.events:
        kopf.event(model, type=kind, reason=reason, message=message)
        log = LOG.warning if kind == "Warning" else LOG.info
        log("%s/%s: %s: %s", namespace, name, reason, message)


@dataclasses.dataclass
class _Resync:
    """The operator-wide resync task, shared by every object's memo (kopf gives each a shallow copy)."""

    # A kopf handler's context, kept by the models' indexer before it indexes a model: kopf.event
    # posts through what kopf sets there, and the task is no handler.
    handler_context: contextvars.Context | None = None
    task: asyncio.Task | None = None
    analysis: asyncio.Task | None = None  # the resync of the models whose rollout is analysed


def _analysing(store: kopf.Store) -> bool:
    return any(((model.get("status") or {}).get("rollout") or {}).get("phase") == ro.ANALYSING for model in store)


async def _resync_forever(*, resync: _Resync, memo: kopf.Memo, indexes: Mapping[str, kopf.Index],
                          interval: float, executor: concurrent.futures.Executor,
                          only: Callable[[kopf.Store], bool] = lambda _: True) -> None:
    """Reconcile each model kopf has indexed (`only` those whose index entry it accepts), one after
    another, every `interval` seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        for namespace, name in [key for key, store in list(indexes[MODELS_INDEX].items()) if only(store)]:
            run = resync.handler_context.copy().run
            try:
                await loop.run_in_executor(executor, run, _reconcile, namespace, name, memo, indexes)
            except kopf.TemporaryError as exc:
                if isinstance(exc.__cause__, kube.Unreachable):
                    # one line, not one per model: the next model would get no answer either
                    LOG.warning("resync: %s; the round stops here (the next one retries)", exc.__cause__)
                    break
                LOG.warning("%s/%s: resync: %s (the next resync retries)", namespace, name, exc)
            except Exception:
                LOG.exception("%s/%s: resync failed (the next resync retries)", namespace, name)


def _owner(body: kopf.Body) -> str | None:
    """The name of the InferenceModel that controls `body`, if one does."""
    return next((ref["name"] for ref in body.metadata.get("ownerReferences", [])
                 if ref.get("kind") == KIND and ref.get("controller")), None)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig, *, create_peering: bool = True,
             namespaced: bool = False, workers: int | None = None) -> None:
    """Register the handlers for the InferenceModel resource in `registry`; with `create_peering`,
    the operator creates its peering object when missing (else its deployer does); `namespaced`:
    it watches only the namespaces it was given; `workers`: threads for reconciles (None: kopf's)."""
    resource = dict(group=GROUP, version=VERSION, plural=PLURAL)

    @kopf.on.login(registry=registry)
    def login(**kwargs) -> kopf.ConnectionInfo | None:
        # A registry of our own has no default login: use the kubernetes client's (in-cluster or KUBECONFIG).
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def connect(memo: kopf.Memo, settings: kopf.OperatorSettings, **_) -> None:
        memo.api = kube.Kube.from_environment()
        memo.config = config
        settings.networking.error_backoffs = EndlessBackoffs()
        if workers is not None:
            settings.execution.max_workers = workers  # before start_resync takes the executor
        # Progress and the last-handled spec as annotations of our own: the structural schema
        # would prune kopf's default `status.kopf`.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="modelkiln.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="modelkiln.io", key="last-handled-configuration")
        if namespaced:
            # The given namespaces, by name: kopf would otherwise list and watch all namespaces and
            # CRDs, which a namespaced install does not grant (it would warn and go on without).
            settings.scanning.disabled = True
        if not settings.peering.standalone:
            # One cluster-scoped peering object, also when watching only some namespaces; kopf
            # does not create it, and without it replicas would not coordinate.
            settings.peering.clusterwide = True
        if not settings.peering.standalone and create_peering:
            memo.api.create(kube.PEERINGS, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                                            "metadata": {"name": settings.peering.name}})

    @kopf.on.resume(**resource, registry=registry)
    @kopf.on.create(**resource, registry=registry)
    @kopf.on.update(**resource, field="spec", registry=registry)
    def spec_changed(body: kopf.Body, memo: kopf.Memo, **indexes) -> None:
        _reconcile(body.metadata.namespace, body.metadata.name, memo, indexes)

    # Not a kopf.timer: kopf would put its finalizer on every model (see the module docstring).
    @kopf.on.startup(registry=registry)
    async def start_resync(memo: kopf.Memo, settings: kopf.OperatorSettings, **indexes) -> None:
        memo.resync = _Resync()
        memo.resync.task = asyncio.create_task(_resync_forever(
            resync=memo.resync, memo=memo, indexes=indexes, interval=config.resync_seconds,
            executor=settings.execution.executor))
        memo.resync.analysis = asyncio.create_task(_resync_forever(
            resync=memo.resync, memo=memo, indexes=indexes, interval=ANALYSIS_SECONDS,
            executor=settings.execution.executor, only=_analysing))

    @kopf.on.cleanup(registry=registry)
    async def stop_resync(memo: kopf.Memo, **_) -> None:
        for task in (memo.resync.task, memo.resync.analysis):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @kopf.index(**resource, id=MODELS_INDEX, registry=registry)
    def models(namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_) -> dict:
        memo.resync.handler_context = contextvars.copy_context()  # before the task can see a model
        return {(namespace, name): _trimmed(body)}

    # `kubectl annotate im NAME modelkiln.io/rollout=promote` (or abort): acted on, then removed.
    @kopf.on.event(**resource, annotations={ro.ANNOTATION: kopf.PRESENT}, registry=registry)
    def rollout_annotated(body: kopf.Body, memo: kopf.Memo, **indexes) -> None:
        _reconcile(body.metadata.namespace, body.metadata.name, memo, indexes)

    # A filter, not a None result: kopf keeps an object's last value when its indexer returns None,
    # but drops the object once it stops matching `when` (a node Ready again).
    @kopf.index("", "v1", "nodes", id=UNREADY_NODES_INDEX, registry=registry,
                when=lambda body, **_: nodes.not_ready(dict(body)) is not None)
    def unready_nodes(name: str, body: kopf.Body, **_) -> dict:
        return {(None, name): dict(body)}

    for child in WATCHED_CHILDREN:
        # Handlers get the index as the keyword argument named by its id (the plural).
        @kopf.index(child.group, child.version, child.plural, id=child.plural, labels=objects.MANAGED_BY,
                    registry=registry)
        def known(namespace: str, name: str, body: kopf.Body, **_) -> dict:
            return {(namespace, name): _trimmed(body)}

    for child in TRIGGERING_CHILDREN:
        @kopf.on.event(child.group, child.version, child.plural, labels=objects.MANAGED_BY, registry=registry)
        def child_changed(body: kopf.Body, memo: kopf.Memo, **indexes) -> None:
            owner = _owner(body)
            if owner:
                _reconcile(body.metadata.namespace, owner, memo, indexes)

    # Not kopf.on.delete: without a finalizer, kopf sees a model only once it is gone.
    @kopf.on.event(**resource, registry=registry)
    def deleted(event: kopf.RawEvent, body: kopf.Body, **_) -> None:
        if event["type"] == "DELETED":
            # Children go with ownerReferences (Kubernetes' garbage collector); only the gauge is ours.
            metrics.record_phase(body.metadata.uid, None)
            _forget(body.metadata.namespace, body.metadata.name)
