"""One reconcile of an InferenceModel: observe, converge the children, compute the status.

Level-triggered: every call looks at the world as it is (the model's status, the conversion Job,
the Deployment) and makes it right, so a create, a spec change, a periodic resync, an operator
restart and a replayed event all run the same code and a replay changes nothing. It reads before
it writes: a child whose live copy carries the digest of the desired object is left alone, and an
autoscaler or budget is deleted only when it exists, so an unchanged model costs no writes (and,
with children read from the watch, `kube.Kube.known`, few reads).
Kubernetes decisions are made by the pure builders and status functions; only `kube` touches the API.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Callable

from modelkiln.operator import analysis, conversion_job, kube, nodes, objects, podmetrics, scaling, serving
from modelkiln.operator import rollout as ro
from modelkiln.operator import status as st
from modelkiln.operator.commands import AUTO, artifact_key, defaulted_spec
from modelkiln.operator.config import OperatorConfig
from modelkiln.operator.devicepools import (CONFIG_KEY, DevicePool, DevicePoolError, conversion_pool,
                                            parse_device_pools, pool_for)

SERVING_FIELDS = ("endpoints", "replicas", "readyReplicas", "selector")


@dataclasses.dataclass
class Result:
    status: dict
    events: list[tuple[str, str, str]]  # (type, reason, message): one per condition transition
    clear_annotation: bool = False  # the rollout annotation was read: remove it


Scrape = Callable[..., list[str]]  # podmetrics.fetch


def reconcile(*, model: dict, api: kube.Kube, config: OperatorConfig, now: str,
              scrape: Scrape = podmetrics.fetch) -> Result:
    """Drive `model` (an InferenceModel as read from the API) one step towards Ready; `scrape` reads
    the serving pods' /metrics while a rollout is analysed."""
    old = model.get("status") or {}
    spec = defaulted_spec(model["spec"])
    key = artifact_key(spec)
    generation = model["metadata"].get("generation", 1)
    pools, pools_error = _device_pools(api=api, config=config)

    pool, pool_error = _conversion_pool(spec=spec, pools=pools, pools_error=pools_error, config=config)
    converted, artifact, job = _converge_conversion(model=model, spec=spec, key=key, old=old, api=api,
                                                     config=config, pool=pool, pool_error=pool_error)
    rollout, action, notes = _converge_rollout(model=model, spec=spec, old=old, artifact=artifact, converted=converted,
                                        api=api, scrape=scrape, now=now)
    artifact = ro.served(rollout, stable=old.get("artifact"), artifact=artifact)
    if pools_error:
        serving_conditions, observed = [st.condition(st.READY, False, reason="NoDevicePool", message=pools_error,
                                                     generation=generation)], _kept_serving_fields(old)
    else:
        serving_conditions, observed = _converge_serving(model=model, spec=spec, artifact=artifact,
                                                         converted=converted, pools=pools, api=api, config=config,
                                                         rollout=rollout)
    if rollout:
        serving_conditions.append(ro.condition(rollout, generation=generation))
    old_conditions = old.get("conditions", [])
    conditions = st.merge_conditions(old_conditions, st.summarize(converted, *serving_conditions), now=now)
    status = {"observedGeneration": generation, "phase": st.phase(conditions), "conditions": conditions,
              "conversionJob": job, **observed}
    if artifact:
        status["artifact"] = artifact
    if rollout:
        status["rollout"] = rollout
    # Ready repeats Converted's reason while there is nothing (new) to serve, and the Rollout
    # condition's during a rollout: one Event says it. Reconciling and Stalled repeat them for
    # kstatus: no Event of their own.
    changed = [c for c in st.transitions(old_conditions, conditions)
               if c["type"] in (st.CONVERTED, st.AUTOSCALING, ro.ROLLOUT)
               or (c["type"] == st.READY and c["reason"] != converted["reason"]
                   and c["reason"] not in ro.READY_REASONS.values())]
    # an autoscaler that cannot run is worth a warning, though the model serves
    events = [("Warning" if c["status"] == "False" and (c["reason"] in st.FAILURE_REASONS | {nodes.NODE_NOT_READY}
                                                        or c["type"] in (st.AUTOSCALING, ro.ROLLOUT)) else "Normal",
               c["reason"], c["message"]) for c in changed]
    events += ro.events(old.get("rollout"), rollout) + notes
    return Result(status=status, events=events, clear_annotation=action is not None)


