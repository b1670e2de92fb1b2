"""`modelkiln up`: the cluster's flow on one machine.

The same InferenceModel YAML that a cluster takes is validated against the same CRD schema and
CEL rules, converted by the same `modelkiln convert` command the conversion Job runs, and served
by the same `modelkiln serve` the serving pods run. Both run as subprocesses, as they would in
their own containers, so this module (part of the control plane) never imports OpenVINO.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import yaml

from modelkiln.operator import commands, schema
from modelkiln.redaction import redacted

ALWAYS_PRESENT_DEVICES = {"CPU", "AUTO"}
SHOWN_PREDICTIONS = 10


class UpError(Exception):
    """A problem `up` reports in one line before exiting non-zero."""


@dataclass
class LocalModel:
    name: str
    spec: dict
    origin: pathlib.Path  # the YAML file the model came from


def default_repository() -> pathlib.Path:
    if os.environ.get("MODELKILN_REPOSITORY"):
        return pathlib.Path(os.environ["MODELKILN_REPOSITORY"])
    cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(cache) / "modelkiln" / "repository"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="modelkiln up",
        description="Validate, convert and serve InferenceModels on this machine, as the operator "
                    "would in a cluster. Stops cleanly on Ctrl-C or SIGTERM.")
    parser.add_argument("-f", "--filename", required=True, type=pathlib.Path,
                        help="a YAML file with one or more InferenceModels, or a directory of them")
    parser.add_argument("--repository", type=pathlib.Path, default=default_repository(),
                        help="model repository directory (default: $MODELKILN_REPOSITORY or "
                             "~/.cache/modelkiln/repository); existing artifacts are reused")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default: 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8080,
                        help="KServe v2 / TF-Serving / SageMaker REST port (default: 8080)")
    parser.add_argument("--grpc-port", type=int, default=8081,
                        help="KServe v2 gRPC port (default: 8081)")
    parser.add_argument("--device-fallback", metavar="DEVICE",
                        help="serve on this device when a model's device is missing here "
                             "(without it, a missing device is an error)")
    parser.add_argument("--predict", metavar="FILE.npz", type=pathlib.Path,
                        help="once serving, send the inputs in FILE.npz (arrays named as the "
                             "model's inputs, optional `labels`) and print the predictions")
    return parser.parse_args(argv)


# ---- reading and validating -------------------------------------------------------------------

def read_models(path: pathlib.Path) -> list[LocalModel]:
    """Every InferenceModel in a file or directory, validated and defaulted; errors name the file."""
    if not path.exists():
        raise UpError(f"{path}: no such file or directory")
    files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")) if path.is_dir() \
        else [path]
    models, problems = [], []
    for file in files:
        try:
            documents = [d for d in yaml.safe_load_all(file.read_text()) if d]
        except yaml.YAMLError as exc:
            raise UpError(f"{file}: not valid YAML: {exc}") from None
        for doc in documents:
            if doc.get("kind") != "InferenceModel":
                continue
            name = (doc.get("metadata") or {}).get("name", "<unnamed>")
            errors = schema.validate(doc)
            problems += [f"{file}: InferenceModel {name!r} is invalid: {e}" for e in errors]
            if not errors:
                models.append(LocalModel(name, schema.with_defaults(doc)["spec"], file))
    if problems:
        raise UpError("\n".join(problems))
    if not models:
        raise UpError(f"{path}: no InferenceModel found")
    names = [m.name for m in models]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise UpError(f"{path}: InferenceModel names must be unique, repeated: {duplicated}")
    return models


def localize(model: LocalModel) -> dict:
    """The spec with relative file:// URIs made absolute (relative to the YAML file's directory).

    A local source's sha256 is filled in when absent, so that editing the model file changes
    the artifact key and the next `up` converts again instead of reusing a stale artifact.
    """
    spec = json.loads(json.dumps(model.spec))
    base = model.origin.resolve().parent
    source = spec["source"]
    source["uri"] = absolute_file_uri(source["uri"], base)
    calibration = spec.get("conversion", {}).get("calibration")
    if calibration and calibration.get("uri"):
        calibration["uri"] = absolute_file_uri(calibration["uri"], base)
    local = local_path(source["uri"])
    if local is not None and local.is_file() and not source.get("sha256"):
        source["sha256"] = sha256_of(local)
    return spec


def absolute_file_uri(uri: str, base: pathlib.Path) -> str:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("", "file"):
        return uri
    # A #path/inside after an archive's name stays a fragment; elsewhere '#' is part of the name.
    archive, hash_sign, inside = uri.rpartition("#")
    if hash_sign and archive.lower().endswith(commands.ARCHIVE_SUFFIXES):
        return absolute_file_uri(archive, base) + hash_sign + inside
    raw = urllib.parse.unquote(parsed.netloc + parsed.path) if parsed.scheme else uri
    return (base / raw).resolve().as_uri()


def local_path(uri: str) -> pathlib.Path | None:
    parsed = urllib.parse.urlparse(uri)
    return pathlib.Path(urllib.parse.unquote(parsed.path)) if parsed.scheme == "file" else None


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


CLUSTER_ONLY = {"tls": "--tls-cert FILE --tls-key FILE", "auth": "--auth-token-file FILE"}


def refuse_cluster_only(models: list[LocalModel]) -> None:
    """spec.serving.tls and .auth name Secrets, which a machine does not have; serving in the
    clear what the spec asks to protect would be a surprise, so they are refused."""
    problems = [f"{model.name}: spec.serving.{field} is cluster-only (it names a Secret); remove "
                f"it to run this model with modelkiln up, or serve the repository with "
                f"modelkiln serve {flags}"
                for model in models for field, flags in CLUSTER_ONLY.items()
                if field in model.spec["serving"]]
    if problems:
        raise UpError("\n".join(problems))


def note_one_process(models: list[LocalModel]) -> None:
    """One line for a model whose spec asks for several pods, autoscaling or a Shadow or Canary
    rollout: here each model is one process that is always up (the same YAML scales in a cluster)."""
    for model in models:
        serving = model.spec["serving"]
        field = "autoscaling" if "autoscaling" in serving else "replicas" if serving.get("replicas", 1) > 1 else None
        if field:
            print(f"modelkiln up: {model.name}: spec.serving.{field} is ignored: modelkiln up serves each "
                  f"model from one process that never scales (in a cluster the same YAML scales)",
                  file=sys.stderr)
        strategy = (serving.get("rollout") or {}).get("strategy", "Immediate")
        if strategy != "Immediate":
            # no live traffic to judge a new version on before it serves: up serves it at once
            print(f"modelkiln up: {model.name}: spec.serving.rollout.strategy {strategy} is ignored: modelkiln up "
                  f"serves a new conversion at once (in a cluster it is analysed on live traffic first)",
                  file=sys.stderr)


# ---- devices ----------------------------------------------------------------------------------

def machine_devices() -> set[str]:
    """OpenVINO's devices on this machine, asked of the runtime in its own process."""
    result = subprocess.run([*modelkiln_command(), "devices"], capture_output=True, text=True)
    if result.returncode != 0:
        raise UpError(f"cannot list this machine's devices: {result.stderr.strip()}")
    # "GPU.0" and "GPU.1" are both a GPU.
    return ({line.split("\t")[0].split(".")[0] for line in result.stdout.splitlines() if line}
            | ALWAYS_PRESENT_DEVICES)


