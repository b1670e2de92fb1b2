"""Fixtures for the e2e suite: a real control plane, our CRD and manifests, the operator.

Without KUBECONFIG, the control plane is started here from binaries built by
`build-control-plane.sh` (the build runs once per machine, at collection, so that its tens of
minutes do not count against a test's timeout). With KUBECONFIG, the tests run against that
cluster instead; it must run kwok with `kwok-stages.yaml` for the simulated node pools.
Without Go and without KUBECONFIG the suite is skipped with one line, except in CI, where it
fails: a green CI always means these tests ran.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import control_plane as cp
import real_node as rn
import scaling_stack
from control_plane import Kubectl
from modelkiln_setup import (OperatorProcess, create_model_namespace, delete_model_namespace, install_modelkiln,
                             operator_process)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "chart"))
from chart_helpers import Helm  # noqa: E402

E2E_DIR = Path(__file__).resolve().parent
_state: dict[str, object] = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "real_node: runs real containers on a real node (root, runc, buildah)")
    config.addinivalue_line("markers", "autoscaling: metrics-server, KEDA and its HTTP add-on scale models "
                                       "on the real node")
    config.addinivalue_line("markers", "rollout: Shadow and Canary rollouts decided on live traffic on the "
                                       "real node")
    config.addinivalue_line("markers", "faults: the operator killed, the API server restarted, two operator "
                                       "replicas, a node NotReady, a conversion OOMKilled (kwok)")


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: build only when e2e tests will run
def pytest_collection_modifyitems(session, config, items):
    e2e_items = [item for item in items if Path(str(item.fspath)).is_relative_to(E2E_DIR)]
    if not e2e_items or os.environ.get("KUBECONFIG"):
        return
    bin_dir = cp.binaries_for_tests(e2e_items, what="e2e",
                                    needs="the control plane and no KUBECONFIG")
    if bin_dir is not None:
        _state["bin_dir"] = bin_dir
        real_node_items = [item for item in e2e_items if item.get_closest_marker("real_node")]
        prepare_real_node(real_node_items)
        if any(item.get_closest_marker("autoscaling") and not item.get_closest_marker("skip")
               for item in real_node_items):
            _state["scaling_components"] = build_scaling_components()


def build_scaling_components() -> Path:
    """Build metrics-server, CoreDNS, KEDA, its HTTP add-on and Prometheus at collection (minutes on
    a cold machine, not counted against a test's timeout)."""
    try:
        return scaling_stack.build()
    except subprocess.CalledProcessError as exc:
        raise pytest.UsageError(f"autoscaling tests: {scaling_stack.BUILD_SCRIPT.name} failed "
                                f"(exit {exc.returncode}); its output is above") from None


def prepare_real_node(items: list) -> None:
    """Install the node's packages and build the images at collection (minutes on a cold machine,
    not counted against a test's timeout); skip the items with one line where containers cannot
    run, except in CI, where that is an error: a green CI means they ran."""
    if not items:
        return
    reason = rn.cannot_run_containers()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            raise pytest.UsageError(f"real-node tests cannot run in CI: {reason}")
        for item in items:
            item.add_marker(pytest.mark.skip(reason=f"real-node tests skipped: {reason}"))
        return
    try:
        rn.install_packages()
        rn.build_images()
    except subprocess.CalledProcessError as exc:
        raise pytest.UsageError(f"real-node tests: {' '.join(map(str, exc.cmd))} failed (exit {exc.returncode}); "
                                "its output is above") from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # A failed e2e test shows what the operator said: usually the fastest way to the cause.
    report = yield
    proc = _state.get("operator")
    if report.failed and proc is not None:
        report.sections.append(("modelkiln operator log (tail)", proc.log()))
    node = _state.get("real_node")
    if report.failed and node is not None and item.get_closest_marker("real_node"):
        report.sections.append(("real node logs (tail)", node.logs()))
    return report


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Kubectl:
    """An admin `kubectl` on a cluster with the simulated node pools, CRD and manifests."""
    if os.environ.get("KUBECONFIG"):
        kubectl = Kubectl(kubeconfig=Path(os.environ["KUBECONFIG"]))
        cp.create_nodes(kubectl, timeout=120)
        plane = None
    else:
        plane = cp.start_control_plane(bin_dir=_state["bin_dir"], work_dir=tmp_path_factory.mktemp("control-plane"))
        _state["plane"] = plane
        kubectl = Kubectl(kubeconfig=plane.kubeconfig)
    try:
        install_modelkiln(kubectl, REPO)
        yield kubectl
    finally:
        if plane is not None:
            plane.stop()


@pytest.fixture(scope="session")
def operator(cluster: Kubectl, tmp_path_factory) -> OperatorProcess:
    """`modelkiln operator` as a subprocess, with the RBAC of its own ServiceAccount."""
    proc = operator_process(cluster, tmp_path_factory.mktemp("operator"))
    proc.start()
    _state["operator"] = proc
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def _real_node_cluster(work: Path, *, apiserver_args: tuple[str, ...] = (), cluster_dns: str | None = None):
    if os.environ.get("KUBECONFIG"):
        pytest.skip("the real node joins a control plane of its own, not KUBECONFIG's cluster")
    bin_dir = _state["bin_dir"]
    plane = cp.start_control_plane(bin_dir=bin_dir, work_dir=work / "control-plane", pools=("gpu", "npu"),
                                   apiserver_args=apiserver_args)
    try:
        node = rn.start_real_node(plane, bin_dir=bin_dir, work_dir=work / "node", cache=rn.cache_dir(),
                                  cluster_dns=cluster_dns)
        _state["real_node"] = node
        try:
            yield plane.kubectl, node, work, Helm(bin_dir / "helm", work)
        finally:
            node.stop()
            _state.pop("real_node")
    finally:
        plane.stop()


@pytest.fixture(scope="module")
def real_node_cluster(tmp_path_factory):
    """A control plane whose CPU pool is a real node (kwok plays the GPU and NPU pools): its admin
    kubectl, the node, a work directory and helm."""
    with _real_node_cluster(tmp_path_factory.mktemp("real-node")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def scaling_cluster(tmp_path_factory):
    """`real_node_cluster` with what autoscaling needs: the API server's aggregation layer, cluster DNS,
    metrics-server, KEDA, its HTTP add-on and a Prometheus scraping the serving pods."""
    work = tmp_path_factory.mktemp("scaling-node")
    with _real_node_cluster(work, apiserver_args=scaling_stack.aggregation_args(work / "front-proxy"),
                            cluster_dns=scaling_stack.DNS_IP) as (kubectl, node, work, helm):
        stack = scaling_stack.install(kubectl, node, _state["scaling_components"], work / "scaling")
        try:
            yield kubectl, node, work, helm
        finally:
            stack.stop()


@pytest.fixture
def control_plane(cluster: Kubectl) -> cp.ControlPlane:
    """The processes behind `cluster`, for a test that restarts one (not with KUBECONFIG's cluster)."""
    if "plane" not in _state:
        pytest.skip("restarts the API server of a control plane of its own, not KUBECONFIG's cluster")
    return _state["plane"]


@pytest.fixture
def namespace(cluster: Kubectl):
    """A fresh namespace with its model repository claim, deleted with everything in it afterwards."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    create_model_namespace(cluster, name)
    yield name
    delete_model_namespace(cluster, name)