def _converge_rollout(*, model: dict, spec: dict, old: dict, artifact: dict | None, converted: st.Condition,
                      api: kube.Kube, scrape: Scrape,
                      now: str) -> tuple[dict | None, str | None, list[tuple[str, str, str]]]:
    """(status.rollout, the rollout annotation's value when there is one, an Event when it could
    not be acted on): a rollout started, kept, judged on what the pods measured, or acted on by hand."""
    spec_rollout = spec["serving"].get("rollout") or {}
    rollout = ro.current(previous=old.get("rollout"), spec_rollout=spec_rollout, stable=old.get("artifact"),
                         new=artifact if converted["status"] == "True" else None, now=now)
    action = (model["metadata"].get("annotations") or {}).get(ro.ANNOTATION)
    if action is not None:
        refused = ro.refusal(rollout, action)
        if refused is None:
            return ro.by_hand(rollout, action), action, []
        return rollout, action, [("Warning", "RolloutAnnotationIgnored", refused)]
    if rollout is None or rollout["phase"] != ro.ANALYSING or rollout["startedAt"] == now:
        return rollout, action, []
    meta = model["metadata"]
    pods = api.list(kube.PODS, namespace=meta["namespace"],
                    selector=objects.selector_string(objects.selector_labels(name=meta["name"],
                                                                             component=serving.COMPONENT)))
    plan = ro.serve_plan(model=meta["name"], rollout=rollout, spec_rollout=spec_rollout)
    measured = analysis.measure(scrape(pods, tls="tls" in spec["serving"]), plan=plan)
    decision = analysis.decide(spec_rollout["analysis"], measured, _seconds_between(rollout["startedAt"], now),
                               last_step=ro.last_step(rollout, spec_rollout))
    return ro.judged(rollout, decision, measured=measured, spec_rollout=spec_rollout, now=now), action, []


def _seconds_between(earlier: str, later: str) -> float:
    parse = lambda text: datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return (parse(later) - parse(earlier)).total_seconds()


def _device_pools(*, api: kube.Kube, config: OperatorConfig) -> tuple[dict[str, DevicePool], str | None]:
    source = config.device_pools_source
    configmap = api.get(kube.CONFIGMAPS, namespace=config.namespace, name=config.device_pools_configmap)
    if configmap is None:
        return {}, f"{source} does not exist: create it with a {CONFIG_KEY} key (see manifests/)"
    try:
        return parse_device_pools(configmap.get("data", {}).get(CONFIG_KEY, ""), source=source), None
    except DevicePoolError as exc:
        return {}, str(exc)


def _conversion_pool(*, spec: dict, pools: dict[str, DevicePool], pools_error: str | None,
                     config: OperatorConfig) -> tuple[DevicePool, str | None]:
    """Where the conversion Job runs, or why it cannot: precision Auto measures the candidates
    on the serving device's pool; any other conversion is CPU work for the CPU pool."""
    if spec["conversion"]["precision"] != AUTO:
        return conversion_pool(pools), None
    if pools_error:
        return {}, pools_error
    try:
        return pool_for(pools, device=spec["serving"]["device"], node_pool=spec.get("nodePool"),
                        source=config.device_pools_source)[1], None
    except DevicePoolError as exc:
        return {}, f"precision Auto measures on the serving device's pool: {exc}"


def _describe(artifact: dict) -> str:
    reused = ", reused" if artifact.get("reused") else ""
    described = (f"version {artifact['version']} ({artifact.get('precision')}, "
                 f"{artifact.get('sizeBytes', 0)} bytes{reused}) at {artifact.get('path')}")
    return f"{described}; precision Auto chose {artifact['why']}" if artifact.get("why") else described