def choose_device(name: str, wanted: str, available: set[str], fallback: str | None) -> str:
    if commands.canonical_device(wanted) in available:
        return wanted
    if fallback:
        print(f"modelkiln up: {name}: device {wanted} is not on this machine "
              f"(found {', '.join(sorted(available))}); serving on {fallback} as "
              f"--device-fallback asks", file=sys.stderr)
        return fallback
    raise UpError(f"{name}: spec.serving.device is {wanted}, but this machine has only "
                  f"{', '.join(sorted(available))}; pass --device-fallback CPU to serve on "
                  f"CPU instead, or run it on a cluster with a {wanted} node pool")


# ---- converting -------------------------------------------------------------------------------

def modelkiln_command() -> list[str]:
    return [sys.executable, "-m", "modelkiln.cli"]


def convert(name: str, spec: dict, repository: pathlib.Path) -> dict:
    """Run `modelkiln convert` as the conversion Job would; its JSON summary, or UpError."""
    key = commands.artifact_key(spec)
    args = commands.convert_args(spec=spec, output=str(repository / name), artifact_key=key)
    with tempfile.NamedTemporaryFile("r", suffix=".termination-log") as log:
        print(f"modelkiln up: {name}: {spec['conversion']['precision']} artifact {key[:8]} of "
              f"{redacted(spec['source']['uri'])}", file=sys.stderr)
        if "caConfigMap" in spec["source"]:
            print(f"modelkiln up: {name}: source.caConfigMap is a cluster ConfigMap; here the "
                  f"machine's CAs (and SSL_CERT_FILE) are trusted", file=sys.stderr)
        if "resources" in spec["conversion"]:
            print(f"modelkiln up: {name}: conversion.resources sizes the cluster's conversion Job; here the "
                  f"converter has this machine's memory and CPUs", file=sys.stderr)
        if "credentials" in spec["source"] or "serviceAccountName" in spec["source"]:
            print(f"modelkiln up: {name}: source.credentials and serviceAccountName are cluster objects; "
                  f"here the standard variables of this environment are used (AWS_*, GOOGLE_*, AZURE_*)",
                  file=sys.stderr)
        result = subprocess.run([*modelkiln_command(), "convert", *args,
                                 "--termination-log", log.name],
                                stdout=subprocess.PIPE, text=True)  # stderr: progress, to the user
        message = log.read().strip()
    if result.returncode != 0:
        raise UpError(f"{name}: conversion failed: {message or 'exit code %d' % result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- serving ----------------------------------------------------------------------------------

def print_candidates(name: str, summary: dict) -> None:
    """Precision Auto's table, as measured on this machine, and its choice."""
    print(f"modelkiln up: {name}: precision Auto measured on this machine:", file=sys.stderr)
    print(f"  {'candidate':<11} {'size MB':>8} {'infer/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'top-1':>7} "
          f"{'cosine':>8}  gate", file=sys.stderr)
    for row in summary["auto"]["candidates"]:
        if "perSecond" not in row:
            print(f"  {row['name']:<11} {row['note']}", file=sys.stderr)
            continue
        numbers = [f"{row['sizeBytes'] / 2**20:>8.2f}", f"{row['perSecond']:>9g}", f"{row['p50Ms']:>8g}",
                   f"{row['p99Ms']:>8g}", f"{'-' if row['top1Agreement'] is None else row['top1Agreement']:>7}",
                   f"{'-' if row['cosine'] is None else round(row['cosine'], 5):>8}"]
        verdict = row["note"] if row["passed"] and row["note"] else \
            ("passed" if row["passed"] else f"failed: {row['note']}")
        print(f"  {row['name']:<11} {' '.join(numbers)}  {verdict}", file=sys.stderr)
    print(f"  chosen: {summary['auto']['why']}", file=sys.stderr)


def serve_config(models: list[LocalModel], devices: dict[str, str], versions: dict[str, int],
                 chosen: dict[str, str | None]) -> dict:
    """`modelkiln serve --config` for several models, each served as its spec (and Auto's choice) says."""
    return {"models": {m.name: commands.serving_options(spec=m.spec, version=versions[m.name],
                                                        device=devices[m.name], chosen_precision=chosen[m.name])
                       for m in models}}


def wait_until_ready(server: subprocess.Popen, base_url: str, timeout: float = 300,
                     path: str = "/v2/health/ready") -> None:
    """Until `base_url + path` answers 200; UpError when the server exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UpError(f"the server exited with code {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{base_url}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise UpError(f"the server was not ready after {timeout:.0f}s")


def model_metadata(base_url: str, name: str) -> dict:
    with urllib.request.urlopen(f"{base_url}/v2/models/{name}", timeout=10) as response:
        return json.load(response)


def example_request(metadata: dict) -> dict | None:
    """A KServe v2 JSON request of zeros shaped like the model's inputs (dynamic dims as 1)."""
    inputs = []
    for tensor in metadata["inputs"]:
        shape = [1 if d < 0 else d for d in tensor["shape"]]
        count = 1
        for d in shape:
            count *= d
        if count > 4096:  # too long to paste
            return None
        inputs.append({"name": tensor["name"], "shape": shape, "datatype": tensor["datatype"],
                       "data": [0] * count})
    return {"inputs": inputs}


def print_endpoints(models: list[LocalModel], host: str, http_port: int, grpc_port: int) -> None:
    base_url = f"http://{host}:{http_port}"
    for model in models:
        metadata = model_metadata(base_url, model.name)
        print(f"\n{model.name}: ready")
        print(f"  REST (KServe v2): {base_url}/v2/models/{model.name}")
        print(f"  gRPC (KServe v2): {host}:{grpc_port}")
        print(f"  TF-Serving REST:  {base_url}/v1/models/{model.name}:predict")
        request = example_request(metadata)
        if request is not None:
            print(f"  try: curl -s {base_url}/v2/models/{model.name}/infer "
                  f"-H 'Content-Type: application/json' -d '{json.dumps(request)}'")
        else:
            print(f"  try: modelkiln predict --url {base_url} --model {model.name} "
                  f"--input {metadata['inputs'][0]['name']}=FILE.npy")


def print_predictions(base_url: str, name: str, samples: pathlib.Path) -> None:
    """Send the arrays of an .npz (named as the model's inputs) and print top-1 per row."""
    import numpy as np  # only this step needs it

    data = np.load(samples)
    labels = data["labels"] if "labels" in data.files else None
    metadata = model_metadata(base_url, name)
    inputs = [{"name": t["name"], "shape": list(data[t["name"]].shape),
               "datatype": t["datatype"], "data": data[t["name"]].ravel().tolist()}
              for t in metadata["inputs"]]
    request = urllib.request.Request(
        f"{base_url}/v2/models/{name}/infer", data=json.dumps({"inputs": inputs}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        output = json.load(response)["outputs"][0]
    scores = np.asarray(output["data"]).reshape(output["shape"])
    predicted = scores.argmax(axis=-1) if scores.ndim > 1 else scores
    print(f"\npredictions from {name} over REST for {len(predicted)} inputs of {samples.name}:")
    for row in range(min(len(predicted), SHOWN_PREDICTIONS)):
        truth = "" if labels is None else f"   true {labels[row]}"
        print(f"  input {row:2d}: predicted {predicted[row]}{truth}")
    if labels is not None:
        right = int((predicted == labels).sum())
        print(f"  {right}/{len(predicted)} correct ({right / len(predicted):.1%})")


def run(args: argparse.Namespace) -> int:
    models = read_models(args.filename)
    refuse_cluster_only(models)
    note_one_process(models)
    available = machine_devices()
    devices = {m.name: choose_device(m.name, m.spec["serving"]["device"], available,
                                     args.device_fallback) for m in models}
    args.repository.mkdir(parents=True, exist_ok=True)
    versions, chosen = {}, {}
    for model in models:
        spec = localize(model)
        spec["serving"]["device"] = devices[model.name]     # precision Auto measures where it serves
        summary = convert(model.name, spec, args.repository)
        versions[model.name] = summary["version"]
        chosen[model.name] = summary.get("inferencePrecision")
        state = "reused" if summary.get("reused") else "converted"
        print(f"modelkiln up: {model.name}: {state} version {summary['version']} "
              f"({summary['precision']}, {summary['sizeBytes']} bytes)", file=sys.stderr)
        if "auto" in summary:
            print_candidates(model.name, summary)

    with tempfile.NamedTemporaryFile("w", suffix=".json") as config:
        json.dump(serve_config(models, devices, versions, chosen), config)
        config.flush()
        command = [*modelkiln_command(), "serve", "--repository", str(args.repository),
                   "--config", config.name, "--host", args.host,
                   "--http-port", str(args.http_port), "--grpc-port", str(args.grpc_port)]
        for model in models:
            command += ["--model", model.name]
        # Its own session: Ctrl-C reaches only us, and we pass one SIGTERM on, so the server
        # drains exactly as a pod does.
        server = subprocess.Popen(command, start_new_session=True)
        try:
            base_url = f"http://{args.host}:{args.http_port}"
            wait_until_ready(server, base_url)
            print_endpoints(models, args.host, args.http_port, args.grpc_port)
            if args.predict:
                print_predictions(base_url, models[0].name, args.predict)
            print("\nServing. Press Ctrl-C (or send SIGTERM) to stop.", flush=True)
            return server.wait()
        except KeyboardInterrupt:
            print("modelkiln up: stopping: draining in-flight requests", file=sys.stderr)
            server.send_signal(signal.SIGTERM)
            return server.wait()
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()


def raise_keyboard_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # SIGTERM stops `up` as Ctrl-C does: a conversion in progress is abandoned (its version is
    # published atomically, so nothing half-written remains) and the server drains.
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        return run(args)
    except UpError as exc:
        print(f"modelkiln up: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("modelkiln up: stopped", file=sys.stderr)
        return 130
