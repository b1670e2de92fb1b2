"""OpenVINO behind an asyncio-friendly door: compile a model version, run requests on all streams.

`Engine` owns the one `openvino.Core` and turns the serving settings (device, performance hint,
inference precision, compiled-model cache) into compile properties. `CompiledModel.infer`
runs one request on a pool of OpenVINO infer requests (twice the device's optimal number), so
concurrent requests fill every stream. The event loop does not wait on a model: a request starts
asynchronously and OpenVINO's completion callback hands the outputs back to the loop thread.
The exception is a model whose inferences take a fraction of a millisecond (a tiny MLP): its
small requests run synchronously on the loop thread, as that costs less than the hand-off.

OpenVINO does not call the completion callback when an inference fails, so a slow sweep asks
busy requests whether they failed and fails their callers; a failure never leaks a pool slot.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import pathlib
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import openvino as ov

from modelkiln.runtime import datatypes
from modelkiln.runtime.errors import InferenceFailed, one_line

log = logging.getLogger(__name__)

DEVICES = ("CPU", "GPU", "NPU", "VPU", "AUTO")
DEVICE_ALIASES = {"VPU": "NPU"}  # VPU is the older name of Intel's NPU
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
INFERENCE_PRECISIONS = ("auto", "f32", "bf16", "f16")
SWEEP_SECONDS = 0.5
# A request runs on the event loop's thread, synchronously, when the model's inferences take
# less than this (a moving average) and its inputs are small: handing a tiny model's request to OpenVINO's
# threads and its answer back (two thread hops, the GIL changing hands) costs more CPU than
# the inference itself. Anything slower, or larger, goes to the pool of infer requests.
INLINE_SECONDS = 0.0005
INLINE_BYTES = 64 * 1024
# On CPU those run on the model compiled a second time with one stream, whose synchronous
# inference stays in the calling thread: with several streams it is handed to a stream's
# thread and waited for, which costs more than a tiny model's inference. Only for model files
# up to this size: a fast model can still hold large weights (an embedding table).
SINGLE_STREAM_MAX_BYTES = 64 * 1024 * 1024
# Twice the device's optimal number of infer requests: while one runs on a stream the next is
# already queued behind it, so a stream never idles waiting for the event loop to hand it work.
REQUESTS_PER_OPTIMAL = 2


@dataclass(frozen=True)
class EngineSettings:
    """How one model is compiled. `inference_precision="auto"` keeps the device's default."""

    device: str = "CPU"
    performance_hint: str = "THROUGHPUT"
    inference_precision: str = "auto"

    def __post_init__(self) -> None:
        if self.device.upper() not in DEVICES and not self.device.upper().startswith(
                ("AUTO:", "MULTI:", "HETERO:", "GPU.")):
            raise ValueError(f"device {self.device!r}: expected one of {', '.join(DEVICES)}")
        if self.performance_hint not in PERFORMANCE_HINTS:
            raise ValueError(f"performance hint {self.performance_hint!r}: expected one of "
                             f"{', '.join(PERFORMANCE_HINTS)}")
        if self.inference_precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"inference precision {self.inference_precision!r}: expected one of "
                             f"{', '.join(INFERENCE_PRECISIONS)}")

    @property
    def openvino_device(self) -> str:
        device = self.device.upper()
        return DEVICE_ALIASES.get(device, device)

    def compile_properties(self) -> dict[str, str]:
        properties = {"PERFORMANCE_HINT": self.performance_hint}
        if self.inference_precision != "auto":
            properties["INFERENCE_PRECISION_HINT"] = self.inference_precision
        return properties


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the protocols describe it; dynamic dimensions are -1."""

    name: str
    index: int
    datatype: datatypes.Datatype
    shape: tuple[int, ...]
    rank_is_dynamic: bool = False


def _tensor_specs(ports) -> list[TensorSpec]:
    specs = []
    for index, port in enumerate(ports):
        partial = port.get_partial_shape()
        dynamic_rank = partial.rank.is_dynamic
        shape = () if dynamic_rank else tuple(
            -1 if dim.is_dynamic else dim.get_length() for dim in partial)
        specs.append(TensorSpec(name=port.get_any_name(), index=index,
                                datatype=datatypes.from_openvino(port.get_element_type()),
                                shape=shape, rank_is_dynamic=dynamic_rank))
    return specs


@dataclass
class _Slot:
    """One OpenVINO infer request and the caller waiting on it."""

    request: ov.InferRequest
    future: asyncio.Future | None = None
    output_indices: tuple[int, ...] = ()
    inference_seconds: float = 0.0


@dataclass
class InferResult:
    outputs: list[np.ndarray]
    queue_seconds: float
    inference_seconds: float


@dataclass
class CompiledModel:
    """One compiled model version and its pool of infer requests (create on the loop thread)."""

    compiled: ov.CompiledModel
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # makes the single-stream copy for requests run inline (None: they use this model)
    single_stream: Callable[[ov.CompiledModel], ov.CompiledModel | None] | None = None
    slots: list[_Slot] = field(default_factory=list)
    # a moving average of OpenVINO's own measure, so that one inference slowed down by a busy
    # machine does not send the next ones to the pool; unknown until a first request has run
    typical_inference_seconds: float = float("inf")

    def __post_init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle: collections.deque[_Slot] = collections.deque()
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        optimal = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        for _ in range(optimal * REQUESTS_PER_OPTIMAL):
            slot = _Slot(request=self.compiled.create_infer_request())
            slot.request.set_callback(self._on_done, slot)
            self.slots.append(slot)
            self._idle.append(slot)
        # the loop thread's own: a request run inline ends before the next can start
        self._inline_request = self.compiled.create_infer_request()
        self._single_stream_task: asyncio.Task | None = None
        self._sweeper = self._loop.create_task(self._sweep_failed())

    @property
    def infer_requests(self) -> int:
        return len(self.slots)

    async def infer(self, arrays: dict[int, np.ndarray],
                    output_indices: tuple[int, ...]) -> InferResult:
        """Run one request; `arrays` maps input index to a C-contiguous array of its dtype."""
        if (self.typical_inference_seconds < INLINE_SECONDS
                and sum(array.nbytes for array in arrays.values()) <= INLINE_BYTES):
            # One turn of the loop first: the requests that arrived meanwhile count themselves in
            # modelkiln_inflight_requests (what request-based autoscaling reads) before this one
            # holds the loop, and a probe or a scrape waits one inference at most.
            await asyncio.sleep(0)
            return self._infer_inline(arrays, output_indices)
        queued = time.perf_counter()
        slot = self._idle.popleft() if self._idle else await self._wait_for_slot()
        started = time.perf_counter()
        slot.future = future = self._loop.create_future()
        slot.output_indices = output_indices
        try:
            self._set_inputs(slot.request, arrays)
            slot.request.start_async()
        except Exception as error:  # a shape OpenVINO rejects before starting
            self._release(slot)
            raise InferenceFailed(f"inference failed: {one_line(error)}") from None
        outputs = await future
        return InferResult(outputs=outputs, queue_seconds=started - queued,
                           inference_seconds=slot.inference_seconds)

    def _infer_inline(self, arrays: dict[int, np.ndarray],
                      output_indices: tuple[int, ...]) -> InferResult:
        if self._single_stream_task is None and self.single_stream is not None:
            self._single_stream_task = self._loop.create_task(self._use_single_stream())
        request = self._inline_request
        try:
            self._set_inputs(request, arrays)
            request.infer()  # OpenVINO releases the GIL meanwhile
            outputs = [request.get_output_tensor(i).data.copy() for i in output_indices]
        except Exception as error:
            log.error("inference failed: %s", one_line(error))
            self.typical_inference_seconds = float("inf")  # try the next one on the pool
            raise InferenceFailed(f"inference failed: {one_line(error)}") from None
        return InferResult(outputs=outputs, queue_seconds=0.0,
                           inference_seconds=self._measured(request))

    def _measured(self, request: ov.InferRequest) -> float:
        """The request's inference time, by OpenVINO, also taken into the moving average."""
        seconds = request.latency / 1000
        typical = self.typical_inference_seconds
        # capped: a model is slow when most of its inferences are, not when one was preempted
        sample = min(seconds, 2 * INLINE_SECONDS)
        self.typical_inference_seconds = (sample if typical == float("inf")
                                          else typical + (sample - typical) / 8)
        return seconds

    async def _use_single_stream(self) -> None:
        try:
            copy = await asyncio.to_thread(self.single_stream, self.compiled)
        except Exception as error:  # inline requests keep using this model's own streams
            log.warning("no single-stream copy of the model for its fast requests: %s",
                        one_line(error))
            return
        if copy is not None:
            self._inline_request = copy.create_infer_request()

    @staticmethod
    def _set_inputs(request: ov.InferRequest, arrays: dict[int, np.ndarray]) -> None:
        # Arrays with their own memory (decoded JSON) are shared with OpenVINO as they are;
        # read-only views over request bytes are copied once, as OpenVINO wants writable
        # memory. Tensors are set directly: start_async(dict)'s dispatcher costs more than
        # a tiny model's whole inference.
        for index, array in arrays.items():
            request.set_input_tensor(index, ov.Tensor(array, shared_memory=array.flags.writeable))

    async def _wait_for_slot(self) -> _Slot:
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot, then cancelled
                self._release(waiter.result())
            raise

    def _release(self, slot: _Slot) -> None:
        slot.future = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled caller gives its turn to the next one
                waiter.set_result(slot)
                return
        self._idle.append(slot)

    def _on_done(self, slot: _Slot) -> None:
        # OpenVINO's thread: copy the outputs out before the request is reused, then hand over
        request = slot.request
        # OpenVINO's own measure: the wall clock here would add the wait for the GIL
        slot.inference_seconds = self._measured(request)
        outputs = [request.get_output_tensor(i).data.copy() for i in slot.output_indices]
        self._loop.call_soon_threadsafe(self._finish, slot, outputs, None)

    def _finish(self, slot: _Slot, outputs, error: Exception | None) -> None:
        future = slot.future
        self._release(slot)
        if future is None or future.done():
            return
        if error is None:
            future.set_result(outputs)
        else:
            future.set_exception(error)

    async def _sweep_failed(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            for slot in self.slots:
                if slot.future is None:
                    continue
                try:
                    slot.request.wait_for(0)
                except Exception as error:  # the inference failed: no callback will come
                    log.error("inference failed: %s", one_line(error))
                    self._finish(slot, None,
                                 InferenceFailed(f"inference failed: {one_line(error)}"))

    def close(self) -> None:
        self._sweeper.cancel()
        if self._single_stream_task is not None:
            self._single_stream_task.cancel()
        self.slots.clear()
        self._idle.clear()


class Engine:
    """The process's OpenVINO Core; compiles model files with per-model settings."""

    def __init__(self, *, cache_dir: str | None = None) -> None:
        self.core = ov.Core()
        if cache_dir:
            self.core.set_property({"CACHE_DIR": cache_dir})

    def compile(self, path: pathlib.Path, settings: EngineSettings) -> ov.CompiledModel:
        """Read and compile a model file; blocking, so callers run it in a thread."""
        return self.core.compile_model(str(path), settings.openvino_device,
                                       settings.compile_properties())

    def single_stream(self, path: pathlib.Path, settings: EngineSettings,
                      compiled: ov.CompiledModel) -> ov.CompiledModel | None:
        """The model compiled like `compiled` but on one CPU stream with as many threads as
        one of its streams (the same kernels, the same results); None off the CPU. Blocking."""
        if compiled.get_property("EXECUTION_DEVICES") != ["CPU"]:
            return None
        threads = int(compiled.get_property("INFERENCE_NUM_THREADS")) // max(
            1, int(compiled.get_property("NUM_STREAMS")))
        return self.core.compile_model(str(path), "CPU", {
            **settings.compile_properties(), "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(max(1, threads))})

    @staticmethod
    def describe(compiled: ov.CompiledModel) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return _tensor_specs(compiled.inputs), _tensor_specs(compiled.outputs)
