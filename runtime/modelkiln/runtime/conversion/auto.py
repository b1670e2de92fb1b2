"""`--precision auto`: every precision built, verified and measured where it will serve; the fastest
that keeps the accuracy is published.

The candidates are pairs of an IR precision and the inference precision it runs at: FP32 at f32,
FP32 at bf16 where the device reports BF16 (OPTIMIZATION_CAPABILITIES), FP16 and, when there is
calibration data, INT8, both at the device's default (what `precision: FP16` or `INT8` would
serve). Each is verified against the source model running as it will serve (on the device, at its
inference precision: bf16 blurs what a strict-f32 check would hide) and measured with the serving
settings (performance hint, inference precision) for a bounded time: throughput with twice the
device's optimal number of infer requests kept busy, as the server keeps them, and p50/p99
latency of one request at a time. The candidates are measured in interleaved rounds and each
one's throughput is the median of its rounds, so that a burst of load from elsewhere on the
machine costs each candidate at most a round it does not count, not its whole measurement. Candidates that
miss the gate (default: top-1 agreement drops by at most 1 point where the output has classes,
cosine at least 0.99) are measured too, so the table shows what the gate cost. The winner's
inference precision (the device's default resolved) is recorded for the serving pods.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import pathlib
import shutil
import time

import numpy as np
import openvino as ov

from modelkiln.runtime.conversion import verification
from modelkiln.runtime.conversion.calibration import SampleSet, synthetic_samples
from modelkiln.runtime.conversion.errors import ConversionFailed
from modelkiln.runtime.conversion.ir import quantize, save_ir
from modelkiln.runtime.conversion.preprocessing import InputOptions
from modelkiln.runtime.engine import INFERENCE_PRECISIONS, REQUESTS_PER_OPTIMAL, EngineSettings

DEFAULT_SECONDS_PER_CANDIDATE = 10.0
DEFAULT_MAX_ACCURACY_DROP = 0.01
DEFAULT_MIN_COSINE = 0.99
SYNTHETIC_VERIFICATION_ROWS = 32    # without data: enough rows that one flipped answer is 3 points
ROUNDS = 5                          # measuring slices per candidate, interleaved with the others'


@dataclasses.dataclass(frozen=True)
class Candidate:
    precision: str      # of the IR: FP32, FP16, INT8
    hint: str           # INFERENCE_PRECISION_HINT when compiling, or "auto" for the device's default


@dataclasses.dataclass
class Choice:
    """The published candidate and everything modelkiln.json says about the choice."""

    precision: str
    inference_precision: str
    verification: dict
    calibration: dict | None
    record: dict
    timings: dict


def plan(*, capabilities: list[str], pinned: str, int8: str | None) -> tuple[list[Candidate], list[dict]]:
    """The candidates to build, and rows for those left out saying why.

    `pinned` is the serving inference precision the user set ("auto" when they did not): then
    every candidate runs at it. `int8` is None when INT8 can be built, else why not.
    """
    if pinned != "auto":
        floats = [Candidate("FP32", pinned), Candidate("FP16", pinned)]
        skipped = [{"name": f"FP32/{other}", "note": f"not built: serving.inferencePrecision is {pinned}"}
                   for other in ("f32", "bf16") if other != pinned and (other == "f32" or "BF16" in capabilities)]
    else:
        floats = [Candidate("FP32", "f32")]
        skipped = []
        if "BF16" in capabilities:
            floats.append(Candidate("FP32", "bf16"))
        else:
            skipped.append({"name": "FP32/bf16", "note": f"not built: the device has no BF16 "
                                                         f"(it reports {', '.join(capabilities)})"})
        floats.append(Candidate("FP16", "auto"))
    if int8 is not None:
        return floats, skipped + [{"name": "INT8", "note": f"not built: {int8}"}]
    return floats + [Candidate("INT8", pinned)], skipped


def choose(args: argparse.Namespace, *, model: ov.Model, reference: verification.Reference,
           samples: SampleSet | None, calibration_data, options: InputOptions, staging: pathlib.Path) -> Choice:
    """Build, verify and measure every candidate in `staging/candidates`; move the winner's IR into
    `staging` and return it, or fail naming every candidate when none passes the gate."""
    settings = EngineSettings(device=args.device, performance_hint=args.performance_hint)
    device = settings.openvino_device
    core = ov.Core()
    capabilities = device_capabilities(core, device)
    int8_missing = None if (args.calibration or args.synthetic_calibration) else \
        "no calibration data (calibration.uri, or calibration.synthetic: true)"
    candidates, skipped = plan(capabilities=capabilities, pinned=args.inference_precision, int8=int8_missing)
    # Every row of the data (up to --calibration-samples): the gate decides here, and with 32 rows
    # one changed answer would already be 3 points.
    checked = samples if samples is not None else synthetic_samples(model, count=SYNTHETIC_VERIFICATION_ROWS, seed=1)
    reference = remembered(reference)
    seconds = args.seconds_per_candidate or DEFAULT_SECONDS_PER_CANDIDATE
    objective = args.objective or "throughput"
    print(f"auto: {len(candidates)} candidates on {device} ({args.performance_hint}, {seconds:g} s each), "
          f"objective {objective}", flush=True)

    irs: dict[str, pathlib.Path] = {}
    calibration_record, built = None, []
    timings = {"convertSeconds": 0.0, "verifySeconds": 0.0, "measureSeconds": 0.0}
    for candidate in candidates:
        started = time.monotonic()
        if candidate.precision not in irs:
            ir = model
            if candidate.precision == "INT8":
                ir, calibration_record, _ = quantize(args, model=model.clone(), samples=samples,
                                                     calibration_data=calibration_data)
            irs[candidate.precision] = staging / "candidates" / candidate.precision / "model.xml"
            irs[candidate.precision].parent.mkdir(parents=True)
            save_ir(ir, xml=irs[candidate.precision], compress_to_fp16=candidate.precision == "FP16")
        timings["convertSeconds"] += time.monotonic() - started
        started = time.monotonic()
        built.append(Built.verified(candidate, xml=irs[candidate.precision], core=core, device=device,
                                    settings=settings, reference=reference, samples=checked, options=options,
                                    gate=lambda result: gate(args, result)))
        timings["verifySeconds"] += time.monotonic() - started

    if not any(candidate.passed for candidate in built):     # nothing to publish: nothing to measure
        raise ConversionFailed("precision auto: no candidate passed the accuracy gate: " + "; ".join(
            f"{candidate.name} failed the gate ({'; '.join(candidate.problems)})" for candidate in built))
    started = time.monotonic()
    for _ in range(ROUNDS):     # interleaved: each candidate gets a slice of every stretch of time
        for candidate in built:
            candidate.meter.run(seconds / ROUNDS)
    timings["measureSeconds"] = time.monotonic() - started
    rows = [candidate.measured_row() for candidate in built]

    winner, why = pick(rows, objective=objective)
    chosen = built[rows.index(winner)]
    built.clear()       # the compiled models go before the files move
    winner["note"] = "chosen"
    for path in chosen.xml.parent.iterdir():
        shutil.move(str(path), staging / path.name)
    shutil.rmtree(staging / "candidates")
    gates = gate(args, chosen.result)
    record = {"objective": objective, "device": device, "performanceHint": args.performance_hint,
              "secondsPerCandidate": seconds, "deviceCapabilities": capabilities,
              "gate": {"maxAccuracyDrop": gates["max_accuracy_drop"], "minCosine": gates["min_cosine"],
                       "samples": checked.rows(), "syntheticSamples": checked.synthetic},
              "chosen": winner["name"], "why": why, "candidates": rows + skipped}
    print_table(record)
    precision = chosen.candidate.precision
    return Choice(precision=precision, inference_precision=chosen.meter.inference_precision,
                  verification=chosen.result, calibration=calibration_record if precision == "INT8" else None,
                  record=record, timings={key: round(value, 3) for key, value in timings.items()})


@dataclasses.dataclass
class Built:
    """A candidate's IR, how it verified, and its meter."""

    candidate: Candidate
    xml: pathlib.Path
    result: dict
    problems: list[str]
    meter: "Meter"

    @classmethod
    def verified(cls, candidate: Candidate, *, xml: pathlib.Path, core: ov.Core, device: str,
                 settings: EngineSettings, reference: verification.Reference, samples: SampleSet,
                 options: InputOptions, gate) -> "Built":
        """Compile `xml` as it will serve and verify it so: on `device`, at the candidate's inference precision."""
        meter = Meter(core, xml, device=device, inputs=samples.samples[0],
                      settings=dataclasses.replace(settings, inference_precision=candidate.hint))
        result = verification.verify(
            artifact=lambda inputs: [np.asarray(value) for value in meter.compiled(inputs).values()],
            reference=reference, samples=samples, options=options)
        return cls(candidate, xml, result, verification.gate_problems(result, **gate(result)), meter)

    @property
    def name(self) -> str:
        return f"{self.candidate.precision}/{self.meter.inference_precision}"

    @property
    def passed(self) -> bool:
        return not self.problems

    def measured_row(self) -> dict:
        result = self.result
        return {"name": self.name,
                "sizeBytes": self.xml.stat().st_size + self.xml.with_suffix(".bin").stat().st_size,
                **self.meter.numbers(), "top1Agreement": result["top1Agreement"],
                "cosine": None if result["cosine"] is None else round(result["cosine"], 6),
                **({"accuracyDrop": result["accuracyDrop"]} if "accuracyDrop" in result else {}),
                "passed": self.passed, "note": "; ".join(self.problems)}


