"""From `kubectl apply` to Ready on a real node, split into its parts, and what a scale-up costs.

Starts what the `real_node` e2e tests run on (e2e/real_node.py: a control plane whose CPU pool is
a real node with containerd; the chart installed with this checkout's images, built with buildah),
then, for each round, applies the digits example with a `pvc://` source under a new name and
watches it (polling the API every 0.2 s, timestamps from this process's clock):
- conversion: `kubectl apply` -> the conversion Job's container has terminated; of it, the
  Job's pod until its container runs, and the converter's run (fetch, convert, verify, publish);
- serving container start: the Job done -> the serving container running (the operator sees
  the Job, applies the Deployment, the pod is scheduled and its container started);
- model load: the server's own log, `listening` -> `ready: 1 of 1 model(s)`;
- readiness: container running -> the pod Ready (model load, then the probes see it);
- and `kubectl wait --for=condition=Ready im/...` returning, measured from the apply.
Then a scale-up: `kubectl scale im/NAME --replicas=2` and the new pod's container start -> Ready.
It also prints the images' sizes (compressed and not) from `docker/build-images.sh`'s archives.

Run from the repository root, as root, with the project's venv:

    .venv/bin/python bench/real_node.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "e2e"))
sys.path.insert(0, str(ROOT / "tests" / "chart"))

import control_plane as cp  # noqa: E402
from machine import cpu_model  # noqa: E402
import modelkiln_setup as setup  # noqa: E402
import real_node as rn  # noqa: E402
from chart_helpers import Helm  # noqa: E402

MODELS = setup.REAL_NODE_MODELS
POLL = 0.2


def first_seen(kubectl: cp.Kubectl, checks: dict, *, start: float, timeout: float = 600) -> dict[str, float]:
    """Poll the API; for each named check, the seconds since `start` when it first held."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(checks):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s; seen only {sorted(seen)}")
        pods = kubectl.items("pods", namespace=MODELS)
        now = time.monotonic() - start
        for name, check in checks.items():
            if name not in seen and check(pods):
                seen[name] = now
        time.sleep(POLL)
    return seen


def _container(pods: list[dict], model: str, component: str, state: str, *, exclude=()) -> bool:
    for pod in pods:
        labels = pod["metadata"].get("labels", {})
        if (labels.get("modelkiln.io/model") == model and labels.get("app.kubernetes.io/component") == component
                and pod["metadata"]["name"] not in exclude):
            if any(state in s.get("state", {}) for s in pod.get("status", {}).get("containerStatuses", [])):
                return True
    return False


def _ready(pods: list[dict], model: str, *, exclude=()) -> bool:
    for pod in pods:
        labels = pod["metadata"].get("labels", {})
        if (labels.get("modelkiln.io/model") == model and labels.get("app.kubernetes.io/component") == "serving"
                and pod["metadata"]["name"] not in exclude):
            if any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])):
                return True
    return False


