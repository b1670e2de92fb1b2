"""One real Kubernetes node for the `real_node` e2e tests: pods that run real containers.

containerd, runc and the CNI plugins come from Debian packages (`node/install-packages.sh`),
kubelet and kube-proxy from `build-control-plane.sh` at the control plane's version, the images
(pause included) from `docker/build-images.sh` with buildah. The node joins a control plane of
`control_plane.py` and is labelled as the CPU pool. Everything it starts is stopped by PID in
`RealNode.stop()`, which then removes what the node left on the host: pod sandboxes, mounts,
iptables chains, the bridge, the pods' cgroups. `../shared/REAL_NODE.md` explains the choices.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import control_plane as cp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
INSTALL_PACKAGES = HERE / "node" / "install-packages.sh"
BUILD_IMAGES = REPO / "docker" / "build-images.sh"
NODE_NAME = "real-1"
POOL_LABEL = "modelkiln.io/pool=cpu"
BRIDGE = "modelkiln0"
POD_SUBNET = "10.88.0.0/24"
GATEWAY = "10.88.0.1"  # the bridge's address: pods reach the API server here (a socat forward)
API_PORT = 6443
PAUSE_IMAGE = "localhost/modelkiln/pause:3.10"
NAMESPACE = "k8s.io"  # containerd's namespace for CRI: where the kubelet finds images
CGROUP_ROOT = "modelkiln"  # the pods' cgroups, under this name in every v1 hierarchy
EGRESS_CHAIN = "CNI-ADMIN"  # the CNI firewall plugin's chain for the admin's own rules
SYSCTLS = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"}


def cannot_run_containers() -> str | None:
    """Why this machine cannot run the real node, or None when it can."""
    if os.geteuid() != 0:
        return "not root (containerd and the kubelet need root)"
    if not Path("/proc/sys/net/bridge").is_dir():
        return "no bridge netfilter in this kernel (/proc/sys/net/bridge is missing)"
    probe = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make Linux namespaces for containers: {probe.stderr.strip()}"
    return None


def cache_dir() -> Path:
    """Where the build scripts and the node keep what outlives a run (MODELKILN_CACHE)."""
    return Path(os.environ.get("MODELKILN_CACHE", Path.home() / ".cache" / "modelkiln"))


def install_packages() -> None:
    subprocess.run(["bash", str(INSTALL_PACKAGES)], check=True)


def build_images(*, containerd_socket: Path | None = None) -> None:
    """Build the project's images (a no-op when nothing changed); import them into containerd."""
    args = ["--containerd", str(containerd_socket)] if containerd_socket else []
    subprocess.run(["bash", str(BUILD_IMAGES), *args], check=True)


