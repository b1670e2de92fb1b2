"""The nodes under a model's serving pods: a pod on a node that is not Ready answers nobody.

Its pod may still count as available (nobody is left to say otherwise: its kubelet is gone), and
Kubernetes moves it only once it stops tolerating the node's `unreachable` taint (5 minutes by
default), so the model says so itself, naming the node. kopf indexes only the nodes that are not
Ready: while every node is, this costs no request. Pure functions.
"""

from __future__ import annotations

from collections.abc import Iterable

NODE_NOT_READY = "NodeNotReady"


def not_ready(node: dict) -> str | None:
    """Why `node` is not Ready ("Ready is Unknown: Kubelet stopped posting node status."), or None."""
    ready = next((c for c in node.get("status", {}).get("conditions", []) if c.get("type") == "Ready"), None)
    if ready is None:
        return "it has no Ready condition yet"
    if ready.get("status") == "True":
        return None
    return f"Ready is {ready.get('status')}: {ready.get('message') or ready.get('reason', '')}".rstrip(": ")


def in_pool(nodes: Iterable[dict], node_selector: dict[str, str] | None) -> list[dict]:
    """The `nodes` that a pod with `node_selector` may run on (all of them without one)."""
    wanted = (node_selector or {}).items()
    return [node for node in nodes if wanted <= node["metadata"].get("labels", {}).items()]


def lost_pods(pods: Iterable[dict], unready_nodes: Iterable[dict]) -> dict[str, tuple[str, list[str]]]:
    """By node name: (why the node is not Ready, the names of `pods` on it that are not being deleted)."""
    why = {node["metadata"]["name"]: reason for node in unready_nodes if (reason := not_ready(node))}
    lost: dict[str, tuple[str, list[str]]] = {}
    for pod in pods:
        node = pod.get("spec", {}).get("nodeName")
        if node in why and not pod["metadata"].get("deletionTimestamp"):
            lost.setdefault(node, (why[node], []))[1].append(pod["metadata"]["name"])
    return lost


def describe(lost: dict[str, tuple[str, list[str]]]) -> str:
    """One line: each node that is not Ready, why, and the serving pods it holds."""
    parts = [f"node {node} is not Ready ({why}) and holds pod(s) {', '.join(sorted(pods))}"
             for node, (why, pods) in sorted(lost.items())]
    return "; ".join(parts) + ": they answer no request until Kubernetes moves them to a Ready node"
