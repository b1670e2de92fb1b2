"""The one module that talks to the Kubernetes API (besides kopf, which watches and patches status).

Objects travel as plain dicts, as the builders make them. Writes are idempotent: `apply` is
server-side apply (creates, updates, and removes fields we stopped setting),
`create` takes "already exists" as done, `delete` takes "already gone" as done. Whether a write is
needed at all is the caller's decision (flows reads before it writes): an apply that changes
nothing is still a request the API server has to process.

PERMISSIONS lists every (resource, verb) this module may use and every request is checked against
it, so the operator's ClusterRole (manifests/rbac.yaml) can grant exactly these, and a test keeps
the two equal.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping

import kubernetes
import urllib3

from modelkiln.operator.schema import GROUP, PLURAL, VERSION

FIELD_MANAGER = "modelkiln-operator"


@dataclasses.dataclass(frozen=True)
class Resource:
    group: str  # "" for the core API
    version: str
    plural: str  # "plural/subresource" for a subresource, as RBAC names it
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None) -> str:
        plural, _, subresource = self.plural.partition("/")
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        path = f"{base}/namespaces/{namespace}/{plural}" if self.namespaced else f"{base}/{plural}"
        path = f"{path}/{name}" if name else path
        return f"{path}/{subresource}" if subresource else path


MODELS = Resource(GROUP, VERSION, PLURAL)
MODEL_STATUS = Resource(GROUP, VERSION, f"{PLURAL}/status")
JOBS = Resource("batch", "v1", "jobs")
PODS = Resource("", "v1", "pods")
DEPLOYMENTS = Resource("apps", "v1", "deployments")
SERVICES = Resource("", "v1", "services")
AUTOSCALERS = Resource("autoscaling", "v2", "horizontalpodautoscalers")
DISRUPTION_BUDGETS = Resource("policy", "v1", "poddisruptionbudgets")
CLAIMS = Resource("", "v1", "persistentvolumeclaims")
CONFIGMAPS = Resource("", "v1", "configmaps")
PEERINGS = Resource("kopf.dev", "v1", "clusterkopfpeerings", namespaced=False)
# Watched by kopf (an index of the nodes that are not Ready), never requested by this module.
NODES = Resource("", "v1", "nodes", namespaced=False)
# KEDA's and its HTTP add-on's, when the cluster has them (`Kube.serves`)
SCALED_OBJECTS = Resource("keda.sh", "v1alpha1", "scaledobjects")
INTERCEPTOR_ROUTES = Resource("http.keda.sh", "v1beta1", "interceptorroutes")

# Read before write; server-side apply may create the object: the API server asks for `create`
# and `patch` then.
_APPLY = frozenset({"get", "create", "patch"})
PERMISSIONS: dict[Resource, frozenset[str]] = {
    MODELS: frozenset({"patch"}),  # the rollout annotation is removed once acted on (a reconcile
    # reads the model from kopf's watch)
    MODEL_STATUS: frozenset({"patch"}),
    JOBS: frozenset({"get", "create"}),
    PODS: frozenset({"list"}),
    DEPLOYMENTS: _APPLY,
    SERVICES: _APPLY | {"delete"},  # a model back from scale to zero drops its -pods Service
    AUTOSCALERS: _APPLY | {"delete"},
    SCALED_OBJECTS: _APPLY | {"delete"},
    INTERCEPTOR_ROUTES: _APPLY | {"delete"},
    DISRUPTION_BUDGETS: _APPLY | {"delete"},
    CLAIMS: frozenset({"get"}),
    PEERINGS: frozenset({"create", "get"}),  # the operator makes sure its peering object exists
}
# Read in the operator's own namespace only (a Role, not the ClusterRole).
NAMESPACED_PERMISSIONS: dict[Resource, frozenset[str]] = {CONFIGMAPS: frozenset({"get"})}


class KubeError(Exception):
    """The API refused a request; the message carries the API server's own explanation."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Unreachable(Exception):
    """No answer from the API server (connection refused or reset, a timeout): it is down or
    restarting, nothing is wrong with the request."""


# Objects by (namespace, name), each a collection of (at most one) object: kopf's indexes.
Known = Mapping[tuple[str, str], Iterable[dict]]

# How long an answer is trusted, for what every reconcile reads and the operator does not watch:
# API discovery (CRDs come and go rarely) and its own ConfigMap of device pools (a thousand
# models resynced every 10 s would read it a hundred times a second).
DISCOVERY_SECONDS = 60.0
CONFIGMAP_SECONDS = 5.0


class Recent:
    """Answers reused for a while, shared by the clients that `Kube.knowing` makes."""

    def __init__(self) -> None:
        self._answers: dict[tuple, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, *, seconds: float, ask: Callable[[], object]) -> object:
        with self._lock:
            known = self._answers.get(key)
        if known is not None and time.monotonic() - known[0] < seconds:
            return known[1]
        answer = ask()
        with self._lock:
            self._answers[key] = (time.monotonic(), answer)
        return answer