def default_route_address() -> str:
    """The host's address toward its default route: the node's InternalIP (loopback is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # UDP connect sends nothing: it only picks the route
        return s.getsockname()[0]


@dataclass
class RealNode:
    name: str
    work_dir: Path
    containerd_socket: Path
    kubectl: cp.Kubectl
    processes: list[cp.Process] = field(default_factory=list)
    saved_sysctls: dict[str, str] = field(default_factory=dict)
    netns_before: set[Path] = field(default_factory=set)

    @property
    def runc_root(self) -> Path:
        return self.work_dir / "state" / "runc"

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "--address", str(self.containerd_socket), "-n", NAMESPACE, *args],
                              capture_output=True, text=True, check=check)

    def running_tasks(self) -> list[str]:
        out = self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]
        return [line.split()[0] for line in out if "RUNNING" in line]

    def logs(self, lines: int = 40) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(lines)}" for p in self.processes)

    def stop(self) -> None:
        """Stop the pods, then every process by PID, then remove what they left on the host."""
        by_name = {p.name: p for p in self.processes}
        if "kubelet" in by_name and by_name["kubelet"].popen.poll() is None:
            self._delete_pods()
        for proc in reversed(self.processes):
            proc.stop(timeout=20)
        self._kill_leftover_containers()
        self._unmount_under(self.work_dir)
        for netns in set(_sandbox_netns()) - self.netns_before:  # the sandboxes the kubelet could not stop
            subprocess.run(["umount", str(netns)], capture_output=True)
            netns.unlink(missing_ok=True)
        self.clean_host()
        for link in Path("/var/log/containers").glob("*.log"):
            if link.is_symlink() and str(os.readlink(link)).startswith(str(self.work_dir)):
                link.unlink()
        for key, value in self.saved_sysctls.items():
            _sysctl(key, value)

    def clean_host(self) -> None:
        """Remove the node's host state: the iptables chains of kube-proxy, the kubelet and CNI, the bridge, the
        pods' cgroups. Also run before starting, in case a killed run left them."""
        subprocess.run([str(self.work_dir / "bin" / "kube-proxy"), "--cleanup"], capture_output=True)
        _delete_iptables_chains(prefixes=("CNI-", "KUBE-"))
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)
        _remove_cgroups(CGROUP_ROOT)

    def _delete_pods(self) -> None:
        # The kubelet stops each sandbox properly (CNI DEL frees its address and rules); cordoned
        # first, so that no controller's replacement pod starts here meanwhile.
        self.kubectl.run("cordon", self.name, check=False)
        self.kubectl.run("delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={self.name}",
                         "--grace-period=0", "--force", "--wait=false", check=False)
        deadline = time.monotonic() + 60
        while self.running_tasks() and time.monotonic() < deadline:
            time.sleep(1)

    def _kill_leftover_containers(self) -> None:
        root = self.runc_root / NAMESPACE
        if not root.is_dir():
            return
        ids = subprocess.run(["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True).stdout.split()
        for cid in ids:
            subprocess.run(["runc", "--root", str(root), "delete", "--force", cid], capture_output=True)
        # Shims daemonize away from containerd's process group: find ours by their socket.
        for pid, cmdline in _processes():
            if "containerd-shim" in cmdline and str(self.work_dir) in cmdline:
                _kill(pid)

    @staticmethod
    def _unmount_under(path: Path) -> None:
        """Unmount everything mounted under `path` (and the sandboxes' network namespaces)."""
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        mounts = [m.encode().decode("unicode_escape") for m in mounts]
        ours = [m for m in mounts if m.startswith(f"{path}/")]
        for mount in sorted(set(ours), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)


def _sandbox_netns() -> list[Path]:
    """The network namespaces containerd made for pod sandboxes (it pins them in /run/netns)."""
    return list(Path("/run/netns").glob("cni-*"))


def _processes():
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _sysctl(key: str, value: str | None = None) -> str:
    path = Path("/proc/sys") / key.replace(".", "/")
    if value is not None:
        path.write_text(value)
    return path.read_text().strip()


def _delete_iptables_chains(*, prefixes: tuple[str, ...]) -> None:
    """Remove the chains named `prefix*` (CNI's plugins, the kubelet and kube-proxy make them)
    and every rule that jumps to them."""
    for iptables, table in itertools.product(("iptables", "ip6tables"), ("filter", "nat", "mangle")):
        rules = subprocess.run([iptables, "-t", table, "-S"], capture_output=True, text=True).stdout.splitlines()
        rules = [shlex.split(rule) for rule in rules]
        ours = [r[1] for r in rules if r[0] == "-N" and r[1].startswith(prefixes)]
        for rule in rules:
            if rule[0] == "-A" and not rule[1].startswith(prefixes) and "-j" in rule \
                    and rule[rule.index("-j") + 1].startswith(prefixes):
                subprocess.run([iptables, "-t", table, "-D", *rule[1:]], capture_output=True)
        for flag in ("-F", "-X"):
            for chain in ours:
                subprocess.run([iptables, "-t", table, flag, chain], capture_output=True)


def _confine_pods() -> None:
    """Pods reach only the node (INPUT: the API server forward, Prometheus, the kubelet) and each
    other, Services included once kube-proxy has DNAT'ed them to a pod: any other packet is refused
    here, so no test, and no bug, sends traffic off the machine. A Service whose rules kube-proxy
    has not written yet (its first endpoint just became ready) is refused too, as in a cluster,
    instead of leaving by the default route. The rule sits in the CNI firewall plugin's CNI-ADMIN
    chain, which the plugin evaluates before the ACCEPT rules it adds for each pod."""
    subprocess.run(["iptables", "-N", EGRESS_CHAIN], check=True)
    subprocess.run(["iptables", "-A", EGRESS_CHAIN, "-s", POD_SUBNET, "!", "-d", POD_SUBNET, "-j", "REJECT",
                    "--reject-with", "icmp-net-prohibited"], check=True)


def _make_cgroups(root: str) -> None:
    """The kubelet's cgroup root `/root` in every v1 hierarchy (it must exist before the kubelet)."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if hierarchy.is_dir() and not hierarchy.is_symlink():
            (hierarchy / root).mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":  # a new cpuset has no CPUs or memory nodes: the parent's
                for key in ("cpuset.cpus", "cpuset.mems"):
                    (hierarchy / root / key).write_text((hierarchy / key).read_text())


def _remove_cgroups(root: str) -> None:
    """Remove the kubelet's cgroup tree `/root` from every v1 hierarchy (deepest first)."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / root
        if top.is_dir():
            for directory in sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: len(d.parts),
                                    reverse=True) + [top]:
                try:
                    directory.rmdir()
                except OSError:
                    pass


def containerd_config(work_dir: Path, *, root: Path) -> str:
    """containerd's settings for a node on this machine (the rest are containerd's defaults)."""
    state = work_dir / "state"
    return f"""version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{work_dir / 'containerd.sock'}"
[plugins."io.containerd.grpc.v1.cri"]
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails "can't get final child's PID".
  restrict_oom_score_adj = true
  sandbox_image = "{PAUSE_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{work_dir / 'cni'}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    # runc's state under ours, so that a forced cleanup finds every container.
    Root = "{state / 'runc'}"
"""


def cni_config() -> dict:
    return {
        "cniVersion": "0.4.0", "name": "modelkiln",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET, "gateway": GATEWAY}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall"},
        ],
    }