def _converge_conversion(*, model: dict, spec: dict, key: str, old: dict, api: kube.Kube, config: OperatorConfig,
                         pool: DevicePool, pool_error: str | None) -> tuple[st.Condition, dict | None, str]:
    """(Converted condition, artifact to serve, conversion Job name); starts the Job when needed.

    The artifact is the one converted from this spec when there is one, else the previous one,
    which keeps serving while the new spec converts (or after its conversion failed).
    """
    meta = model["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation", 1)
    job_name = conversion_job.job_name(name=name, key=key)
    artifact = old.get("artifact")
    # the current spec's artifact, serving or the candidate of a rollout (whose Job may be gone)
    known = next((a for a in (artifact, (old.get("rollout") or {}).get("candidateArtifact"))
                  if a and a.get("key") == key), None)
    if known:
        return st.condition(st.CONVERTED, True, reason="ConversionSucceeded", message=_describe(known),
                            generation=generation), known, job_name
    job = api.get(kube.JOBS, namespace=namespace, name=job_name)
    if job is None:
        before = st.find(old.get("conditions", []), st.CONVERTED)
        if old.get("conversionJob") == job_name and before and before.get("reason") == "ConversionFailed":
            # The failed Job outlived its TTL; the failure stands until the spec changes.
            return st.condition(st.CONVERTED, False, reason="ConversionFailed", message=before["message"],
                                generation=generation), artifact, job_name
        if pool_error:
            return st.condition(st.CONVERTED, False, reason="NoDevicePool", message=pool_error,
                                generation=generation), artifact, job_name
        if api.get(kube.CLAIMS, namespace=namespace, name=config.repository_claim) is None:
            return st.condition(st.CONVERTED, False, reason="RepositoryMissing", generation=generation,
                                message=f"PersistentVolumeClaim {config.repository_claim} (the model "
                                        f"repository) does not exist in namespace {namespace}"), \
                artifact, job_name
        job = api.create(kube.JOBS, conversion_job.build_job(
            model=model, spec=spec, key=key, image=config.converter_image,
            repository_claim=config.repository_claim, pool=pool))
    pods = api.list(kube.PODS, namespace=namespace, selector=f"job-name={job_name}")
    outcome = conversion_job.conversion_outcome(job=job, pods=pods)
    if outcome["state"] == "running":
        reason = outcome["message"] or _mount_hint(spec, pods)
        waiting = f" and waits: {reason}" if reason else ""
        return st.condition(st.CONVERTED, False, reason="Converting", generation=generation,
                            message=f"conversion Job {job_name} is running{waiting}"), artifact, job_name
    if outcome["state"] == "failed":
        return st.condition(st.CONVERTED, False, reason="ConversionFailed", message=outcome["message"],
                            generation=generation), artifact, job_name
    summary = outcome["summary"]
    artifact = {"key": key, "version": summary["version"], "precision": summary.get("precision"),
                "sha256": summary.get("sha256"), "sizeBytes": summary.get("sizeBytes"),
                "path": summary.get("path"), "reused": bool(summary.get("reused"))}
    if "retention" in summary:
        artifact["keptVersions"] = summary["retention"]["kept"]
    if "auto" in summary:
        auto = summary["auto"]
        artifact.update(chosen=auto["chosen"], inferencePrecision=summary["inferencePrecision"], why=auto["why"],
                        # the status schema has no nulls: a row without top-1 (an encoder) leaves it out
                        candidates=[{k: v for k, v in row.items() if v is not None} for row in auto["candidates"]])
    return st.condition(st.CONVERTED, True, reason="ConversionSucceeded", message=_describe(artifact),
                        generation=generation), artifact, job_name


def _mount_hint(spec: dict, pods: list[dict]) -> str:
    """A pod that cannot mount a volume shows no reason (only Events do, which the operator does
    not read); when it mounts the user's CA ConfigMap, name it: a missing one keeps it there."""
    ca = spec["source"].get("caConfigMap")
    creating = any(status.get("state", {}).get("waiting", {}).get("reason") == "ContainerCreating"
                   for pod in pods for status in pod.get("status", {}).get("containerStatuses", []))
    return (f"its pod is starting; it mounts ConfigMap {ca['name']} (spec.source.caConfigMap) and "
            f"waits here while that does not exist" if ca and creating else "")


