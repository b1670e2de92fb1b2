"""`modelkiln operator`: run the InferenceModel operator (kopf) with its metrics and liveness endpoints."""

from __future__ import annotations

import argparse
import logging
import random

import kopf
import prometheus_client

from modelkiln.operator import config as operator_config
from modelkiln.operator import handlers, startup_gate
from modelkiln.redaction import scrubbed

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number of threads, 1 or more, is expected, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelkiln operator",
        description="Run the InferenceModel operator. Settings from the environment: "
                    "MODELKILN_SERVER_IMAGE, MODELKILN_CONVERTER_IMAGE, MODELKILN_REPOSITORY_CLAIM, "
                    "MODELKILN_NAMESPACE, MODELKILN_DEVICE_POOLS_CONFIGMAP, MODELKILN_RESYNC_SECONDS "
                    "(docs/interfaces.md).")
    p.add_argument("--namespace", action="append", default=[], metavar="NS",
                   help="watch only this namespace (repeatable; default: all namespaces)")
    p.add_argument("--peering", metavar="NAME",
                   help="coordinate with other replicas through the ClusterKopfPeering NAME "
                        "(only one replica acts at a time); without it the operator runs standalone")
    p.add_argument("--create-peering", action=argparse.BooleanOptionalAction, default=True,
                   help="create the peering object when it is missing (default). The chart and "
                        "manifests/ make it themselves and pass --no-create-peering: Helm refuses to "
                        "install over an object that the operator's pod made first")
    p.add_argument("--priority", type=int,
                   help="peering priority: the replica with the highest acts (default: random, so "
                        "that replicas never tie; kopf pauses all replicas of equal priority)")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0: off)")
    p.add_argument("--health-port", type=int, default=8080,
                   help="liveness endpoint port, GET /healthz (0: off)")
    p.add_argument("--workers", type=at_least_one, metavar="N",
                   help="threads that reconcile models at once (default: kopf's, the cores + 4, at most 32)")
    p.add_argument("--verbose", action="store_true", help="log at DEBUG level")
    return p


class RedactingFormatter(logging.Formatter):
    """Lines without credentials or signatures in URIs, whoever logs them: at DEBUG, kopf and the
    Kubernetes client log whole objects (an InferenceModel's spec, a Job's arguments)."""

    def format(self, record: logging.LogRecord) -> str:
        return scrubbed(super().format(record))


def log_handler() -> logging.Handler:
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    return handler


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        config = operator_config.from_environment()
    except ValueError as exc:
        parser().error(str(exc))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[log_handler()])
    if not args.verbose:
        # kopf logs every handler run of every object at INFO: a line per event of every child.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port)
    startup_gate.apply()
    registry = kopf.OperatorRegistry()
    handlers.register(registry, config, create_peering=args.create_peering, namespaced=bool(args.namespace),
                      workers=args.workers)
    kopf.run(
        registry=registry,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=args.priority if args.priority is not None else random.randint(1, 1_000_000),
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
    )
    return 0
