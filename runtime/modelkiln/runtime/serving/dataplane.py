"""The one protocol-neutral data plane: route a request, run it, account for it.

Every protocol adapter turns its wire format into a `decode(served)` callable and awaits
`DataPlane.infer`. Here the model version is resolved (404/503), the adapter's decoder builds
validated input arrays for exactly that version, the version is pinned for the request's
duration (so an unload waits for it), OpenVINO runs it, and one place records the request in
the metrics, whatever the outcome. A model in a rollout (rollout.py) picks the version of each
request that names none, then comes back here with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from modelkiln.runtime.engine import TensorSpec
from modelkiln.runtime.errors import InferenceFailed, ServingError, one_line
from modelkiln.runtime.serving.metrics import Metrics
from modelkiln.runtime.names import shown
from modelkiln.runtime.serving.repository import Repository, ServedVersion
from modelkiln.runtime.serving.rollout import Rollout

log = logging.getLogger(__name__)

# One metric label for every model name or version that is not served: labels taken from what
# a client sent would add a series per bogus request.
UNKNOWN = "_unknown"


@dataclass
class Decoded:
    """A request as the engine wants it: input arrays by index and the outputs to return."""

    arrays: dict[int, np.ndarray]
    outputs: list[TensorSpec]


@dataclass
class Result:
    served: ServedVersion
    outputs: list[TensorSpec]
    arrays: list[np.ndarray]
    inference_seconds: float


class DataPlane:
    def __init__(self, *, repository: Repository, metrics: Metrics,
                 rollouts: dict[str, Rollout] | None = None) -> None:
        self.repository = repository
        self.metrics = metrics
        self.rollouts = rollouts or {}  # by model; empty (falsy) costs one check per request
        self.draining = False

    @property
    def live(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return not self.draining and self.repository.all_ready

    def resolve(self, model: str, version: str | None) -> ServedVersion:
        if self.rollouts and not version and model in self.rollouts:
            # in a rollout the model is ready, and described, as the version clients count on
            version = str(self.rollouts[model].plan.stable)
        return self.repository.resolve(model, version)

    async def infer(self, *, model: str, version: str | None, protocol: str,
                    decode: Callable[[ServedVersion], Decoded], offload: bool = False) -> Result:
        """Resolve, decode, run and account for one request.

        `offload`: the decoding takes long (a large JSON body), so it runs on a thread and the
        event loop keeps serving other clients meanwhile.
        """
        if self.rollouts and not version and model in self.rollouts:
            return await self.rollouts[model].infer(self.infer, model=model, protocol=protocol,
                                                    decode=decode, offload=offload)
        started = time.perf_counter()
        label = model if model in self.repository.models else UNKNOWN
        children = self.metrics.children(label, protocol)
        children.inflight.inc()
        version_label = UNKNOWN
        served = None
        try:
            served = self.resolve(model, version)
            version_label = served.label
            served.acquire()  # pinned while it decodes too: a thread may take a while
            try:
                decoded = await asyncio.to_thread(decode, served) if offload else decode(served)
                run = await served.compiled.infer(decoded.arrays,
                                                  tuple(s.index for s in decoded.outputs))
            finally:
                served.release()
        except ServingError as error:
            code = error.grpc_code.name if protocol == "grpc" else str(error.http_status)
            self.metrics.count(label, version_label, protocol, code)
            raise
        except Exception as error:  # a server fault: logged with its traceback, never sent
            log.exception("request to model %s failed", shown(model))
            self.metrics.count(label, version_label, protocol,
                               "INTERNAL" if protocol == "grpc" else "500")
            raise InferenceFailed(f"internal error: {one_line(error)}") from None
        finally:
            children.inflight.dec()
        children.queue_duration.observe(run.queue_seconds)
        children.inference_duration.observe(run.inference_seconds)
        children.request_duration.observe(time.perf_counter() - started)
        self.metrics.count(label, version_label, protocol, "OK" if protocol == "grpc" else "200")
        return Result(served=served, outputs=decoded.outputs, arrays=run.outputs,
                      inference_seconds=run.inference_seconds)
