"""`modelkiln convert`: a model file in, a verified OpenVINO IR version in the repository out.

This is the operator's conversion Job and the first half of `modelkiln up`. Its outputs are a
contract (docs/interfaces.md): on success the last stdout line and the termination log hold a
JSON summary; on failure stderr holds exactly one line `modelkiln convert: <cause>`, the
termination log the cause, and the exit code says whether a retry may help (3) or not (1).
Library chatter that would go to stderr is sent to stdout so that line stays alone.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import errno
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from typing import TYPE_CHECKING, Iterator

from modelkiln import extras
from modelkiln.redaction import scrubbed
from modelkiln.runtime.conversion import retention
from modelkiln.runtime.conversion.errors import ConversionFailed
from modelkiln.runtime.conversion.archives import MAX_RATIO as ARCHIVE_MAX_RATIO
from modelkiln.runtime.conversion.downloads import DOWNLOAD_TIMEOUT_SECONDS, MAX_DOWNLOAD_BYTES, DownloadLimits

if TYPE_CHECKING:   # OpenVINO loads only when a conversion runs: `--help` stays instant
    import openvino as ov

    from modelkiln.runtime.conversion.calibration import SampleSet
    from modelkiln.runtime.conversion.formats import ModelFile
    from modelkiln.runtime.conversion.preprocessing import InputOptions
    from modelkiln.runtime.conversion.sources import FetchedSource
    from modelkiln.runtime.conversion.verification import Reference

PRECISIONS = ("FP32", "FP16", "INT8", "AUTO")
DEFAULT_TERMINATION_LOG = pathlib.Path("/dev/termination-log")
TERMINATION_LOG_LIMIT = 4096        # what Kubernetes keeps of a termination message
FULL_BELOW_BYTES = 1 << 20          # a disk with less free is what a write ran out of
VERIFICATION_SAMPLES = 32           # rows compared when the samples carry no labels
EXIT_PERMANENT, EXIT_TRANSIENT = 1, 3
# What does not shape the artifact: left out of the artifact key.
NOT_IN_ARTIFACT_KEY = ("output", "artifact_key", "termination_log", "ca_file", "max_download_bytes",
                       "download_timeout", "allow_link_local", "scratch", "scratch_bytes", "max_compression_ratio",
                       *retention.OPTIONS)
# What the summary keeps of each --precision auto candidate (modelkiln.json has every column).
SUMMARY_COLUMNS = ("name", "sizeBytes", "perSecond", "p50Ms", "p99Ms", "top1Agreement", "accuracyDrop", "cosine",
                   "passed", "note")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:     # one line and exit 1, like every other failure
        raise ConversionFailed(f"{message} (see modelkiln convert --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="modelkiln convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True,
                        help="model path or URI: file://, http(s)://, pvc://CLAIM/path, s3://, gs://, az://; a "
                             "file, a directory (a prefix) or a .tar.gz/.tgz/.tar/.zip archive (#path/inside)")
    parser.add_argument("--output", required=True, type=pathlib.Path, help="REPO/MODEL: versions go below it")
    parser.add_argument("--precision", required=True, type=str.upper, choices=PRECISIONS,
                        help="FP32 (no weight compression), FP16 (weights compressed to half), "
                             "INT8 (NNCF post-training quantization; needs calibration data) or AUTO "
                             "(build them all, verify and measure each on --device, publish the "
                             "fastest that passes the accuracy gate)")
    parser.add_argument("--format", choices=("onnx", "tensorflow", "tflite", "paddle", "pytorch", "ir"),
                        help="source format (detected from the file when absent)")
    parser.add_argument("--sha256", help="expected sha256 of the source file")
    parser.add_argument("--ca-file", type=pathlib.Path, metavar="PEM",
                        help="CA certificates to trust for https:// downloads (source and calibration), "
                             "besides the system's")
    parser.add_argument("--max-download-bytes", type=int, default=MAX_DOWNLOAD_BYTES, metavar="N",
                        help="refuse a download (http(s), or an object store's object or prefix) larger than "
                             "N bytes, as soon as the server announces it or once received "
                             f"(default {MAX_DOWNLOAD_BYTES}, 20 GiB)")
    parser.add_argument("--download-timeout", type=float, default=DOWNLOAD_TIMEOUT_SECONDS, metavar="SECONDS",
                        help="time allowed for all downloads (source and calibration, http(s) and object "
                             f"storage), retries included (default {DOWNLOAD_TIMEOUT_SECONDS})")
    parser.add_argument("--allow-link-local", action="store_true",
                        help="allow downloads from link-local and cloud metadata addresses (169.254.0.0/16, "
                             "fe80::/10, fd00:ec2::254, 100.100.100.200), refused by default")
    parser.add_argument("--scratch", type=pathlib.Path, metavar="DIR",
                        help="where downloads are kept while converting, in a directory removed at the end "
                             "(default: $TMPDIR or /tmp); only the finished version goes to --output")
    parser.add_argument("--max-compression-ratio", type=float, default=ARCHIVE_MAX_RATIO, metavar="R",
                        help="refuse an archive (source or calibration data) with a member that unpacks to "
                             "more than R times its compressed size, as an archive bomb does, while it unpacks "
                             f"(default {ARCHIVE_MAX_RATIO})")
    parser.add_argument("--scratch-bytes", type=int, metavar="N",
                        help="the space downloads and unpacked archives may take in the scratch directory (a "
                             "conversion Job's: its scratch volume's size less room for temporary files); an "
                             "archive unpacks within what is left of it, keeping --max-download-bytes for "
                             "calibration data still to come (default: the scratch disk's free space)")
    parser.add_argument("--input-shape", action="append", default=[], metavar="[NAME=]D,D,...",
                        help="input shape; -1 or ? for a dynamic dimension (repeat per input)")
    parser.add_argument("--layout", action="append", default=[], metavar="[NAME=]NCHW", help="input layout")
    parser.add_argument("--mean", action="append", default=[], metavar="[NAME=]V,V,V",
                        help="subtracted from the input inside the model (per channel)")
    parser.add_argument("--scale", action="append", default=[], metavar="[NAME=]V,V,V",
                        help="the input is divided by it inside the model, after --mean")
    parser.add_argument("--reverse-channels", action="store_true",
                        help="swap RGB<->BGR inside the model, before --mean and --scale")
    parser.add_argument("--calibration", metavar="URI",
                        help=".npy/.npz of input tensors (an npz may add 'labels') or a directory of images")
    parser.add_argument("--calibration-samples", type=int, default=300, metavar="N",
                        help="use at most N calibration samples (default 300)")
    parser.add_argument("--synthetic-calibration", action="store_true",
                        help="calibrate INT8 on random inputs (recorded in modelkiln.json; usually less "
                             "accurate); --calibration data, if given, then only serves verification")
    parser.add_argument("--keep-float-type", action="append", default=[], metavar="TYPE",
                        help="INT8: leave operations of this OpenVINO type in floating point, e.g. "
                             "GroupConvolution for depthwise convolutions (repeatable)")
    parser.add_argument("--keep-float-name", action="append", default=[], metavar="NAME",
                        help="INT8: leave the operation with this name in floating point (repeatable)")
    parser.add_argument("--keep-float-pattern", action="append", default=[], metavar="REGEX",
                        help="INT8: leave operations whose names match this regular expression in "
                             "floating point (repeatable)")
    parser.add_argument("--max-accuracy-drop", type=float, metavar="X",
                        help="fail when accuracy drops by more than X (0.01 = 1 point; without labels: "
                             "the share of changed top-1 answers); with labelled INT8 calibration data, "
                             "NNCF's accuracy-controlled quantization keeps the drop under X")
    parser.add_argument("--min-cosine", type=float, metavar="X", help="fail when the mean cosine similarity is below X")
    auto = parser.add_argument_group("--precision auto", "measured where the model will serve; the gate "
                                     "defaults to --max-accuracy-drop 0.01 (where top-1 applies) and "
                                     "--min-cosine 0.99")
    auto.add_argument("--objective", choices=("throughput", "latency"),
                      help="which measurement decides: inferences/s with --performance-hint (default) "
                           "or p50 latency of one request at a time")
    auto.add_argument("--seconds-per-candidate", type=float, metavar="S",
                      help="measuring time of each candidate, half throughput, half latency (default 10)")
    auto.add_argument("--device", default="CPU", type=str.upper,
                      help="the OpenVINO device the model will serve on (default CPU)")
    auto.add_argument("--performance-hint", default="THROUGHPUT", type=str.upper, choices=("THROUGHPUT", "LATENCY"),
                      help="the serving performance hint (default THROUGHPUT)")
    auto.add_argument("--inference-precision", default="auto", choices=("auto", "f32", "bf16", "f16"),
                      help="the serving inference precision when the user pinned it: every candidate "
                           "runs at it (default auto: each candidate at its own)")
    parser.add_argument("--artifact-key", help="identity of this artifact (computed from the arguments when absent)")
    retention.add_arguments(parser)
    parser.add_argument("--termination-log", type=pathlib.Path,
                        help=f"where the one-line result goes (default {DEFAULT_TERMINATION_LOG} when it exists)")
    return parser


def artifact_key_of(args: argparse.Namespace) -> str:
    """A stable hash of everything that shapes the artifact."""
    fields = {name: value for name, value in sorted(vars(args).items()) if name not in NOT_IN_ARTIFACT_KEY}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with stderr_sent_to_stdout() as stderr, sigterm_raises():
        termination_log = termination_log_of(argv)
        args = None
        try:
            args = build_parser().parse_args(argv)
            summary = convert(args)
        except ConversionFailed as failure:
            return fail(str(failure), transient=failure.transient, stderr=stderr, termination_log=termination_log)
        except OSError as error:
            return fail(describe_os_error(error, output=args and args.output),
                        transient=error.errno in (errno.ENOSPC, errno.EDQUOT), stderr=stderr,
                        termination_log=termination_log)
        except Exception as error:  # noqa: BLE001 - a bug still owes the operator its one line
            extra = extras.extra_for(error, command="convert")
            if extra:
                return fail(extras.needs("modelkiln convert", extra), transient=False, stderr=stderr,
                            termination_log=termination_log)
            print(scrubbed(traceback.format_exc()), file=sys.stdout)
            lines = str(error).strip().splitlines()
            return fail(f"unexpected {type(error).__name__}: {lines[0] if lines else ''}", transient=False,
                        stderr=stderr, termination_log=termination_log)
        line = json.dumps(summary)
        flush_c_streams()       # so nothing a C++ library buffered can land after the summary
        print(line, flush=True)
        write_termination_log(termination_log, line)
        return 0


def flush_c_streams() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


def termination_log_of(argv: list[str]) -> pathlib.Path | None:
    """Found before the full parse, so that bad arguments are reported there too."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--termination-log", type=pathlib.Path)
    return early.parse_known_args(argv)[0].termination_log


