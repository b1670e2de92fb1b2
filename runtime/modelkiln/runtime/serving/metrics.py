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
# A rollout compares two versions' p99 as a ratio: buckets 20% apart (50 µs to 60 s) keep the
# estimate within that of the truth, where LATENCY_BUCKETS' steps of 2 to 2.5 would not.
ROLLOUT_BUCKETS = tuple(round(0.00005 * 1.2 ** i, 7) for i in range(78))
COSINE_BUCKETS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)


@dataclass
class ModelChildren:
    """The label children of one model for one protocol."""

    request_duration: prom.metrics.Histogram
    queue_duration: prom.metrics.Histogram
    inference_duration: prom.metrics.Histogram
    inflight: prom.metrics.Gauge


@dataclass
class RolloutChildren:
    """The label children of one version in a rollout: its answers to clients and its shadow copies."""

    client_ok: prom.metrics.Counter
    client_error: prom.metrics.Counter
    client_rejected: prom.metrics.Counter
    shadow_ok: prom.metrics.Counter
    shadow_error: prom.metrics.Counter
    inference: prom.metrics.Histogram


@dataclass
class Comparison:
    """The label children of one model's comparison of its two versions."""

    compared: prom.metrics.Counter
    agreements: prom.metrics.Counter
    cosine: prom.metrics.Histogram
    dropped: prom.metrics.Counter


class RolloutMetrics:
    """`modelkiln_rollout_*`: registered only by a server started with --rollout."""

    def __init__(self, registry: prom.CollectorRegistry) -> None:
        r = registry
        self.requests = prom.Counter(
            "modelkiln_rollout_requests", "Rollout requests by version, role (stable or candidate), "
            "path (client: answered a client; shadow: a copy) and outcome (ok, error: a server fault, "
            "rejected: the client's mistake)", ["model", "version", "role", "path", "outcome"], registry=r)
        self.inference = prom.Histogram(
            "modelkiln_rollout_inference_duration_seconds",
            "Time OpenVINO spent on one rollout request, by version and role",
            ["model", "version", "role"], buckets=ROLLOUT_BUCKETS, registry=r)
        self.compared = prom.Counter(
            "modelkiln_rollout_compared", "Requests answered by both versions and compared",
            ["model"], registry=r)
        self.agreements = prom.Counter(
            "modelkiln_rollout_agreements", "Compared requests whose top-1 class agreed (a batch "
            "counts its share of agreeing rows)", ["model"], registry=r)
        self.cosine = prom.Histogram(
            "modelkiln_rollout_cosine", "Cosine similarity of the two versions' first outputs per "
            "compared request", ["model"], buckets=COSINE_BUCKETS, registry=r)
        self.dropped = prom.Counter(
            "modelkiln_rollout_shadow_dropped", "Shadow copies not run: the shadow queue was full "
            "or the other version not loaded", ["model"], registry=r)
        self.info = prom.Gauge(
            "modelkiln_rollout_info", "1 for the rollout this server runs",
            ["model", "strategy", "stable", "candidate", "weight", "sample"], registry=r)

    def children(self, model: str, version: str, role: str) -> RolloutChildren:
        def requests(path: str, outcome: str) -> prom.metrics.Counter:
            return self.requests.labels(model, version, role, path, outcome)

        return RolloutChildren(
            client_ok=requests("client", "ok"), client_error=requests("client", "error"),
            client_rejected=requests("client", "rejected"), shadow_ok=requests("shadow", "ok"),
            shadow_error=requests("shadow", "error"), inference=self.inference.labels(model, version, role))

    def comparison(self, model: str) -> Comparison:
        return Comparison(compared=self.compared.labels(model), agreements=self.agreements.labels(model),
                          cosine=self.cosine.labels(model), dropped=self.dropped.labels(model))


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