def remembered(reference: verification.Reference) -> verification.Reference:
    """`reference` running each distinct input once: every candidate is compared on the same samples."""
    outputs: dict[tuple, list[np.ndarray]] = {}

    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        key = tuple((name, array.dtype.str, array.shape, hashlib.sha256(np.ascontiguousarray(array)).hexdigest())
                    for name, array in inputs.items())
        if key not in outputs:
            outputs[key] = reference.run(inputs)
        return outputs[key]

    return verification.Reference(reference.name, run)


def device_capabilities(core: ov.Core, device: str) -> list[str]:
    try:
        return list(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except RuntimeError as error:
        raise ConversionFailed(f"--precision auto measures on the serving device, and OpenVINO has no "
                               f"device {device} here ({', '.join(core.available_devices)}): "
                               f"{str(error).strip().splitlines()[-1]}") from error


def gate(args: argparse.Namespace, result: dict) -> dict:
    """The bounds for `result`: the user's, else Auto's defaults (top-1 only where it means something)."""
    max_drop = args.max_accuracy_drop
    if max_drop is None and (result["top1Agreement"] is not None or "accuracyDrop" in result):
        max_drop = DEFAULT_MAX_ACCURACY_DROP
    return {"max_accuracy_drop": max_drop,
            "min_cosine": DEFAULT_MIN_COSINE if args.min_cosine is None else args.min_cosine}


class Meter:
    """One candidate compiled as the serving engine compiles it, measured a slice at a time."""

    def __init__(self, core: ov.Core, xml: pathlib.Path, *, device: str, settings: EngineSettings,
                 inputs: dict[str, np.ndarray]) -> None:
        self.compiled = core.compile_model(str(xml), device, settings.compile_properties())
        self.inference_precision = effective_precision(self.compiled, asked=settings.inference_precision)
        self.inputs, self.rows = inputs, len(next(iter(inputs.values())))
        optimal = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.queue = ov.AsyncInferQueue(self.compiled, optimal * REQUESTS_PER_OPTIMAL)
        self.request = self.compiled.create_infer_request()
        self.rates: list[float] = []
        self.latencies: list[float] = []
        self.request.infer(inputs)      # warm-up: the first inference allocates

    def run(self, seconds: float) -> None:
        """Half of `seconds` with every request busy (throughput), half one request at a time (latency)."""
        started, done = time.perf_counter(), 0
        deadline = started + seconds / 2
        while time.perf_counter() < deadline:
            self.queue.start_async(self.inputs)     # blocks while every request is busy
            done += 1
        self.queue.wait_all()
        self.rates.append(done * self.rows / (time.perf_counter() - started))
        deadline = time.perf_counter() + seconds / 2
        while (began := time.perf_counter()) < deadline:
            self.request.infer(self.inputs)
            self.latencies.append(time.perf_counter() - began)

    def numbers(self) -> dict:
        """Inferences/s (a batch counts its rows; the median round) and latency percentiles in ms."""
        p50, p99 = (1000 * float(np.percentile(self.latencies, q)) for q in (50, 99))
        return {"perSecond": round(float(np.median(self.rates)), 1), "p50Ms": round(p50, 3), "p99Ms": round(p99, 3)}


def effective_precision(compiled: ov.CompiledModel, *, asked: str) -> str:
    """The inference precision the device settled on (its default resolved), as serving names it."""
    try:
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    except RuntimeError:        # a device that does not tell (AUTO): what was asked
        return asked
    name = hint.get_type_name() if isinstance(hint, ov.Type) else str(hint)
    return name if name in INFERENCE_PRECISIONS else "auto"


def pick(rows: list[dict], *, objective: str) -> tuple[dict, str]:
    """The winner among the rows that passed the gate (one did), and why, in one line."""
    passed = [row for row in rows if row["passed"]]
    failed = "; ".join(f"{row['name']} failed the gate ({row['note']})" for row in rows if not row["passed"])
    best = max if objective == "throughput" else min
    winner = best(passed, key=lambda row: row["perSecond"] if objective == "throughput" else row["p50Ms"])
    unit = (lambda row: f"{row['perSecond']:g}/s") if objective == "throughput" else \
        (lambda row: f"p50 {row['p50Ms']:g} ms")
    if len(passed) == 1:
        why = f"{winner['name']}: the only candidate that passed the accuracy gate ({unit(winner)})"
    else:
        others = ", ".join(f"{row['name']} {unit(row)}" for row in passed if row is not winner)
        why = f"{winner['name']}: the best {objective} of the {len(passed)} candidates that passed the " \
              f"accuracy gate ({unit(winner)}; {others})"
    return winner, f"{why}; {failed}" if failed else why


def megabytes(row: dict) -> str:
    return f"{row['sizeBytes'] / 2**20:.{1 if row['sizeBytes'] >= 2**20 else 3}f}"


def print_table(record: dict) -> None:
    gates = record["gate"]
    bounds = [f"cosine >= {gates['minCosine']}"] + \
        ([f"top-1 drop <= {gates['maxAccuracyDrop']}"] if gates["maxAccuracyDrop"] is not None else [])
    where = f"{gates['samples']} {'random ' if gates['syntheticSamples'] else ''}samples"
    print(f"\nprecision auto on {record['device']} ({record['performanceHint']}, objective "
          f"{record['objective']}; gate: {', '.join(bounds)}, on {where})")
    print(f"{'candidate':<11} {'size MB':>8} {'infer/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'top-1':>7} {'cosine':>8}  gate")
    for row in record["candidates"]:
        if "perSecond" not in row:
            print(f"{row['name']:<11} {row['note']}")
            continue
        top1 = "-" if row["top1Agreement"] is None else f"{row['top1Agreement']:.4f}"
        cosine = "-" if row["cosine"] is None else f"{row['cosine']:.5f}"
        verdict = "chosen" if row["note"] == "chosen" else ("passed" if row["passed"] else f"failed: {row['note']}")
        print(f"{row['name']:<11} {megabytes(row):>8} {row['perSecond']:>9g} {row['p50Ms']:>8g} "
              f"{row['p99Ms']:>8g} {top1:>7} {cosine:>8}  {verdict}")
    print(f"chosen: {record['why']}\n", flush=True)
