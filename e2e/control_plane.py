"""A real Kubernetes control plane on loopback, for the e2e suite and bench/.

Why this exists: our machines have no container engine (no kind, k3d, minikube), so the
control plane runs as plain processes built from source by `build-control-plane.sh`:
etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and kwok, which plays the
kubelets of simulated nodes (pods on them never run containers; `kwok-stages.yaml` decides
what they do). Every process runs in its own process group with a parent-death signal, so
nothing outlives the Python process that started it, even when that one is killed.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-control-plane.sh"
STAGES = HERE / "kwok-stages.yaml"
NODES = HERE / "nodes.yaml"
KWOK_NODE_SELECTOR = "kwok.x-k8s.io/node=fake"
ADMIN_TOKEN = "modelkiln-e2e-admin"

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask Linux to SIGTERM it when we die.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    """One child process in its own process group, its output in a log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(name: str, argv: list[str], *, log_dir: Path, env: dict[str, str] | None = None) -> Process:
    log = log_dir / f"{name}.log"
    out = log.open("ab")
    popen = subprocess.Popen(
        argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=_die_with_parent, env=env,
    )
    out.close()
    proc = Process(name=name, popen=popen, log=log)
    atexit.register(proc.stop)
    return proc


def wait_until(what: str, check, *, timeout: float, procs: list[Process] = ()) -> None:
    """Poll `check()` until it returns true; fail with the logs of dead processes."""
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode} while waiting for {what}:\n{p.tail()}")
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, subprocess.SubprocessError):
            pass
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.tail(10)}" for p in procs)
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
        time.sleep(0.5)


def eventually(what: str, check, *, timeout: float = 120):
    """Poll `check()` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


def _https_ok(url: str, token: str | None = None) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
        return resp.status == 200


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status == 200


def find_go() -> str | None:
    """The Go toolchain the build script will use (GO, else go on PATH, else /usr/local/go)."""
    go = os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"
    return go if Path(go).is_file() else None


def build_binaries(*, go: str) -> Path:
    """Run the build script (a no-op when its cache is complete); return the binary directory.

    A cold build prints its progress on our stderr and takes minutes (see BENCHMARKS.md).
    """
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, env={**os.environ, "GO": go})
    if out.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT.name} failed (exit {out.returncode}); its output is above")
    return Path(out.stdout.strip().splitlines()[-1])


def binaries_for_tests(items: list, *, what: str, needs: str) -> Path | None:
    """Build the binaries for the pytest `items` that need them, at collection (so a cold build
    does not count against a test's timeout), and return their directory. Without Go the items
    are skipped with one line, except in CI, where that is an error: a green CI means they ran."""
    import pytest  # only the test suites call this; the benchmarks import this module too

    go = find_go()
    if go is None:
        reason = f"{what} skipped: no Go toolchain to build {needs} (see e2e/README.md)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            raise pytest.UsageError(reason.replace("skipped", "cannot run in CI"))
        for item in items:
            item.add_marker(pytest.mark.skip(reason=reason))
        return None
    try:
        return build_binaries(go=go)
    except RuntimeError as exc:
        raise pytest.UsageError(f"{what}: {exc}") from None


def write_kubeconfig(path: Path, *, cluster: dict, token: str) -> Path:
    """A kubeconfig for `cluster` (a kubeconfig cluster entry) with a bearer token."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": "e2e", "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e"}}],
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@dataclass
class Kubectl:
    """kubectl on one cluster; a failed call raises with kubectl's own words."""

    kubeconfig: Path

    def run(self, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True, text=True, input=input, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}")
        return result

    def apply(self, manifest: dict | str | Path, *, namespace: str | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
        ns = ["-n", namespace] if namespace else []
        if isinstance(manifest, Path):
            return self.run("apply", *ns, "-f", str(manifest), check=check)
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.run("apply", *ns, "-f", "-", input=text, check=check)

    def get_json(self, *args: str, namespace: str | None = None) -> dict:
        ns = ["-n", namespace] if namespace else []
        return json.loads(self.run("get", *ns, *args, "-o", "json").stdout)

    def items(self, kind: str, *, namespace: str, selector: str | None = None) -> list[dict]:
        sel = ["-l", selector] if selector else []
        return self.get_json(kind, *sel, namespace=namespace)["items"]

    def wait(self, target: str, condition: str, *, namespace: str | None = None, timeout: int = 120) -> None:
        ns = ["-n", namespace] if namespace else []
        self.run("wait", *ns, f"--for={condition}", f"--timeout={timeout}s", target, timeout=timeout + 30)


@dataclass
class ControlPlane:
    """The running processes and how to reach them."""

    work_dir: Path
    kubeconfig: Path
    server: str
    processes: list[Process] = field(default_factory=list)

    def stop(self) -> None:
        # Reverse start order: kwok and controllers first, etcd last.
        for proc in reversed(self.processes):
            proc.stop()

    @property
    def kubectl(self) -> Kubectl:
        return Kubectl(kubeconfig=self.kubeconfig)

    def restart_apiserver(self, *, down_seconds: float, timeout: float = 120.0) -> None:
        """Stop kube-apiserver, leave it down `down_seconds`, start it again with the same flags
        (ports, certificates, etcd), and wait until it is ready."""
        index = next(i for i, p in enumerate(self.processes) if p.name == "kube-apiserver")
        old = self.processes[index]
        old.stop()
        time.sleep(down_seconds)
        self.processes[index] = spawn(old.name, list(old.popen.args), log_dir=old.log.parent)
        wait_until("kube-apiserver /readyz after its restart", lambda: _https_ok(f"{self.server}/readyz", ADMIN_TOKEN),
                   timeout=timeout, procs=[self.processes[index]])


def start_control_plane(*, bin_dir: Path, work_dir: Path, timeout: float = 180.0,
                        apiserver_args: tuple[str, ...] = (), controller_manager_args: tuple[str, ...] = (),
                        pools: tuple[str, ...] | None = None) -> ControlPlane:
    """Start etcd, kube-apiserver, controller-manager, scheduler and kwok; create the nodes.

    `apiserver_args` and `controller_manager_args` add flags to kube-apiserver and
    kube-controller-manager (bench/ turns on the audit log and raises the controllers' QPS);
    `pools` limits the simulated nodes to those pools (the real node plays the CPU pool).
    """
    pki = work_dir / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    logs = work_dir / "logs"
    logs.mkdir(exist_ok=True)
    sa_key, sa_pub = pki / "sa.key", pki / "sa.pub"
    subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub)], check=True, capture_output=True)
    tokens = pki / "tokens.csv"
    tokens.write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')

    plane = ControlPlane(work_dir=work_dir, kubeconfig=work_dir / "admin.kubeconfig", server="")
    try:
        _start(plane, bin_dir=bin_dir, pki=pki, logs=logs, tokens=tokens, sa_key=sa_key, sa_pub=sa_pub,
               timeout=timeout, apiserver_args=apiserver_args, controller_manager_args=controller_manager_args,
               pools=pools)
    except BaseException:
        plane.stop()
        raise
    return plane