def load_seconds(kubectl: cp.Kubectl, pod: str) -> float:
    """`listening` -> `ready: ...` in the server's log (its own millisecond timestamps)."""
    log = kubectl.run("logs", "-n", MODELS, pod).stdout
    stamps = {}
    for line in log.splitlines():
        match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (listening|ready):", line)
        if match:
            stamps.setdefault(match[2], datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f"))
    return (stamps["ready"] - stamps["listening"]).total_seconds()


def one_round(kubectl: cp.Kubectl, name: str) -> dict[str, float]:
    start = time.monotonic()
    kubectl.run("apply", "-n", MODELS, "-f", "-",
                input=setup.digits_example(name, f"pvc://{setup.UPLOADS}/digits/model.onnx"))
    waiter = subprocess.Popen(["kubectl", "--kubeconfig", str(kubectl.kubeconfig), "wait", "-n", MODELS,
                               "--for=condition=Ready", "--timeout=600s", f"im/{name}"], stdout=subprocess.DEVNULL)
    seen = first_seen(kubectl, {
        "converting": lambda pods: (_container(pods, name, "conversion", "running")
                                    or _container(pods, name, "conversion", "terminated")),
        "converted": lambda pods: _container(pods, name, "conversion", "terminated"),
        "serving_running": lambda pods: _container(pods, name, "serving", "running"),
        "serving_ready": lambda pods: _ready(pods, name),
    }, start=start)
    waiter.wait(timeout=600)
    waited = time.monotonic() - start
    (pod,) = kubectl.items("pods", namespace=MODELS, selector=f"modelkiln.io/model={name},app.kubernetes.io/component=serving")
    return {"apply_to_ready": waited, "conversion": seen["converted"],
            "conversion_pod_start": seen["converting"],
            "converter_run": seen["converted"] - seen["converting"],
            "serving_container_start": seen["serving_running"] - seen["converted"],
            "model_load": load_seconds(kubectl, pod["metadata"]["name"]),
            "container_start_to_ready": seen["serving_ready"] - seen["serving_running"]}


def scale_up(kubectl: cp.Kubectl, name: str) -> dict[str, float]:
    (old,) = kubectl.items("pods", namespace=MODELS, selector=f"modelkiln.io/model={name},app.kubernetes.io/component=serving")
    before = {old["metadata"]["name"]}
    start = time.monotonic()
    kubectl.run("scale", "-n", MODELS, f"im/{name}", "--replicas=2")
    seen = first_seen(kubectl, {
        "running": lambda pods: _container(pods, name, "serving", "running", exclude=before),
        "ready": lambda pods: _ready(pods, name, exclude=before),
    }, start=start)
    return {"scale_to_running": seen["running"], "new_pod_start_to_ready": seen["ready"] - seen["running"]}


def image_sizes() -> str:
    out = subprocess.run(["bash", str(rn.BUILD_IMAGES)], capture_output=True, text=True, check=True)
    return "\n".join(line for line in out.stdout.splitlines() if "MiB" in line)


def median_row(label: str, rounds: list[dict[str, float]]) -> str:
    keys = list(rounds[0])
    return "\n".join(f"| {label} | {k} | " + " | ".join(f"{r[k]:.1f}" for r in rounds)
                     + f" | {statistics.median(r[k] for r in rounds):.1f} |" for k in keys)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    reason = rn.cannot_run_containers()
    if reason:
        print(f"cannot run a real node here: {reason}", file=sys.stderr)
        return 1
    rn.install_packages()
    bin_dir = cp.build_binaries(go=cp.find_go())
    rn.build_images()
    with tempfile.TemporaryDirectory(prefix="bench-real-node-") as tmp:
        work = Path(tmp)
        plane = cp.start_control_plane(bin_dir=bin_dir, work_dir=work / "control-plane", pools=("gpu", "npu"))
        node = None
        try:
            node = rn.start_real_node(plane, bin_dir=bin_dir, work_dir=work / "node", cache=rn.cache_dir())
            kubectl = plane.kubectl
            started = time.monotonic()
            setup.install_on_real_node(kubectl, Helm(bin_dir / "helm", work), work)
            print(f"helm install --wait (operator pod Ready): {time.monotonic() - started:.1f} s")
            rounds = [one_round(kubectl, f"digits-{i}") for i in range(args.rounds)]
            scales = [scale_up(kubectl, f"digits-{i}") for i in range(args.rounds)]
        finally:
            if node is not None:
                node.stop()
            plane.stop()
    cpu = cpu_model()
    print(f"\n{datetime.date.today()}, {cpu}, {os.cpu_count()} cores; seconds")
    print("| | part | " + " | ".join(f"round {i + 1}" for i in range(args.rounds)) + " | median |")
    print("| --- | --- | " + " | ".join("---" for _ in range(args.rounds)) + " | --- |")
    print(median_row("apply", rounds))
    print(median_row("scale 1 -> 2", scales))
    print("\nimages:\n" + image_sizes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
