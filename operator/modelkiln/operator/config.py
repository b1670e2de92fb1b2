"""The operator's settings, read once from its environment (the Deployment sets them).

Builders never read these themselves: flows pass the values in, so a builder's output depends
only on its arguments. Device pools are not here: they live in a ConfigMap, read on every
reconcile so that an edit needs no restart.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

SERVICEACCOUNT_NAMESPACE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    namespace: str  # where the device-pool ConfigMap lives (the operator's own namespace)
    device_pools_configmap: str
    server_image: str  # serving Deployments (`modelkiln serve`)
    converter_image: str  # conversion Jobs (`modelkiln convert`)
    repository_claim: str  # PVC holding the model repository, in each InferenceModel's namespace
    resync_seconds: float

    @property
    def device_pools_source(self) -> str:
        return f"ConfigMap {self.namespace}/{self.device_pools_configmap}"


def _own_namespace() -> str:
    if SERVICEACCOUNT_NAMESPACE.is_file():
        return SERVICEACCOUNT_NAMESPACE.read_text().strip()
    return "modelkiln-system"


def from_environment(environ: dict[str, str] | None = None) -> OperatorConfig:
    env = os.environ if environ is None else environ
    text = env.get("MODELKILN_RESYNC_SECONDS", "10")
    try:
        resync = float(text)
    except ValueError:
        resync = 0.0
    if not resync > 0:
        raise ValueError(f"MODELKILN_RESYNC_SECONDS must be a number of seconds above 0, got {text!r}")
    return OperatorConfig(
        namespace=env.get("MODELKILN_NAMESPACE") or _own_namespace(),
        device_pools_configmap=env.get("MODELKILN_DEVICE_POOLS_CONFIGMAP", "modelkiln-device-pools"),
        server_image=env.get("MODELKILN_SERVER_IMAGE", "ghcr.io/modelkiln/server:0.1.0"),
        converter_image=env.get("MODELKILN_CONVERTER_IMAGE", "ghcr.io/modelkiln/converter:0.1.0"),
        repository_claim=env.get("MODELKILN_REPOSITORY_CLAIM", "modelkiln-models"),
        resync_seconds=resync,
    )