def _kept_serving_fields(old: dict) -> dict:
    return {field: old[field] for field in SERVING_FIELDS if field in old}


def _converge_serving(*, model: dict, spec: dict, artifact: dict | None, converted: st.Condition,
                      pools: dict[str, DevicePool], api: kube.Kube, config: OperatorConfig,
                      rollout: dict | None = None) -> tuple[list[st.Condition], dict]:
    """([Ready, and Autoscaling when asked for], observed serving status); applies the serving
    objects when there is an artifact (both versions while `rollout` is analysed)."""
    meta = model["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation", 1)
    if artifact is None:
        return [st.condition(st.READY, False, reason=converted["reason"], generation=generation,
                             message=f"nothing to serve yet: {converted['message']}")], {}
    serving_spec = spec["serving"]
    try:
        _, pool = pool_for(pools, device=serving_spec["device"], node_pool=spec.get("nodePool"),
                           source=config.device_pools_source)
    except DevicePoolError as exc:
        return [st.condition(st.READY, False, reason="NoDevicePool", message=str(exc), generation=generation)], {}
    autoscaling = serving_spec.get("autoscaling")
    keda = api.serves(kube.SCALED_OBJECTS)
    plan = scaling.plan(autoscaling, keda=keda, http_add_on=keda and api.serves(kube.INTERCEPTOR_ROUTES),
                        prometheus_url=config.scaling.prometheus_url)
    replicas = (None if plan.autoscaler else
                scaling.fixed_replicas(autoscaling) if autoscaling else serving.min_replicas(serving_spec))
    deployment = _apply(api, kube.DEPLOYMENTS, serving.build_deployment(
        model=model, spec=spec, artifact=artifact, image=config.server_image,
        repository_claim=config.repository_claim, pool=pool, replicas=replicas,
        rollout=ro.serve_plan(model=name, rollout=rollout, spec_rollout=serving_spec["rollout"])
        if rollout and rollout["phase"] == ro.ANALYSING else None))
    tls = "tls" in serving_spec
    _converge_services(api, model=model, tls=tls, plan=plan, config=config)
    _converge_autoscaler(api, model=model, autoscaling=autoscaling, plan=plan, config=config)
    wanted = serving.min_replicas(serving_spec) if plan.autoscaler else replicas
    if wanted > 1:
        _apply(api, kube.DISRUPTION_BUDGETS, serving.build_pdb(model=model))
    else:
        _remove(api, kube.DISRUPTION_BUDGETS, namespace=namespace, name=name)

    if converted["status"] == "True":
        ready = _explain_from_pods(api, st.ready_from_deployment(deployment, wanted=wanted,
                                                                 generation=generation), deployment)
        if rollout:
            ready = ro.ready(rollout, ready, generation=generation)
    else:
        # The previous artifact keeps serving, but this spec is not in effect (kstatus: not Ready).
        ready = st.condition(st.READY, False, reason=converted["reason"], generation=generation,
                             message=f"serving version {artifact['version']} of an earlier spec; "
                                     f"{converted['message']}")
    conditions = [ready]
    if plan.condition:
        ok, reason, message = plan.condition
        conditions.append(st.condition(st.AUTOSCALING, ok, reason=reason, message=message, generation=generation))
    observed = deployment.get("status", {})
    return conditions, {
        "endpoints": serving.endpoints(name=name, namespace=namespace, tls=tls,
                                       through_interceptor=plan.through_interceptor),
        "replicas": observed.get("replicas", 0), "readyReplicas": observed.get("readyReplicas", 0),
        "selector": objects.selector_string(deployment["spec"]["selector"]["matchLabels"])}


