"""The operator's own Prometheus metrics (names in docs/interfaces.md).

Phases are remembered per model in memory only to publish the gauge: after a restart the
resync fills them in again within one interval.
"""

from __future__ import annotations

import threading

import prometheus_client

RECONCILES = prometheus_client.Counter(
    "modelkiln_operator_reconciles", "Reconciles of InferenceModels by outcome (success, error).", ["outcome"])
RECONCILE_DURATION = prometheus_client.Histogram(
    "modelkiln_operator_reconcile_duration_seconds", "Time one reconcile of an InferenceModel takes.")
MODELS = prometheus_client.Gauge("modelkiln_operator_models", "InferenceModels by phase.", ["phase"])
PHASES = ("Pending", "Converting", "Deploying", "Ready", "Failed")

_phases: dict[str, str] = {}
_lock = threading.Lock()  # sync handlers run in kopf's thread pool


def record_phase(uid: str, phase: str | None) -> None:
    """Remember the phase of model `uid` (None: the model is gone) and republish the gauge."""
    with _lock:
        if phase is None:
            _phases.pop(uid, None)
        else:
            _phases[uid] = phase
        for name in PHASES:
            MODELS.labels(phase=name).set(sum(1 for p in _phases.values() if p == name))
