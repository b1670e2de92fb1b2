"""The serving objects of an InferenceModel: Deployment, Services, disruption budget (its
autoscaler: scaling.py).

Pure builders: the spec, the artifact to serve and the device pool in, new dicts out. The
operator applies them with server-side apply, so a field dropped here (say the GPU's extended
resource after a switch to CPU) is dropped from the live object too.
"""

from __future__ import annotations

from modelkiln.operator import objects
from modelkiln.operator.commands import defaulted_spec, serve_args
from modelkiln.operator.devicepools import DevicePool, pod_defaults

COMPONENT = "serving"
HTTP_PORT = 8080
GRPC_PORT = 8081
CACHE_PATH = "/var/cache/modelkiln"
DRAIN_SECONDS = 30
# Before SIGTERM: the Service's endpoints drop the pod first (kube-proxy, client-side balancers),
# so no new connection reaches a server that has stopped listening.
PRESTOP_SECONDS = 5
TLS_DIR = "/etc/modelkiln/tls"
TOKEN_DIR = "/etc/modelkiln/auth"
TOKEN_FILE = "tokens"
SECRET_FILE_MODE = 0o440  # the key and tokens: readable by the pod's fsGroup only


def min_replicas(serving: dict) -> int:
    """The replicas the model must keep: the autoscaler's floor, else `replicas` (default 1)."""
    if "autoscaling" in serving:
        return serving["autoscaling"]["minReplicas"]
    return serving.get("replicas", 1)


def headless_name(name: str) -> str:
    return f"{name}-headless"


def pods_name(name: str) -> str:
    """The Service straight to the pods of a model whose own Service names the interceptor."""
    return f"{name}-pods"


def endpoints(*, name: str, namespace: str, tls: bool = False, through_interceptor: bool = False) -> dict[str, str]:
    """What clients call. Through the HTTP add-on's interceptor (scale to zero), gRPC shares its one
    port with REST (HTTP/2 and HTTP/1.1 on 8080)."""
    host = f"{name}.{namespace}.svc"
    return {"rest": f"{'https' if tls else 'http'}://{host}:{HTTP_PORT}",
            "grpc": f"{host}:{HTTP_PORT if through_interceptor else GRPC_PORT}"}