def _converge_services(api: kube.Kube, *, model: dict, tls: bool, plan: scaling.Plan,
                       config: OperatorConfig) -> None:
    """The model's Service (to its pods, or a name for the interceptor), its headless twin, and the
    interceptor's `-pods` Service while the model scales to zero."""
    name, namespace = model["metadata"]["name"], model["metadata"]["namespace"]
    if plan.through_interceptor:
        _apply(api, kube.SERVICES, serving.build_service(model=model, pods=True))
        _apply(api, kube.SERVICES, serving.build_interceptor_service(model=model,
                                                                     interceptor=config.scaling.interceptor))
    else:
        _apply(api, kube.SERVICES, serving.build_service(model=model, tls=tls))
        _remove(api, kube.SERVICES, namespace=namespace, name=serving.pods_name(name))
    _apply(api, kube.SERVICES, serving.build_service(model=model, headless=True, tls=tls))


def _converge_autoscaler(api: kube.Kube, *, model: dict, autoscaling: dict | None, plan: scaling.Plan,
                         config: OperatorConfig) -> None:
    """The plan's autoscaler and routes; whatever an earlier spec had and this one does not, removed."""
    name, namespace = model["metadata"]["name"], model["metadata"]["namespace"]
    if plan.autoscaler == scaling.HPA:
        _apply(api, kube.AUTOSCALERS, scaling.build_hpa(model=model, autoscaling=autoscaling))
    else:  # KEDA makes its own HPA for a ScaledObject: ours would fight it
        _remove(api, kube.AUTOSCALERS, namespace=namespace, name=name)
    if plan.autoscaler == scaling.SCALED_OBJECT:
        _apply(api, kube.SCALED_OBJECTS, scaling.build_scaled_object(
            model=model, autoscaling=autoscaling, config=config.scaling, to_zero=plan.through_interceptor))
    else:
        _remove(api, kube.SCALED_OBJECTS, namespace=namespace, name=name)
    if plan.through_interceptor:
        for route in scaling.build_interceptor_routes(model=model, autoscaling=autoscaling,
                                                      pods_service=serving.pods_name(name)):
            _apply(api, kube.INTERCEPTOR_ROUTES, route)
    else:
        for route in scaling.route_names(name):
            _remove(api, kube.INTERCEPTOR_ROUTES, namespace=namespace, name=route)


def _explain_from_pods(api: kube.Kube, ready: st.Condition, deployment: dict) -> st.Condition:
    """`ready`, as the serving pods show it: not Ready while one runs on a node that is not Ready
    (NodeNotReady, naming the node), and with why a pod waits (no node of the pool has room, image
    pull, ...) while replicas are missing. The pods are read only then: a Ready model whose pool's
    nodes are Ready costs no read."""
    unready = nodes.in_pool(api.indexed(kube.NODES), deployment["spec"]["template"]["spec"].get("nodeSelector"))
    if ready["status"] == "True" and not unready:
        return ready
    pods = api.list(kube.PODS, namespace=deployment["metadata"]["namespace"],
                    selector=objects.selector_string(deployment["spec"]["selector"]["matchLabels"]))
    lost = nodes.lost_pods(pods, unready)
    if lost:
        return {**ready, "status": "False", "reason": nodes.NODE_NOT_READY, "message": nodes.describe(lost)}
    waiting = "" if ready["status"] == "True" else objects.waiting_reason(pods)
    return {**ready, "message": f"{ready['message']}; a pod waits: {waiting}"} if waiting else ready


def _apply(api: kube.Kube, resource: kube.Resource, body: dict) -> dict:
    """The live object, applied first unless it already carries the digest of `body`.

    A change someone else makes to a field we set is undone at the next change of the model:
    the digest covers what we asked for, not what the object holds now.
    """
    desired = objects.with_digest(body)
    meta = body["metadata"]
    for fresh in (False, True):  # what the watch saw, then (before writing) what is stored now
        live = api.get(resource, namespace=meta["namespace"], name=meta["name"], fresh=fresh)
        if live is not None and objects.digest(live) == objects.digest(desired):
            return live
    return api.apply(resource, desired)


def _remove(api: kube.Kube, resource: kube.Resource, *, namespace: str, name: str) -> None:
    """Delete our object `name` if it exists (an object of that name we do not own is not ours to delete)."""
    live = api.get(resource, namespace=namespace, name=name)
    if live is not None and objects.MANAGED_BY.items() <= (live["metadata"].get("labels") or {}).items():
        api.delete(resource, namespace=namespace, name=name)