class Kube:
    """Requests to the API server through a configured `kubernetes.client.ApiClient`.

    `known` holds, for the resources the operator watches, the objects as the watch last saw
    them: `get` answers from there instead of asking the API server again, and ConfigMaps from
    an answer at most CONFIGMAP_SECONDS old.
    """

    def __init__(self, client: kubernetes.client.ApiClient, *, known: Mapping[Resource, Known] | None = None,
                 recent: Recent | None = None) -> None:
        self.client = client
        self.known = dict(known or {})
        self.recent = recent or Recent()

    def knowing(self, known: Mapping[Resource, Known]) -> Kube:
        """This client, answering `get` from `known` for the resources it has."""
        return Kube(self.client, known=known, recent=self.recent)

    def indexed(self, resource: Resource) -> list[dict]:
        """Every object of `resource` that the watch holds (whatever kopf's index keeps)."""
        return [obj for objects in self.known.get(resource, {}).values() for obj in objects]

    def serves(self, resource: Resource) -> bool:
        """Whether the API server serves `resource` (its CRD is installed), from a recent answer."""
        return self.recent.get(("serves", resource), seconds=DISCOVERY_SECONDS, ask=lambda: self.discover(resource))

    def discover(self, resource: Resource) -> bool:
        """Asks GET /apis/GROUP/VERSION, which lists the group version's resources (any user may: system:discovery)."""
        plural = resource.plural.partition("/")[0]
        base = f"/api/{resource.version}" if not resource.group else f"/apis/{resource.group}/{resource.version}"
        found = self._call("GET", base, missing_ok=True)
        return any(r.get("name") == plural for r in (found or {}).get("resources", []))

    @classmethod
    def from_environment(cls) -> Kube:
        """In a pod, the ServiceAccount; elsewhere, KUBECONFIG or ~/.kube/config."""
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        return cls(kubernetes.client.ApiClient())

    def get(self, resource: Resource, *, namespace: str | None, name: str, fresh: bool = False) -> dict | None:
        """The object, or None when it does not exist; from the watch unless `fresh` or not watched.

        A watched object may lag behind a write made a moment ago: check `fresh` before writing.
        """
        if not fresh and resource in self.known:
            return next(iter(self.known[resource].get((namespace, name), ())), None)
        ask = lambda: self._request("GET", "get", resource, resource.path(namespace, name), missing_ok=True)  # noqa: E731
        if not fresh and resource == CONFIGMAPS:
            return self.recent.get(("get", resource, namespace, name), seconds=CONFIGMAP_SECONDS, ask=ask)
        return ask()

    def list(self, resource: Resource, *, namespace: str, selector: str) -> list[dict]:
        found = self._request("GET", "list", resource, resource.path(namespace),
                              query={"labelSelector": selector})
        return found["items"]

    def create(self, resource: Resource, body: dict) -> dict:
        """Create `body`; when it exists already, the existing object."""
        meta = body["metadata"]
        created = self._request("POST", "create", resource, resource.path(meta.get("namespace")), body=body,
                                exists_ok=True)
        return created or self.get(resource, namespace=meta.get("namespace"), name=meta["name"], fresh=True)

    def apply(self, resource: Resource, body: dict) -> dict:
        """Server-side apply `body` as the operator's field manager (forcing over conflicts)."""
        meta = body["metadata"]
        return self._request("PATCH", "patch", resource, resource.path(meta["namespace"], meta["name"]),
                             body=body, content_type="application/apply-patch+yaml",
                             query={"fieldManager": FIELD_MANAGER, "force": "true"})

    def merge_patch(self, resource: Resource, *, namespace: str, name: str, patch: dict) -> dict:
        """JSON merge patch (RFC 7396): only the fields in `patch`; a None removes a field."""
        return self._request("PATCH", "patch", resource, resource.path(namespace, name), body=patch,
                             content_type="application/merge-patch+json")

    def delete(self, resource: Resource, *, namespace: str, name: str) -> None:
        self._request("DELETE", "delete", resource, resource.path(namespace, name), missing_ok=True,
                      query={"propagationPolicy": "Background"})

    def _request(self, method: str, verb: str, resource: Resource, path: str, *, body: dict | None = None,
                 query: dict | None = None, content_type: str = "application/json",
                 missing_ok: bool = False, exists_ok: bool = False) -> dict | None:
        allowed = PERMISSIONS.get(resource, frozenset()) | NAMESPACED_PERMISSIONS.get(resource, frozenset())
        if verb not in allowed:
            raise PermissionError(f"{verb} {resource.plural} is not in kube.PERMISSIONS (nor in the RBAC rules)")
        return self._call(method, path, body=body, query=query, content_type=content_type, missing_ok=missing_ok,
                          exists_ok=exists_ok)

    def _call(self, method: str, path: str, *, body: dict | None = None, query: dict | None = None,
              content_type: str = "application/json", missing_ok: bool = False,
              exists_ok: bool = False) -> dict | None:
        if query:
            path += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, _ = self.client.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body,
            auth_settings=["BearerToken"])
        try:
            response = self.client.call_api(method, url, headers, body, _request_timeout=30)
            data = response.read()
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise Unreachable(f"the API server {self.client.configuration.host} does not answer: {reason}") from exc
        if response.status == 404 and missing_ok or response.status == 409 and exists_ok:
            return None
        if response.status >= 400:
            raise KubeError(response.status, _explanation(data))
        return json.loads(data) if data else None


def _explanation(data: bytes) -> str:
    try:
        return json.loads(data).get("message") or data.decode(errors="replace")
    except (ValueError, AttributeError):
        return data.decode(errors="replace")
