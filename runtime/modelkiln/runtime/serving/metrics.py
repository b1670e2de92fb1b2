"""The runtime's Prometheus metrics (names fixed in docs/interfaces.md), cheap on the hot path.

Every metric lives in a registry of its own (the process's default one would also export
whatever libraries register). Label children are looked up once per model and cached: a request
touches prebuilt children only, never `labels(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import prometheus_client as prom

# Seconds: from sub-millisecond tiny models to multi-second large ones.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class ModelChildren:
    """The label children of one model for one protocol."""

    request_duration: prom.metrics.Histogram
    queue_duration: prom.metrics.Histogram
    inference_duration: prom.metrics.Histogram
    inflight: prom.metrics.Gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = prom.Counter(
            "modelkiln_requests", "Requests by model, version, protocol and status code",
            ["model", "version", "protocol", "code"], registry=r)
        self.request_duration = prom.Histogram(
            "modelkiln_request_duration_seconds", "Time from request received to result ready",
            ["model", "protocol"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_duration = prom.Histogram(
            "modelkiln_queue_duration_seconds", "Time a request waited for a free infer request",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_duration = prom.Histogram(
            "modelkiln_inference_duration_seconds", "Time OpenVINO spent on one request",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inflight = prom.Gauge(
            "modelkiln_inflight_requests", "Requests being served now", ["model"], registry=r)
        self.load_duration = prom.Histogram(
            "modelkiln_model_load_duration_seconds", "Time to read and compile a model version",
            ["model", "version"], buckets=LOAD_BUCKETS, registry=r)
        self.model_ready = prom.Gauge(
            "modelkiln_model_ready", "1 when the model version is loaded and serving",
            ["model", "version"], registry=r)
        self._children: dict[tuple[str, str], ModelChildren] = {}
        self._counters: dict[tuple[str, str, str, str], prom.metrics.Counter] = {}

    def children(self, model: str, protocol: str) -> ModelChildren:
        key = (model, protocol)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = ModelChildren(
                request_duration=self.request_duration.labels(model, protocol),
                queue_duration=self.queue_duration.labels(model),
                inference_duration=self.inference_duration.labels(model),
                inflight=self.inflight.labels(model))
        return found

    def count(self, model: str, version: str, protocol: str, code: str) -> None:
        key = (model, version, protocol, code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(*key)
        counter.inc()

    def exposition(self) -> bytes:
        return prom.generate_latest(self.registry)