def kubelet_config(work_dir: Path, *, socket_path: Path, cluster_dns: str | None = None) -> dict:
    """With `cluster_dns`, pods resolve through it alone: the host's resolver is never theirs (an
    empty resolv.conf for dnsPolicy Default), so no name outside the cluster resolves in a pod."""
    resolv = "/etc/resolv.conf"
    if cluster_dns:
        resolv = work_dir / "pods-resolv.conf"
        resolv.write_text("")
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP_ROOT}",
        "failCgroupV1": False,  # this machine has cgroup v1; v1.35 refuses it without this
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{socket_path}",
        # Test only: the API server reaches the kubelet without client certificates.
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1", "healthzPort": cp.free_port(),
        "podLogsDir": str(work_dir / "pod-logs"),
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                         "imagefs.available": "1%"},
        # The images were imported by hand: never garbage-collect them.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "clusterDomain": "cluster.local", "resolvConf": str(resolv), "maxPods": 50,
        "serializeImagePulls": False,
    }
    if cluster_dns:
        config["clusterDNS"] = [cluster_dns]
    return config


def kube_proxy_config(kubeconfig: Path) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "mode": "iptables", "clusterCIDR": POD_SUBNET, "hostnameOverride": NODE_NAME,
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "healthzBindAddress": f"127.0.0.1:{cp.free_port()}", "metricsBindAddress": f"127.0.0.1:{cp.free_port()}",
        # Leave the host's conntrack sysctls alone.
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def start_real_node(plane: cp.ControlPlane, *, bin_dir: Path, work_dir: Path, cache: Path,
                    timeout: float = 120, cluster_dns: str | None = None) -> RealNode:
    """Start containerd, load the images, start kubelet and kube-proxy; wait for the node to be Ready.
    `cluster_dns`: the kube-dns Service address pods resolve with (the caller runs the DNS server)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    logs = work_dir / "logs"
    logs.mkdir(exist_ok=True)
    # The binaries are copied so that `kube-proxy --cleanup` still runs when the cache changes.
    (work_dir / "bin").mkdir(exist_ok=True)
    for b in ("kubelet", "kube-proxy"):
        shutil.copy2(bin_dir / b, work_dir / "bin" / b)
    node = RealNode(name=NODE_NAME, work_dir=work_dir, containerd_socket=work_dir / "containerd.sock",
                    kubectl=plane.kubectl)
    try:
        _start(node, plane=plane, logs=logs, cache=cache, timeout=timeout, cluster_dns=cluster_dns)
    except BaseException:
        node.stop()
        raise
    return node


def _start(node: RealNode, *, plane: cp.ControlPlane, logs: Path, cache: Path, timeout: float,
           cluster_dns: str | None) -> None:
    work = node.work_dir
    node.clean_host()
    node.netns_before = set(_sandbox_netns())
    node.saved_sysctls = {key: _sysctl(key) for key in SYSCTLS}
    for key, value in SYSCTLS.items():
        _sysctl(key, value)
    # The bridge exists before any pod, so the API server forward can listen on its address.
    subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True, capture_output=True)
    subprocess.run(["ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE], check=True)
    subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
    _confine_pods()
    (work / "cni").mkdir(exist_ok=True)
    (work / "cni" / "10-modelkiln.conflist").write_text(json.dumps(cni_config()))
    root = cache / "node" / "containerd"  # persistent: imported images survive the session
    root.mkdir(parents=True, exist_ok=True)
    (work / "containerd.toml").write_text(containerd_config(work, root=root))
    containerd = cp.spawn("containerd", ["containerd", "--config", str(work / "containerd.toml")], log_dir=logs)
    node.processes.append(containerd)
    cp.wait_until("containerd", lambda: node.ctr("version", check=False).returncode == 0,
                  timeout=timeout, procs=[containerd])
    build_images(containerd_socket=node.containerd_socket)

    # Pods reach the API server (on loopback) through the bridge: `kubernetes.default` has no
    # endpoints with --endpoint-reconciler-type=none, so we write them.
    api_port = int(plane.server.rsplit(":", 1)[1])
    node.processes.append(cp.spawn("apiserver-forward", [
        "socat", f"TCP-LISTEN:{API_PORT},bind={GATEWAY},reuseaddr,fork", f"TCP:127.0.0.1:{api_port}"], log_dir=logs))
    plane.kubectl.apply({"apiVersion": "v1", "kind": "Endpoints",
                         "metadata": {"name": "kubernetes", "namespace": "default"},
                         "subsets": [{"addresses": [{"ip": GATEWAY}],
                                      "ports": [{"name": "https", "port": API_PORT, "protocol": "TCP"}]}]})

    _make_cgroups(CGROUP_ROOT)
    # Test only: the node uses the admin credential (a real node has a system:node: identity).
    (work / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config(work, socket_path=node.containerd_socket,
                                                                        cluster_dns=cluster_dns)))
    (work / "pod-logs").mkdir(exist_ok=True)
    kubelet = cp.spawn("kubelet", [
        str(work / "bin" / "kubelet"), f"--config={work / 'kubelet.yaml'}", f"--kubeconfig={plane.kubeconfig}",
        f"--root-dir={work / 'kubelet'}", f"--hostname-override={NODE_NAME}",
        f"--node-ip={default_route_address()}", f"--node-labels={POOL_LABEL}", "--v=1",
    ], log_dir=logs)
    node.processes.append(kubelet)
    (work / "kube-proxy.yaml").write_text(yaml.safe_dump(kube_proxy_config(plane.kubeconfig)))
    node.processes.append(cp.spawn("kube-proxy", [
        str(work / "bin" / "kube-proxy"), f"--config={work / 'kube-proxy.yaml'}", "--v=1"], log_dir=logs))
    cp.wait_until(f"node {NODE_NAME} Ready", lambda: _node_ready(plane.kubectl), timeout=timeout,
                  procs=node.processes)


def _node_ready(kubectl: cp.Kubectl) -> bool:
    result = kubectl.run("get", "node", NODE_NAME, "-o",
                         "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
    return result.stdout.strip() == "True"


def node_log_errors(node: RealNode) -> list[str]:
    """Error lines of the kubelet's log (E-prefixed klog lines), for a failed test's report."""
    kubelet = next(p for p in node.processes if p.name == "kubelet")
    text = kubelet.log.read_text(errors="replace") if kubelet.log.exists() else ""
    return [line for line in text.splitlines() if re.match(r"E\d{4} ", line)][-20:]
