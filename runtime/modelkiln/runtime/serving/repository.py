"""The model repository on disk (OVMS layout) and the versions loaded from it.

`REPO/<model>/<version>/model.xml|model.bin` (or `model.onnx`); version directories are
integers, `.tmp-*` siblings are publications in progress and ignored, and any other directory
("²", "1.5") is skipped with a warning, never stopping the others. A poll compares the
disk with what is loaded: a new version is compiled (in a thread, the loop keeps serving) and
becomes the default once available; a version the policy no longer wants stops taking new
requests and is unloaded after its in-flight ones finish. A version that fails to load is
recorded as FAILED with its reason and retried only when its files change; it never affects
other models or versions.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import pathlib
import time
from dataclasses import dataclass, field
from typing import Callable

from modelkiln.runtime.serving.config import ModelSettings
from modelkiln.runtime.engine import SINGLE_STREAM_MAX_BYTES, CompiledModel, Engine, TensorSpec
from modelkiln.runtime.errors import ModelNotFound, ModelNotReady, one_line
from modelkiln.runtime.serving.metrics import Metrics
from modelkiln.runtime.names import check_model_name, parse_version, shown, version_number

log = logging.getLogger(__name__)

MODEL_FILES = ("model.xml", "model.onnx")


class State(enum.Enum):
    # TF-Serving's / OVMS's version states, so their status APIs can be answered as they are
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    FAILED = "FAILED"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass
class ServedVersion:
    """One version of a model: its state, its compiled model, and who is using it."""

    model: str
    version: int
    path: pathlib.Path
    files: tuple = ()  # (name, size, mtime) of the files it was loaded from
    state: State = State.LOADING
    reason: str = ""
    compiled: CompiledModel | None = None
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    inputs_by_name: dict[str, TensorSpec] = field(default_factory=dict)
    outputs_by_name: dict[str, TensorSpec] = field(default_factory=dict)
    label: str = ""  # str(version), for responses and metric labels
    platform: str = ""  # KServe v2 metadata: "openvino_ir" or "openvino_onnx"
    inflight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.label = str(self.version)
        self._idle.set()

    def acquire(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def drained(self) -> None:
        await self._idle.wait()


@dataclass
class ServedModel:
    name: str
    versions: dict[int, ServedVersion] = field(default_factory=dict)
    default: ServedVersion | None = None  # the highest AVAILABLE version
    problem: str = ""  # why the model has no default version, when it has none

    def refresh_default(self) -> None:
        available = [v for v in self.versions.values() if v.state is State.AVAILABLE]
        self.default = max(available, key=lambda v: v.version) if available else None
        if self.default is not None:
            self.problem = ""
            return
        failed = [v for v in self.versions.values() if v.state is State.FAILED]
        loading = [v for v in self.versions.values() if v.state is State.LOADING]
        if loading:
            self.problem = f"model '{self.name}' is loading version {loading[0].version}"
        elif failed:
            worst = max(failed, key=lambda v: v.version)
            self.problem = (f"model '{self.name}' version {worst.version} failed to load: "
                            f"{worst.reason}")
        else:
            self.problem = f"model '{self.name}' has no version directory with " \
                           f"{' or '.join(MODEL_FILES)}"

    @property
    def ready(self) -> bool:
        return self.default is not None


def _model_file(directory: pathlib.Path) -> pathlib.Path | None:
    for name in MODEL_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def _fingerprint(directory: pathlib.Path) -> tuple:
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                        for p in directory.iterdir() if p.is_file()))


class Repository:
    """Loads and unloads model versions to match the repository directory."""

    def __init__(self, *, root: pathlib.Path, engine: Engine,
                 settings_for: Callable[[str], ModelSettings], metrics: Metrics,
                 only: list[str] | None = None) -> None:
        self.root = root
        self.engine = engine
        self.settings_for = settings_for
        self.metrics = metrics
        self.only = list(only or [])
        self.models: dict[str, ServedModel] = {name: ServedModel(name) for name in self.only}
        self.loaded_once = False
        self._unloading: set[asyncio.Task] = set()
        self._skipped: set[pathlib.Path] = set()  # directories already warned about

    # ---- lookups (hot path: dictionary reads only) ----

    def model(self, name: str) -> ServedModel:
        found = self.models.get(name)
        if found is None:
            check_model_name(name)  # a name no directory can have is a 400, not a 404
            raise ModelNotFound(f"model {shown(name)} is not served here; "
                                f"available: {', '.join(sorted(self.models)) or 'none'}")
        return found

    def resolve(self, name: str, version: str | None) -> ServedVersion:
        """The version that answers a request: the named one, else the model's default."""
        if not version:
            model = self.model(name)
            if model.default is None:
                raise ModelNotReady(model.problem)
            return model.default
        served = self.resolve_any(name, version)
        if served.state is not State.AVAILABLE:
            detail = f": {served.reason}" if served.reason else ""
            raise ModelNotReady(f"model '{name}' version {served.version} is "
                                f"{served.state.value.lower()}{detail}")
        return served

    def resolve_any(self, name: str, version: str) -> ServedVersion:
        """A named version in whatever state it is, unless it was unloaded long ago."""
        number = parse_version(name, version)
        model = self.model(name)
        served = model.versions.get(number)
        if served is None or served.state is State.END:
            known = sorted(v.version for v in model.versions.values() if v.state is not State.END)
            raise ModelNotFound(f"model '{name}' has no version '{version}'; "
                                f"versions: {', '.join(map(str, known)) or 'none'}")
        return served

    @property
    def all_ready(self) -> bool:
        return self.loaded_once and all(m.ready for m in self.models.values())

    # ---- polling ----

    async def poll_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll()
            except Exception:  # a poll must never end the loop; the next one retries
                log.exception("polling the model repository %s failed", self.root)

    def _scan(self) -> dict[str, dict[int, pathlib.Path]]:
        found: dict[str, dict[int, pathlib.Path]] = {name: {} for name in self.only}
        if not self.root.is_dir():
            log.warning("model repository %s does not exist", self.root)
            return found
        for model_dir in self.root.iterdir():
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            if self.only and model_dir.name not in self.only:
                continue
            versions = found.setdefault(model_dir.name, {})
            for version_dir in model_dir.iterdir():
                if version_dir.is_dir() and not version_dir.name.startswith("."):
                    self._add_version(versions, version_dir)
        return found

    def _add_version(self, versions: dict[int, pathlib.Path], directory: pathlib.Path) -> None:
        number = version_number(directory.name)
        if number is not None:
            versions[number] = directory
        elif directory not in self._skipped:  # warned once, not at every poll
            self._skipped.add(directory)
            log.warning("model %s: skipping directory %s: not a version number (ASCII digits)",
                        shown(directory.parent.name), shown(directory.name))

    async def poll(self) -> None:
        """Bring the loaded versions in line with the disk and the version policies."""
        on_disk = await asyncio.to_thread(self._scan)
        for name, versions in on_disk.items():
            model = self.models.setdefault(name, ServedModel(name))
            wanted = self.settings_for(name).policy.select(set(versions))
            for number in sorted(wanted):
                await self._ensure_loaded(model, number, versions[number])
            self._retire_unwanted(model, wanted)
            model.refresh_default()
        for name in set(self.models) - set(on_disk):  # a model directory was removed
            model = self.models[name]
            self._retire_unwanted(model, set())
            model.refresh_default()
            if not model.versions or all(v.state is State.END for v in model.versions.values()):
                del self.models[name]
        self.loaded_once = True

    async def _ensure_loaded(self, model: ServedModel, number: int,
                             directory: pathlib.Path) -> None:
        served = model.versions.get(number)
        if served is not None and served.state in (State.AVAILABLE, State.LOADING,
                                                   State.UNLOADING):
            return
        fingerprint = await asyncio.to_thread(_fingerprint, directory)
        if served is not None and served.state is State.FAILED and served.files == fingerprint:
            return  # failed before on these very files: wait until they change
        served = ServedVersion(model=model.name, version=number, path=directory,
                               files=fingerprint)
        model.versions[number] = served
        model.refresh_default()
        await self._load(served)

    async def _load(self, served: ServedVersion) -> None:
        settings = self.settings_for(served.model)
        path = _model_file(served.path)
        started = time.perf_counter()
        try:
            if path is None:
                raise FileNotFoundError(f"{served.path} has no {' or '.join(MODEL_FILES)}")
            compiled = await asyncio.to_thread(self.engine.compile, path, settings.engine)
            served.inputs, served.outputs = self.engine.describe(compiled)
            served.compiled = CompiledModel(compiled=compiled, inputs=served.inputs,
                                            outputs=served.outputs,
                                            single_stream=self._single_stream(served, path,
                                                                              settings))
        except Exception as error:  # any failure to load is this version's problem alone
            served.state = State.FAILED
            served.reason = one_line(error)
            log.error("model %s version %s failed to load: %s", served.model, served.version,
                      served.reason)
            self.metrics.model_ready.labels(served.model, served.label).set(0)
            return
        served.platform = "openvino_onnx" if path.suffix == ".onnx" else "openvino_ir"
        served.inputs_by_name = {spec.name: spec for spec in served.inputs}
        served.outputs_by_name = {spec.name: spec for spec in served.outputs}
        seconds = time.perf_counter() - started
        served.state = State.AVAILABLE
        self.metrics.load_duration.labels(served.model, served.label).observe(seconds)
        self.metrics.model_ready.labels(served.model, served.label).set(1)
        log.info("model %s version %s loaded in %.2fs on %s (inference precision %s, %d infer requests)",
                 served.model, served.version, seconds, settings.engine.openvino_device,
                 settings.engine.inference_precision, served.compiled.infer_requests)

    def _single_stream(self, served: ServedVersion, path: pathlib.Path,
                       settings: ModelSettings):
        """How the version's fast requests get their single-stream copy, if it is small."""
        if sum(size for _, size, _ in served.files) > SINGLE_STREAM_MAX_BYTES:
            return None
        return functools.partial(self.engine.single_stream, path, settings.engine)

    def _retire_unwanted(self, model: ServedModel, wanted: set[int]) -> None:
        settled = all(model.versions[n].state in (State.AVAILABLE, State.FAILED)
                      for n in wanted if n in model.versions)
        any_wanted_available = any(model.versions[n].state is State.AVAILABLE
                                   for n in wanted if n in model.versions)
        for number, served in model.versions.items():
            if number in wanted or served.state in (State.UNLOADING, State.END):
                continue
            if served.state is State.AVAILABLE and wanted and not (
                    settled and any_wanted_available):
                continue  # keep serving until a wanted version can take over
            served.state = State.UNLOADING if served.state is State.AVAILABLE else State.END
            if served.state is State.UNLOADING:
                task = asyncio.get_running_loop().create_task(self._unload(served))
                self._unloading.add(task)
                task.add_done_callback(self._unloading.discard)

    async def _unload(self, served: ServedVersion) -> None:
        self.metrics.model_ready.labels(served.model, served.label).set(0)
        await served.drained()  # no new requests reach it; wait for those already inside
        if served.compiled is not None:
            served.compiled.close()
            served.compiled = None
        served.state = State.END
        log.info("model %s version %s unloaded", served.model, served.version)

    async def close(self) -> None:
        for model in self.models.values():
            for served in model.versions.values():
                if served.compiled is not None:
                    served.compiled.close()
                    served.compiled = None
