"""A rollout inside one serving pod: the split between two versions, the shadow copy, the comparison.

`modelkiln serve --rollout '{"model": "digits", "strategy": "Shadow", "stable": 3, "candidate": 4}'`
(or `"strategy": "Canary", "weight": 10`). A request that names no version is answered by the
stable version (Shadow), or by the candidate with probability `weight` percent (Canary); then the
other version runs the same decoded inputs off the client's path, and the two first outputs are
compared (top-1 agreement, cosine). Requests that name a version are not part of the rollout.

The shadow copy never costs a client anything but its CPU: at most `queue` copies are pending, a
copy that finds them all taken is dropped and counted, and a failing copy only counts. The operator
reads the counters from /metrics and decides (docs/interfaces.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

from modelkiln.runtime.errors import ServingError
from modelkiln.runtime.similarity import cosine
from modelkiln.runtime.serving.metrics import RolloutChildren, RolloutMetrics
from modelkiln.runtime.serving.repository import Repository, ServedVersion, State

log = logging.getLogger(__name__)

STRATEGIES = ("Shadow", "Canary")
DEFAULT_QUEUE = 16
EXPECTED = ('expected {"model": NAME, "strategy": "Shadow"|"Canary", "stable": N, "candidate": M, '
            '"sample": 0..1, "weight": 0..100, "queue": N}')


@dataclass(frozen=True)
class RolloutPlan:
    model: str
    strategy: str
    stable: int
    candidate: int
    sample: float = 1.0  # share of requests whose other version runs as a shadow
    weight: float = 0.0  # Canary: percent of unversioned requests the candidate answers
    queue: int = DEFAULT_QUEUE

    @classmethod
    def parse(cls, text: str) -> RolloutPlan:
        """Read `--rollout`; raises ValueError naming the field and what was expected."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--rollout: not JSON ({error}); {EXPECTED}") from None
        if not isinstance(value, dict):
            raise ValueError(f"--rollout: {EXPECTED}")
        unknown = set(value) - {"model", "strategy", "stable", "candidate", "sample", "weight", "queue"}
        if unknown:
            raise ValueError(f"--rollout: unknown key(s) {sorted(unknown)}; {EXPECTED}")
        if not isinstance(value.get("model"), str) or value.get("strategy") not in STRATEGIES:
            raise ValueError(f"--rollout: model and strategy are required; {EXPECTED}")
        for key in ("stable", "candidate"):
            if not _number(value.get(key), int) or value[key] < 0:
                raise ValueError(f"--rollout: {key}: expected a version number, got {value.get(key)!r}")
        if value["stable"] == value["candidate"]:
            raise ValueError(f"--rollout: stable and candidate are both version {value['stable']}")
        for key, low, high in (("sample", 0, 1), ("weight", 0, 100), ("queue", 1, 100000)):
            if key in value and not (_number(value[key], (int, float)) and low <= value[key] <= high):
                raise ValueError(f"--rollout: {key}: expected a number from {low} to {high}, "
                                 f"got {value[key]!r}")
        return cls(**value)


def _number(value: object, kind) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


Run = Callable[..., Awaitable]  # DataPlane.run_one


class Rollout:
    """One model's rollout: picks the version per request and runs the shadow copies."""

    def __init__(self, plan: RolloutPlan, *, repository: Repository, metrics: RolloutMetrics,
                 chance: Callable[[], float] = random.random) -> None:
        self.plan = plan
        self.repository = repository
        self.chance = chance
        self.labels = {plan.stable: str(plan.stable), plan.candidate: str(plan.candidate)}
        self.children = {version: metrics.children(plan.model, label, role)
                         for version, label, role in ((plan.stable, str(plan.stable), "stable"),
                                                      (plan.candidate, str(plan.candidate), "candidate"))}
        self.compared = metrics.comparison(plan.model)
        metrics.info.labels(plan.model, plan.strategy, str(plan.stable), str(plan.candidate),
                            f"{plan.weight:g}", f"{plan.sample:g}").set(1)
        self.pending: set[asyncio.Task] = set()
        self._warned = False

    def _available(self, version: int) -> ServedVersion | None:
        model = self.repository.models.get(self.plan.model)
        served = None if model is None else model.versions.get(version)
        return served if served is not None and served.state is State.AVAILABLE else None

    def pick(self) -> tuple[int, int]:
        """(the version answering the client, the other one)."""
        plan = self.plan
        if (plan.strategy == "Canary" and self.chance() * 100 < plan.weight
                and self._available(plan.candidate) is not None):
            return plan.candidate, plan.stable
        return plan.stable, plan.candidate

    async def infer(self, run: Run, *, model: str, protocol: str, decode, offload: bool):
        primary, other = self.pick()
        captured = []

        def capture(served):
            decoded = decode(served)
            captured.append(decoded)
            return decoded

        children = self.children[primary]
        try:
            result = await run(model=model, version=self.labels[primary], protocol=protocol,
                               decode=capture, offload=offload)
        except ServingError as error:
            (children.client_rejected if error.http_status < 500 else children.client_error).inc()
            raise
        children.client_ok.inc()
        children.inference.observe(result.inference_seconds)
        if self.chance() < self.plan.sample:
            self._start_shadow(other, captured[0], result)
        return result

    def _start_shadow(self, version: int, decoded, result) -> None:
        served = self._available(version)
        if served is None or len(self.pending) >= self.plan.queue:
            self.compared.dropped.inc()
            return
        served.acquire()  # pinned until the copy ran: an unload waits for it
        task = asyncio.get_running_loop().create_task(self._shadow(served, decoded, result))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _shadow(self, served: ServedVersion, decoded, primary) -> None:
        children = self.children[served.version]
        try:
            if _signature(served.inputs) != _signature(primary.served.inputs):
                raise ValueError(f"version {served.version} takes other inputs than version "
                                 f"{primary.served.version}: {_signature(served.inputs)}")
            run = await served.compiled.infer(decoded.arrays, tuple(s.index for s in decoded.outputs))
        except Exception as error:  # counted against the version; the client has its answer
            children.shadow_error.inc()
            (log.debug if self._warned else log.warning)(
                "shadow request to model %s version %s failed: %s", served.model, served.version, error)
            self._warned = True
            return
        finally:
            served.release()
        children.shadow_ok.inc()
        children.inference.observe(run.inference_seconds)
        agreement, cosine = compare(primary.arrays[0], run.outputs[0])
        self.compared.compared.inc()
        self.compared.agreements.inc(agreement)
        self.compared.cosine.observe(cosine)

    async def close(self) -> None:
        """Let the pending copies finish (a drain: they hold their versions)."""
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)


def _signature(specs) -> tuple:
    return tuple((s.name, s.datatype, s.shape) for s in specs)


def compare(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """(share of rows whose top-1 agrees, cosine similarity) of the first outputs of one request.

    Top-1 is the argmax over the last axis of [batch, ...classes]; a 1-D output ([batch] of labels)
    agrees where the values are equal."""
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if a.shape != b.shape:
        return 0.0, 0.0
    if a.ndim > 1:
        agreement = np.mean(a.reshape(a.shape[0], -1).argmax(axis=1) == b.reshape(b.shape[0], -1).argmax(axis=1))
    else:
        agreement = np.mean(a == b) if a.size else 1.0
    return float(agreement), cosine(a.ravel(), b.ravel())
