"""The scaling components clusters already run, on the real-node e2e cluster.

`build-autoscaling.sh` builds them from the Go module proxy with their projects' own manifests;
here they are installed as a user would install them, with this machine's images:
- CoreDNS (kube-dns): the interceptor and KEDA reach Services by name. It answers only for
  cluster.local (no `forward`): no pod can resolve, so reach, a name outside the cluster.
- metrics-server (its `manifests/base`), feeding the HPA's CPU utilization;
- KEDA (operator and metrics API server, `config/`; no admission webhooks, which need a third
  binary and guard only against mistakes the tests do not make);
- KEDA's HTTP add-on (interceptor and external scaler; CRDs);
- Prometheus, as a host process on the node's bridge, scraping the serving pods as the chart's
  PodMonitor would (port `http`, /metrics, `namespace` and `pod` labels).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

import control_plane as cp
import real_node as rn

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-autoscaling.sh"
IMAGE_REPO = "localhost/modelkiln-e2e"
IMAGES = ("metrics-server", "coredns", "keda", "keda-adapter", "interceptor", "scaler")
DNS_IP = "10.96.0.10"  # in the control plane's Service range, as kubeadm picks it
DNS_PORT = 1053  # CoreDNS runs without capabilities: an unprivileged port behind the Service's 53
PROMETHEUS_URL = f"http://{rn.GATEWAY}:9090"  # where KEDA's pods reach it
KEDA_NAMESPACE = "keda"


def build() -> Path:
    """Run the build script (a no-op when its cache is complete); return its directory."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def aggregation_args(pki: Path) -> tuple[str, ...]:
    """kube-apiserver flags of the aggregation layer (metrics.k8s.io, external.metrics.k8s.io):
    a front-proxy CA and the client certificate the API server proxies with."""
    pki.mkdir(parents=True, exist_ok=True)
    ca, client = pki / "front-proxy-ca", pki / "front-proxy-client"

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=front-proxy-ca",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=front-proxy-client",
            "-keyout", f"{client}.key", "-out", f"{client}.csr")
    openssl("x509", "-req", "-in", f"{client}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-out", f"{client}.crt")
    return (f"--requestheader-client-ca-file={ca}.crt", "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={client}.crt", f"--proxy-client-key-file={client}.key",
            # to the extension servers' pod addresses: the API server runs on the host, not on a node
            "--enable-aggregator-routing=true")


def _kustomize(kubectl: cp.Kubectl, *dirs: Path) -> list[dict]:
    """`kubectl kustomize` of the projects' own kustomizations `dirs`, as one list of objects."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(d, tmp) for d in dirs]}))  # kustomize refuses absolute paths
        text = kubectl.run("kustomize", tmp, "--load-restrictor=LoadRestrictionsNone").stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _containers(docs: list[dict], name: str):
    for doc in docs:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == name:
            yield from doc["spec"]["template"]["spec"]["containers"]


def _use_local_image(docs: list[dict], deployment: str, image: str, *, args: list[str] = ()) -> None:
    """Run `deployment` from our image of `image` (imported into the node, never pulled), with `args` added."""
    containers = list(_containers(docs, deployment))
    assert containers, f"no Deployment {deployment} in the project's manifests"
    container = containers[0]
    container.update(image=f"{IMAGE_REPO}/{image}:e2e", imagePullPolicy="Never")
    container.pop("command", None)  # the image's entrypoint is the binary itself
    container["args"] = [*container.get("args", []), *args]


def coredns() -> list[dict]:
    """CoreDNS as kube-dns (CoreDNS ships no Kubernetes manifests of its own; these follow kubeadm's)."""
    labels = {"k8s-app": "kube-dns"}
    meta = {"name": "coredns", "namespace": "kube-system"}
    corefile = f""".:{DNS_PORT} {{
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
    loop
}}
"""
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", **meta}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": corefile}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "serviceAccountName": "coredns", "dnsPolicy": "Default",
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "coredns", "image": f"{IMAGE_REPO}/coredns:e2e", "imagePullPolicy": "Never",
                    "args": ["-conf", "/etc/coredns/Corefile"],
                    "ports": [{"name": "dns", "containerPort": DNS_PORT, "protocol": "UDP"},
                              {"name": "dns-tcp", "containerPort": DNS_PORT, "protocol": "TCP"}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                    "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                    "resources": {"requests": {"cpu": "50m", "memory": "70Mi"}, "limits": {"memory": "170Mi"}},
                    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}]}],
                "volumes": [{"name": "config", "configMap": {"name": "coredns"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system",
                                                               "labels": labels},
         "spec": {"clusterIP": DNS_IP, "selector": labels,
                  "ports": [{"name": "dns", "port": 53, "targetPort": DNS_PORT, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "targetPort": DNS_PORT, "protocol": "TCP"}]}},
    ]