def _start(plane: ControlPlane, *, bin_dir: Path, pki: Path, logs: Path, tokens: Path,
           sa_key: Path, sa_pub: Path, timeout: float, apiserver_args: tuple[str, ...],
           controller_manager_args: tuple[str, ...], pools: tuple[str, ...] | None) -> None:
    etcd_port, etcd_peer = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    etcd = spawn("etcd", [
        str(bin_dir / "etcd"), "--name=e2e", f"--data-dir={plane.work_dir / 'etcd'}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
        f"--initial-cluster=e2e=http://127.0.0.1:{etcd_peer}",
        "--unsafe-no-fsync", "--log-level=warn",
    ], log_dir=logs)
    plane.processes.append(etcd)
    wait_until("etcd", lambda: http_ok(f"{etcd_url}/health"), timeout=timeout, procs=[etcd])

    api_port = free_port()
    plane.server = f"https://127.0.0.1:{api_port}"
    apiserver = spawn("kube-apiserver", [
        str(bin_dir / "kube-apiserver"), f"--etcd-servers={etcd_url}",
        f"--cert-dir={pki}", f"--secure-port={api_port}", "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1", "--service-cluster-ip-range=10.96.0.0/16",
        "--allow-privileged=true", "--authorization-mode=RBAC", f"--token-auth-file={tokens}",
        f"--service-account-issuer={plane.server}", f"--service-account-key-file={sa_pub}",
        f"--service-account-signing-key-file={sa_key}", "--endpoint-reconciler-type=none",
        # A real node is reached at its address (kubectl logs/exec), not at its name: no DNS here.
        "--kubelet-preferred-address-types=InternalIP",
        # Pods leave a lost node after 20 s, not 5 minutes (test_e2e_faults.py's NotReady node).
        "--default-not-ready-toleration-seconds=20", "--default-unreachable-toleration-seconds=20",
        *apiserver_args,
    ], log_dir=logs)
    plane.processes.append(apiserver)
    wait_until("kube-apiserver /readyz", lambda: _https_ok(f"{plane.server}/readyz", ADMIN_TOKEN),
               timeout=timeout, procs=[etcd, apiserver])
    # The API server's self-signed certificate file also holds the CA that signed it.
    write_kubeconfig(plane.kubeconfig, token=ADMIN_TOKEN,
                     cluster={"server": plane.server, "certificate-authority": str(pki / "apiserver.crt")})

    cm_port, sched_port, kwok_port = free_port(), free_port(), free_port()
    plane.processes.append(spawn("kube-controller-manager", [
        str(bin_dir / "kube-controller-manager"), f"--kubeconfig={plane.kubeconfig}",
        "--leader-elect=false", "--controllers=*", f"--service-account-private-key-file={sa_key}",
        f"--root-ca-file={pki / 'apiserver.crt'}", "--bind-address=127.0.0.1", f"--secure-port={cm_port}",
        # Short syncs so that HPA decisions and volume bindings show up within a test.
        "--horizontal-pod-autoscaler-sync-period=5s", "--pvclaimbinder-sync-period=2s", *controller_manager_args,
    ], log_dir=logs))
    plane.processes.append(spawn("kube-scheduler", [
        str(bin_dir / "kube-scheduler"), f"--kubeconfig={plane.kubeconfig}", "--leader-elect=false",
        "--bind-address=127.0.0.1", f"--secure-port={sched_port}",
    ], log_dir=logs))
    plane.processes.append(spawn("kwok", [
        str(bin_dir / "kwok"), f"--kubeconfig={plane.kubeconfig}", f"--config={STAGES}",
        "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={KWOK_NODE_SELECTOR}",
        f"--server-address=127.0.0.1:{kwok_port}", "--node-ip=10.244.0.1", "--cidr=10.244.1.0/24",
        # Node Leases keep the node-lifecycle controller from marking nodes (and pods) NotReady.
        "--node-lease-duration-seconds=40",
    ], log_dir=logs))
    procs = plane.processes
    wait_until("kube-controller-manager /healthz", lambda: _https_ok(f"https://127.0.0.1:{cm_port}/healthz"),
               timeout=timeout, procs=procs)
    wait_until("kube-scheduler /healthz", lambda: _https_ok(f"https://127.0.0.1:{sched_port}/healthz"),
               timeout=timeout, procs=procs)
    wait_until("kwok /healthz", lambda: http_ok(f"http://127.0.0.1:{kwok_port}/healthz"),
               timeout=timeout, procs=procs)
    # Pods need the namespace's default ServiceAccount, made by the controller-manager.
    wait_until("default ServiceAccount",
               lambda: plane.kubectl.run("get", "serviceaccount", "default", check=False).returncode == 0,
               timeout=timeout, procs=procs)
    create_nodes(plane.kubectl, timeout=timeout, pools=pools)