def _probe(path: str, *, period: int, failures: int, tls: bool) -> dict:
    # the kubelet does not verify the certificate of an HTTPS probe
    return {"httpGet": {"path": path, "port": "http", "scheme": "HTTPS" if tls else "HTTP"},
            "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 2}


def _access(serving: dict) -> tuple[list[str], list[dict], list[dict]]:
    """The serve flags, mounts and volumes of spec.serving.tls and .auth (Secrets, read-only)."""
    args, mounts, volumes = [], [], []
    if "tls" in serving:
        args += ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"]
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {
            "secretName": serving["tls"]["secretName"], "defaultMode": SECRET_FILE_MODE,
            "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}})
    if "auth" in serving:
        secret = serving["auth"]["tokenSecret"]
        args += ["--auth-token-file", f"{TOKEN_DIR}/{TOKEN_FILE}"]
        # the directory, not a subPath: the kubelet then updates the file when the Secret changes
        mounts.append({"name": "auth-token", "mountPath": TOKEN_DIR, "readOnly": True})
        volumes.append({"name": "auth-token", "secret": {
            "secretName": secret["name"], "defaultMode": SECRET_FILE_MODE,
            "items": [{"key": secret["key"], "path": TOKEN_FILE}]}})
    return args, mounts, volumes


def _resources(serving: dict, pool: DevicePool) -> dict:
    # The model's own resources, else its pool's defaults: never a mix (a pool's limit could sit
    # below the model's request).
    wanted = serving.get("resources", {})
    if not (wanted.get("requests") or wanted.get("limits")):
        wanted = pod_defaults(pool, "serving").get("resources", {})
    resources = {kind: dict(wanted[kind]) for kind in ("requests", "limits") if wanted.get(kind)}
    if pool.get("resource"):
        # Extended resources are requested through limits (requests follow); one device per pod.
        resources.setdefault("limits", {})[pool["resource"]] = 1
    return resources


def _rollout(pool: DevicePool) -> dict:
    if pool.get("resource"):
        # Accelerators are counted: a surge pod would wait for a free device that all pods hold.
        return {"maxUnavailable": 1, "maxSurge": 0}
    # Never below the wanted count: a new pod is Ready only once its model is loaded.
    return {"maxUnavailable": 0, "maxSurge": 1}


def build_deployment(*, model: dict, spec: dict, artifact: dict, image: str, repository_claim: str,
                     pool: DevicePool, replicas: int | None, rollout: dict | None = None) -> dict:
    """Deployment `<name>` serving `artifact` (from status.artifact) with the server image; `replicas`
    None leaves the count to an autoscaler; `rollout` (rollout.serve_plan's) serves both its versions."""
    name = model["metadata"]["name"]
    serving = spec["serving"]
    args = serve_args(name=name, spec=spec, repository=objects.REPOSITORY_PATH, version=artifact["version"],
                      chosen_precision=artifact.get("inferencePrecision"), rollout=rollout)
    # the CRD's default token key applied
    access_args, access_mounts, access_volumes = _access(defaulted_spec(spec)["serving"])
    tls = "tls" in serving
    ready_path = f"/v2/models/{name}/ready"
    container = {
        "name": "runtime",
        "image": image,
        "command": ["modelkiln"],
        "args": ["serve", *args, "--http-port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT),
                 "--cache-dir", CACHE_PATH, "--drain-timeout", str(DRAIN_SECONDS), *access_args],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}],
        # Compiling a large model for a GPU can take minutes: the startup probe allows 10. It asks
        # every second, so that a new pod (a scale-up) joins the Service as soon as its model is
        # loaded, not up to a period later (BENCHMARKS.md: Ready 4 s after the container started
        # with a 5 s period, for a model loaded in 0.1 s).
        "startupProbe": _probe(ready_path, period=1, failures=600, tls=tls),
        "readinessProbe": _probe(ready_path, period=5, failures=2, tls=tls),
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3, tls=tls),
        "resources": _resources(serving, pool),
        "volumeMounts": [
            # Only this model's directory, read-only: a serving pod cannot touch other artifacts.
            {"name": "repository", "mountPath": f"{objects.REPOSITORY_PATH}/{name}", "subPath": name,
             "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "cache", "mountPath": CACHE_PATH},
            *access_mounts,
        ],
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "securityContext": objects.container_security_context(),
    }
    selector = objects.selector_labels(name=name, component=COMPONENT)
    scratch = pod_defaults(pool, "serving")["emptyDirSizeLimit"]
    deployment_spec = {
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": _rollout(pool)},
        "template": {
            "metadata": {
                "labels": objects.labels(name=name, component=COMPONENT),
                "annotations": {"modelkiln.io/artifact-key": artifact["key"],
                                "modelkiln.io/artifact-version": str(artifact["version"]),
                                "prometheus.io/scrape": "true", "prometheus.io/port": str(HTTP_PORT),
                                "prometheus.io/path": "/metrics",
                                **({"prometheus.io/scheme": "https"} if tls else {})},
            },
            "spec": objects.pod_spec(
                containers=[container],
                volumes=[objects.repository_volume(claim=repository_claim, read_only=True),
                         objects.scratch_volume("tmp", size_limit=scratch),
                         objects.scratch_volume("cache", size_limit=scratch),
                         *access_volumes],
                pool=pool, terminationGracePeriodSeconds=PRESTOP_SECONDS + DRAIN_SECONDS + 15),
        },
    }
    if replicas is not None:
        # With an autoscaler the replica count is the autoscaler's: leaving it out hands the field over.
        deployment_spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": objects.metadata(model=model, name=name, component=COMPONENT),
            "spec": deployment_spec}


def build_service(*, model: dict, headless: bool = False, tls: bool = False, pods: bool = False) -> dict:
    """Service `<name>` (load-balanced), its headless twin for client-side gRPC balancing, or (`pods`)
    `<name>-pods`, the interceptor's way to the pods of a model scaled to zero."""
    name = model["metadata"]["name"]
    spec = {
        "selector": objects.selector_labels(name=name, component=COMPONENT),
        "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP",
                   "appProtocol": "https" if tls else "http"},
                  # the HTTP add-on speaks HTTP/2 to a backend only on a port marked h2c
                  {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                   "appProtocol": "kubernetes.io/h2c" if pods else "grpc"}],
    }
    if headless:
        # DNS returns the ready pods' addresses; gRPC clients balance over them themselves.
        spec["clusterIP"] = "None"
    service_name = headless_name(name) if headless else pods_name(name) if pods else name
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": objects.metadata(model=model, name=service_name, component=COMPONENT),
            "spec": spec}


def build_interceptor_service(*, model: dict, interceptor: str) -> dict:
    """Service `<name>` of a model scaled to zero: a DNS name (CNAME) for the HTTP add-on's
    interceptor, which routes by the Host clients send and holds requests while no pod is Ready."""
    name = model["metadata"]["name"]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": objects.metadata(model=model, name=name, component=COMPONENT),
            "spec": {"type": "ExternalName", "externalName": interceptor,
                     "ports": [{"name": "http", "port": HTTP_PORT, "protocol": "TCP", "appProtocol": "http"}]}}


def build_pdb(*, model: dict) -> dict:
    """A PodDisruptionBudget letting a drain take one serving pod at a time."""
    name = model["metadata"]["name"]
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": objects.metadata(model=model, name=name, component=COMPONENT),
            "spec": {"maxUnavailable": 1,
                     "selector": {"matchLabels": objects.selector_labels(name=name, component=COMPONENT)}}}
