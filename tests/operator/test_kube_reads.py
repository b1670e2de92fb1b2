"""What `kube.Kube` asks the API server for: paths, and reads answered from the watch instead.

The client here has no API server behind it (None): a test passes only if no request is made.
The requests themselves go to a real API server in e2e/.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading

import kubernetes
import pytest

from modelkiln.operator import kube

DEPLOYMENT = {"metadata": {"namespace": "vision", "name": "digits"}, "status": {"readyReplicas": 1}}


def test_a_subresource_path_puts_the_subresource_after_the_name():
    assert kube.MODEL_STATUS.path("vision", "digits") == \
        "/apis/modelkiln.io/v1alpha1/namespaces/vision/inferencemodels/digits/status"
    assert kube.DEPLOYMENTS.path("vision") == "/apis/apps/v1/namespaces/vision/deployments"


def test_a_watched_resource_is_read_from_what_the_watch_saw():
    api = kube.Kube(None).knowing({kube.DEPLOYMENTS: {("vision", "digits"): [DEPLOYMENT]}})
    assert api.get(kube.DEPLOYMENTS, namespace="vision", name="digits") == DEPLOYMENT
    assert api.get(kube.DEPLOYMENTS, namespace="vision", name="letters") is None  # the watch has none


def test_a_call_outside_the_permissions_is_refused_before_any_request():
    with pytest.raises(PermissionError, match="delete deployments is not in kube.PERMISSIONS"):
        kube.Kube(None).delete(kube.DEPLOYMENTS, namespace="vision", name="digits")


def test_an_api_server_that_does_not_answer_is_unreachable_naming_it():
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    configuration = kubernetes.client.Configuration(host=f"https://127.0.0.1:{port}")
    api = kube.Kube(kubernetes.client.ApiClient(configuration))
    with pytest.raises(kube.Unreachable, match=f"the API server https://127.0.0.1:{port} does not answer: .*refused"):
        api.get(kube.CLAIMS, namespace="vision", name="models")


@pytest.fixture
def configmap_server():
    """A loopback HTTP server that answers every GET with one ConfigMap and counts the GETs."""
    gets = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            gets.append(self.path)
            body = json.dumps({"kind": "ConfigMap", "metadata": {"name": "pools"}, "data": {"n": str(len(gets))}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", gets
    server.shutdown()
    server.server_close()


def test_a_configmap_is_read_at_most_once_in_configmap_seconds_by_every_client_knowing_the_watch(
        configmap_server, monkeypatch):
    host, gets = configmap_server
    api = kube.Kube(kubernetes.client.ApiClient(kubernetes.client.Configuration(host=host)))
    reads = [api.knowing({}).get(kube.CONFIGMAPS, namespace="modelkiln-system", name="pools")["data"]["n"]
             for _ in range(3)]
    assert reads == ["1", "1", "1"] and gets == ["/api/v1/namespaces/modelkiln-system/configmaps/pools"]
    assert api.get(kube.CONFIGMAPS, namespace="modelkiln-system", name="pools", fresh=True)["data"]["n"] == "2"
    monkeypatch.setattr(kube, "CONFIGMAP_SECONDS", 0.0)  # older than that: asked again
    assert api.get(kube.CONFIGMAPS, namespace="modelkiln-system", name="pools")["data"]["n"] == "3"