def simulated_node(name: str, *, pool: str, allocatable: dict[str, str], taint: str | None = None) -> dict:
    """A Node that kwok plays, in device pool `pool` (labelled and tainted as nodes.yaml)."""
    node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {"kubernetes.io/hostname": name, "type": "kwok", "modelkiln.io/pool": pool}},
        "spec": {},
        # Accepted on create for Nodes; kwok's node-initialize stage keeps these values.
        "status": {"allocatable": dict(allocatable), "capacity": dict(allocatable)},
    }
    if taint:
        node["spec"]["taints"] = [{"key": "modelkiln.io/accelerator", "value": taint, "effect": "NoSchedule"}]
    return node


def create_nodes(kubectl: Kubectl, *, timeout: float, pools: tuple[str, ...] | None = None) -> list[str]:
    """Create the simulated node pools of `nodes.yaml` (or only `pools` of them) and wait until
    kwok made them Ready."""
    nodes = [doc for doc in yaml.safe_load_all(NODES.read_text())
             if doc and (pools is None or doc["metadata"]["labels"]["modelkiln.io/pool"] in pools)]
    kubectl.apply({"apiVersion": "v1", "kind": "List", "items": nodes})
    names = [node["metadata"]["name"] for node in nodes]
    kubectl.run("wait", "--for=condition=Ready", f"--timeout={int(timeout)}s", *[f"node/{n}" for n in names])
    return names