def metrics_server(components: Path, kubectl: cp.Kubectl) -> list[dict]:
    docs = _kustomize(kubectl, components / "config" / "metrics-server" / "base")
    # Test only: the node's kubelet serves a self-signed certificate (a real cluster signs it).
    _use_local_image(docs, "metrics-server", "metrics-server", args=["--kubelet-insecure-tls"])
    return docs


def keda(components: Path, kubectl: cp.Kubectl) -> list[dict]:
    config = components / "config" / "keda"
    docs = _kustomize(kubectl, *(config / d for d in ("crd", "general", "rbac", "manager", "metrics-server",
                                                       "service_account")))
    _use_local_image(docs, "keda-operator", "keda", args=["--enable-webhook-patching=false"])
    _use_local_image(docs, "keda-metrics-apiserver", "keda-adapter")
    return docs


def http_add_on(components: Path, kubectl: cp.Kubectl) -> list[dict]:
    config = components / "config" / "http-add-on"
    docs = _kustomize(kubectl, *(config / d for d in ("crd", "interceptor", "scaler")))
    # The interceptor's own ScaledObject would scale it on its load: one interceptor is enough here.
    docs = [d for d in docs if d["kind"] != "ScaledObject"]
    _use_local_image(docs, "keda-add-ons-http-interceptor", "interceptor")
    _use_local_image(docs, "keda-add-ons-http-scaler", "scaler")
    return docs


def prometheus_config(kubeconfig: Path) -> dict:
    """Scrape every serving pod as the chart's PodMonitor does."""
    return {"global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
            "scrape_configs": [{
                "job_name": "modelkiln-models",
                "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
                "relabel_configs": [
                    {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
                     "regex": "serving", "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "http",
                     "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}]}]}


@dataclass
class ScalingStack:
    prometheus: cp.Process

    def stop(self) -> None:
        self.prometheus.stop()


def install(kubectl: cp.Kubectl, node: rn.RealNode, components: Path, work: Path,
            timeout: float = 240) -> ScalingStack:
    """Import the images into the node, apply the components, start Prometheus; wait until all serve."""
    for image in IMAGES:
        node.ctr("images", "import", str(components / "images" / f"{image}.tar"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "prometheus.yaml").write_text(yaml.safe_dump(prometheus_config(kubectl.kubeconfig)))
    prometheus = cp.spawn("prometheus", [
        str(components / "prometheus"), f"--config.file={work / 'prometheus.yaml'}",
        f"--storage.tsdb.path={work / 'prometheus-data'}", f"--web.listen-address={rn.GATEWAY}:9090",
        "--storage.tsdb.retention.time=2h", "--log.level=warn"], log_dir=work)
    stack = ScalingStack(prometheus=prometheus)
    try:
        kubectl.apply({"apiVersion": "v1", "kind": "List", "items": coredns()})
        kubectl.run("rollout", "status", "-n", "kube-system", "deployment/coredns", f"--timeout={int(timeout)}s",
                    timeout=timeout + 30)
        for docs in (metrics_server(components, kubectl), keda(components, kubectl)):
            _apply_crds_first(kubectl, docs)
        # The add-on's objects live in KEDA's namespace, made above.
        _apply_crds_first(kubectl, http_add_on(components, kubectl))
        for namespace, deployment in (("kube-system", "metrics-server"), (KEDA_NAMESPACE, "keda-operator"),
                                      (KEDA_NAMESPACE, "keda-metrics-apiserver"),
                                      (KEDA_NAMESPACE, "keda-add-ons-http-interceptor"),
                                      (KEDA_NAMESPACE, "keda-add-ons-http-scaler")):
            kubectl.run("rollout", "status", "-n", namespace, f"deployment/{deployment}",
                        f"--timeout={int(timeout)}s", timeout=timeout + 30)
        for api in ("v1beta1.metrics.k8s.io", "v1beta1.external.metrics.k8s.io"):
            kubectl.wait(f"apiservice/{api}", "condition=Available", timeout=int(timeout))
        cp.wait_until("Prometheus ready", lambda: cp.http_ok(f"{PROMETHEUS_URL}/-/ready"), timeout=timeout,
                      procs=[prometheus])
    except BaseException:
        stack.stop()
        raise
    return stack


def _apply_crds_first(kubectl: cp.Kubectl, docs: list[dict]) -> None:
    """Apply the CRDs, wait until they are served, then the rest (which may use them)."""
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    if crds:
        kubectl.run("apply", "--server-side", "-f", "-",
                    input=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": crds}))
        kubectl.run("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"crd/{d['metadata']['name']}" for d in crds])
    rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    kubectl.apply({"apiVersion": "v1", "kind": "List", "items": rest})