def fail(cause: str, *, transient: bool, stderr, termination_log: pathlib.Path | None) -> int:
    sys.stdout.flush()
    cause = scrubbed(cause)     # whatever composed it, no credentials or signatures leave
    print(f"modelkiln convert: {cause}", file=stderr, flush=True)
    write_termination_log(termination_log, cause)
    return EXIT_TRANSIENT if transient else EXIT_PERMANENT


def describe_os_error(error: OSError, *, output: pathlib.Path | None) -> str:
    where = f" writing {error.filename}" if error.filename else ""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return f"{error.strerror or error}{where}"
    if output is not None and repository_full(output, filename=error.filename):
        return (f"no space left on device{where}: the model repository is full; nothing was published and "
                f"the versions of {output} are untouched; free space on it and convert again")
    return f"no space left on device{where}"


def repository_full(output: pathlib.Path, *, filename: str | None) -> bool:
    """Whether the disk that filled up is the repository's (else the scratch space's): the file
    written says so, or, when the error names none (a buffered write), the repository's free space."""
    if filename:
        return pathlib.Path(filename).resolve().is_relative_to(output.resolve())
    try:
        return shutil.disk_usage(output).free < FULL_BELOW_BYTES
    except OSError:
        return False


def write_termination_log(path: pathlib.Path | None, text: str) -> None:
    path = path or (DEFAULT_TERMINATION_LOG if DEFAULT_TERMINATION_LOG.exists() else None)
    if path is None:
        return
    with contextlib.suppress(OSError):      # the log is a courtesy; never fail because of it
        path.write_text(text[:TERMINATION_LOG_LIMIT])


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """A deleted Job's SIGTERM unwinds like a failure: staging is removed, the cause reported."""
    owner = os.getpid()

    def terminated(signum, frame) -> None:
        # A forked child inherits this handler (a library's helper process, such as OpenVINO's
        # telemetry sender was): terminated at exit, it must end quietly, not print a failure
        # after the summary.
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise ConversionFailed("terminated by SIGTERM before the conversion finished", transient=True)

    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:      # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stderr_sent_to_stdout() -> Iterator:
    """Point fd 2 (C++ frontends, absl, NNCF warnings) at stdout; yield the real stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(1, 2)
    real_stderr = os.fdopen(os.dup(saved), "w")
    try:
        yield real_stderr
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        real_stderr.close()


def convert(args: argparse.Namespace) -> dict:
    from modelkiln.runtime.conversion import publish

    retention.policy_of(args)   # a wrong retention argument fails before any work
    model_dir = args.output
    key = args.artifact_key or artifact_key_of(args)
    existing = publish.find_published(model_dir, key)
    if existing:
        print(f"artifact {key} is already version {existing['version']} of {model_dir}", flush=True)
        return summary_of(existing, model_dir=model_dir, reused=True)
    # Downloads go to scratch space (in a Job: the pod's own size-limited volume), never to the
    # repository: only the version being published is staged there.
    with publish.staging_directory(model_dir) as staging, \
            tempfile.TemporaryDirectory(prefix="modelkiln-convert-", dir=args.scratch) as downloads:
        metadata = build_artifact(args, staging=staging, downloads=pathlib.Path(downloads), artifact_key=key)
        published, reused = publish.publish_version(model_dir=model_dir, staging=staging, metadata=metadata)
    print(f"{'reused' if reused else 'published'} version {published['version']} of {model_dir}", flush=True)
    summary = summary_of(published, model_dir=model_dir, reused=reused)
    if not reused:
        summary["retention"] = retention.apply(args, model_dir=model_dir, published=published["version"])
    return summary


def summary_of(metadata: dict, *, model_dir: pathlib.Path, reused: bool) -> dict:
    verification = {k: v for k, v in metadata.get("verification", {}).items() if k not in ("reference", "samples")}
    summary = {"version": metadata["version"], "path": str(model_dir / str(metadata["version"])),
               "artifactKey": metadata["artifactKey"], "precision": metadata["precision"],
               "sha256": metadata["sha256"], "sizeBytes": metadata["sizeBytes"], "reused": reused,
               "verification": verification}
    if "auto" in metadata:      # the choice, compact: the summary must fit the termination log
        auto = metadata["auto"]
        summary["inferencePrecision"] = metadata["inferencePrecision"]
        summary["auto"] = {"chosen": auto["chosen"], "why": auto["why"], "candidates": [
            {key: value for key, value in row.items() if key in SUMMARY_COLUMNS} for row in auto["candidates"]]}
    return summary


def build_artifact(args: argparse.Namespace, *, staging: pathlib.Path, downloads: pathlib.Path,
                   artifact_key: str) -> dict:
    """Fetch into `downloads`, convert, quantize, save into `staging` and verify; returns the metadata."""
    from modelkiln.runtime.conversion import archives, calibration, formats, ir, sources, verification

    check_arguments(args)
    tls = sources.tls_context(args.ca_file)
    limits = DownloadLimits(max_bytes=args.max_download_bytes, timeout_seconds=args.download_timeout,
                                    allow_link_local=args.allow_link_local)
    # Calibration data comes after the source: on a scratch volume, room for it stays free.
    scratch = archives.Scratch(downloads.parent, size_bytes=args.scratch_bytes,
                               reserved_bytes=args.max_download_bytes if args.calibration else 0)
    source = sources.fetch_source(args.source, download_dir=downloads, expected_sha256=args.sha256, tls=tls,
                                  limits=limits, scratch=scratch, max_ratio=args.max_compression_ratio)
    model_file = formats.detect_format(source.path, declared=args.format)
    print(f"converting {model_file.format} model {model_file.path.name} to {args.precision}", flush=True)

    started = time.monotonic()
    model, reference_model, options = prepare_model(args, model_file=model_file)
    samples, calibration_data = None, None      # real inputs: for calibration and verification
    if args.calibration:
        calibration_data = sources.fetch_source(args.calibration, download_dir=downloads, tls=tls, limits=limits,
                                                scratch=dataclasses.replace(scratch, reserved_bytes=0),
                                                max_ratio=args.max_compression_ratio)
        samples = calibration.load_samples(calibration_data.path, model=model, limit=args.calibration_samples,
                                           layouts=options.layouts)
    reference = verification.reference_for(model_file, source_model=reference_model)
    xml = staging / "model.xml"
    if args.precision == "AUTO":
        from modelkiln.runtime.conversion import auto

        choice = auto.choose(args, model=model, reference=reference, samples=samples,
                             calibration_data=calibration_data, options=options, staging=staging)
        precision, calibration_record, result = choice.precision, choice.calibration, choice.verification
        chosen = {"inferencePrecision": choice.inference_precision, "auto": choice.record}
        # convertSeconds: everything but verifying and measuring, as for one precision
        timings = {**choice.timings, "convertSeconds": round(time.monotonic() - started - choice.timings[
            "verifySeconds"] - choice.timings["measureSeconds"], 3)}
    else:
        precision, calibration_record, result, timings = convert_one(
            args, model=model, reference=reference, samples=samples, calibration_data=calibration_data,
            options=options, xml=xml, started=started)
        chosen = {}

    return {
        "name": args.output.name, "version": None, "artifactKey": artifact_key, "precision": precision,
        "source": {"uri": sources.redacted(args.source), "sha256": source.sha256, "format": model_file.format},
        **ir.signatures(xml),
        "preprocessing": preprocessing_record(options),
        "sizeBytes": sum(p.stat().st_size for p in staging.iterdir() if p.is_file()),
        "sha256": sources.sha256_of(staging / "model.bin"),
        "convertedAt": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "timings": {"fetchSeconds": round(source.seconds, 3), **timings},
        "calibration": calibration_record,
        "verification": result,
        **chosen,
    }


def convert_one(args: argparse.Namespace, *, model: ov.Model, reference: Reference,
                samples: SampleSet | None, calibration_data: FetchedSource | None, options: InputOptions,
                xml: pathlib.Path, started: float) -> tuple[str, dict | None, dict, dict]:
    """The artifact at the one precision asked for, verified in strict FP32 and gated:
    (precision, calibration record, verification, timings)."""
    from modelkiln.runtime.conversion import ir, verification

    calibration_record = None
    if args.precision == "INT8":
        model, calibration_record, samples = ir.quantize(args, model=model, samples=samples,
                                                         calibration_data=calibration_data)
    ir.save_ir(model, xml=xml, compress_to_fp16=args.precision == "FP16")
    convert_seconds = time.monotonic() - started

    started = time.monotonic()
    result = verification.verify(artifact=verification.openvino_runner(str(xml)), reference=reference,
                                 samples=verification_samples(samples, model=model), options=options)
    verify_seconds = time.monotonic() - started
    print(f"verification: {json.dumps(result)}", flush=True)
    verification.check_gate(result, max_accuracy_drop=args.max_accuracy_drop, min_cosine=args.min_cosine)
    return args.precision, calibration_record, result, {"convertSeconds": round(convert_seconds, 3),
                                                         "verifySeconds": round(verify_seconds, 3)}


def check_arguments(args: argparse.Namespace) -> None:
    if args.precision == "INT8" and not (args.calibration or args.synthetic_calibration):
        raise ConversionFailed("INT8 needs calibration data: pass --calibration URI (.npy, .npz or a "
                               "directory of images), or --synthetic-calibration to accept random inputs")
    if args.calibration_samples < 1:
        raise ConversionFailed(f"--calibration-samples must be at least 1 (got {args.calibration_samples})")
    for flag, value in (("--max-download-bytes", args.max_download_bytes), ("--scratch-bytes", args.scratch_bytes)):
        if value is not None and value < 1:
            raise ConversionFailed(f"{flag} must be at least 1 (got {value})")
    if not args.max_compression_ratio >= 1:
        raise ConversionFailed(f"--max-compression-ratio must be at least 1 (got {args.max_compression_ratio:g})")
    if not args.download_timeout > 0:
        raise ConversionFailed(f"--download-timeout must be a number of seconds above 0 (got {args.download_timeout})")
    keep_float = args.keep_float_type or args.keep_float_name or args.keep_float_pattern
    if keep_float and args.precision not in ("INT8", "AUTO"):
        raise ConversionFailed(f"--keep-float-* only applies to precision INT8 or AUTO (got {args.precision})")
    if keep_float and args.precision == "AUTO" and not (args.calibration or args.synthetic_calibration):
        raise ConversionFailed("--keep-float-* with --precision auto shapes its INT8 candidate, which needs "
                               "calibration data: pass --calibration URI or --synthetic-calibration")
    measured = [flag for flag, value in (("--objective", args.objective),
                                         ("--seconds-per-candidate", args.seconds_per_candidate)) if value]
    if measured and args.precision != "AUTO":
        raise ConversionFailed(f"{', '.join(measured)} only applies to --precision auto (got {args.precision})")
    if args.seconds_per_candidate is not None and args.seconds_per_candidate <= 0:
        raise ConversionFailed(f"--seconds-per-candidate must be positive (got {args.seconds_per_candidate})")
    for pattern in args.keep_float_pattern:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConversionFailed(f"--keep-float-pattern {pattern!r} is not a valid regular expression: "
                                   f"{error}") from error


def prepare_model(args: argparse.Namespace, *, model_file: ModelFile) -> tuple[ov.Model, ov.Model, InputOptions]:
    """The model with shapes and embedded preprocessing, the untouched source for reference, the options."""
    from modelkiln.runtime.conversion import formats, preprocessing

    raw_options = preprocessing.parse_input_options(
        shapes=args.input_shape, layouts=args.layout, means=args.mean, scales=args.scale,
        reverse_channels=args.reverse_channels)
    model = formats.read_model(model_file, example_inputs=raw_options.shapes)
    options = preprocessing.resolved(model, raw_options)
    preprocessing.reshape(model, options)
    reference_model = model.clone()
    return preprocessing.embed_preprocessing(model, options), reference_model, options


def verification_samples(samples: SampleSet | None, *, model: ov.Model) -> SampleSet:
    """Labelled data is checked in full (it measures accuracy); otherwise a few rows suffice."""
    from modelkiln.runtime.conversion.calibration import SampleSet, synthetic_samples

    if samples is None:
        return synthetic_samples(model, count=8, seed=1)
    if samples.labels is not None:
        return samples
    kept, rows = [], 0
    for sample in samples.samples:
        if rows >= VERIFICATION_SAMPLES:
            break
        kept.append(sample)
        rows += len(next(iter(sample.values())))
    return SampleSet(samples=kept, synthetic=samples.synthetic)


def preprocessing_record(options: InputOptions) -> dict | None:
    record = {"layout": options.layouts, "mean": options.means, "scale": options.scales,
              "reverseChannels": options.reverse_channels}
    return record if any(record.values()) else None

