"""`modelkiln serve`: a model repository over KServe v2 (REST, gRPC), TF-Serving and SageMaker.

One process, one event loop: uvicorn (httptools) for HTTP and grpc.aio for gRPC share it with
the repository poller; OpenVINO runs on its own threads. Start-up order: both ports listen at
once (liveness answers), models load, then readiness turns true. SIGTERM (or SIGINT) turns
readiness false, stops taking new connections, lets in-flight requests finish within the drain
timeout, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import pathlib
import signal
import ssl
import sys

import prometheus_client
import uvicorn

from modelkiln.runtime import engine as engine_module
from modelkiln.runtime.serving.auth import TokenFile, TokenInterceptor, read_tokens
from modelkiln.runtime.serving.config import ModelSettings, ServingConfig, load_config
from modelkiln.runtime.serving.connections import ConnectionLimits, LimitedHttpToolsProtocol
from modelkiln.runtime.serving.dataplane import DataPlane
from modelkiln.runtime.serving.grpc_service import build_server
from modelkiln.runtime.serving.http_app import HttpApp, Request, Response, Router
from modelkiln.runtime.serving.kserve_rest import KServeRoutes
from modelkiln.runtime.serving.metrics import Metrics, RolloutMetrics
from modelkiln.runtime.serving.repository import Repository
from modelkiln.runtime.serving.rollout import Rollout, RolloutPlan
from modelkiln.runtime.serving.sagemaker_rest import SageMakerRoutes
from modelkiln.runtime.serving.tfserving_rest import TFServingRoutes
from modelkiln.runtime.serving.tls import CertificatePair
from modelkiln.runtime.versions import VersionPolicy

log = logging.getLogger("modelkiln.serve")

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelkiln serve",
        description="Serve every model of an OVMS-layout repository (MODEL/VERSION/model.xml) "
                    "over KServe v2 REST and gRPC, TF-Serving REST and the SageMaker contract.")
    parser.add_argument("--repository", required=True, type=pathlib.Path,
                        help="model repository directory")
    parser.add_argument("--model", action="extend", nargs="+", default=[], metavar="NAME",
                        help="serve only these models (default: every model in the repository)")
    parser.add_argument("--config", type=pathlib.Path,
                        help="JSON/YAML file with per-model options, overriding the flags")
    parser.add_argument("--device", default="CPU", type=str.upper,
                        choices=engine_module.DEVICES, help="OpenVINO device (VPU = NPU)")
    parser.add_argument("--performance-hint", default="THROUGHPUT", type=str.upper,
                        choices=engine_module.PERFORMANCE_HINTS,
                        help="OpenVINO performance hint: LATENCY (one request fast) or "
                             "THROUGHPUT (many in parallel; the default)")
    parser.add_argument("--inference-precision", default="auto", type=str.lower,
                        choices=engine_module.INFERENCE_PRECISIONS,
                        help="OpenVINO INFERENCE_PRECISION_HINT; f32 keeps FP32 accuracy on "
                             "CPUs that would otherwise run bf16")
    parser.add_argument("--version-policy", default='{"latest": 1}',
                        help='JSON: {"latest": N}, {"specific": [1, 2]} or {"all": {}}')
    parser.add_argument("--rollout", action="append", default=[], type=_rollout_plan, metavar="JSON",
                        help='a rollout between two served versions of a model: {"model": NAME, '
                             '"strategy": "Shadow" or "Canary", "stable": N, "candidate": M, '
                             '"sample": 1.0, "weight": 10, "queue": 16} (docs/interfaces.md); '
                             'once per model')
    parser.add_argument("--http-port", type=int, default=8080,
                        help="KServe v2 / TF-Serving / SageMaker REST and /metrics (default: 8080)")
    parser.add_argument("--grpc-port", type=int, default=8081,
                        help="KServe v2 gRPC (default: 8081)")
    parser.add_argument("--host", default="0.0.0.0",
                        help="address both servers listen on (default: 0.0.0.0)")
    parser.add_argument("--cache-dir", help="OpenVINO compiled-model cache (CACHE_DIR)")
    parser.add_argument("--poll-interval", type=float, default=2.0,
                        help="seconds between repository scans (and checks for a renewed "
                             "--tls-cert)")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_BYTES,
                        help="largest REST body and gRPC message accepted (and gRPC sent)")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds in-flight requests get to finish after SIGTERM")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level; DEBUG adds a line per request (default: INFO)")
    limits = parser.add_argument_group(
        "connection limits", "what one client may hold; the defaults suit a production server")
    limits.add_argument("--idle-timeout", type=_positive(float), default=60.0,
                        help="seconds a connection may stay without a request (from connect and "
                             "between requests; gRPC: without a call) before it is closed "
                             "(default: 60)")
    limits.add_argument("--header-timeout", type=_positive(float), default=10.0,
                        help="seconds for a request line and headers, from their first byte; "
                             "408 past it (gRPC: for the connection handshake) (default: 10)")
    limits.add_argument("--body-timeout", type=_positive(float), default=60.0,
                        help="seconds for a whole request body after its headers; 408 past it "
                             "(default: 60)")
    limits.add_argument("--max-header-bytes", type=_positive(int), default=16384,
                        help="largest request line and headers, 431 past it; also the gRPC "
                             "metadata limit (default: 16384)")
    limits.add_argument("--max-connections", type=_positive(int), default=1000,
                        help="open connections per protocol; HTTP answers a request on one past "
                             "it 503 with Retry-After and closes it (default: 1000)")
    limits.add_argument("--max-concurrent-requests", type=_positive(int), default=128,
                        help="requests handled at once per protocol; past it HTTP answers 503 "
                             "with Retry-After, gRPC RESOURCE_EXHAUSTED (default: 128)")
    limits.add_argument("--grpc-max-concurrent-streams", type=_positive(int), default=100,
                        help="concurrent gRPC calls on one connection (default: 100)")
    limits.add_argument("--grpc-min-ping-interval", type=_positive(float), default=60.0,
                        help="seconds a gRPC client must leave between keepalive pings; pings "
                             "more often, or with no call in progress, close the connection "
                             "(default: 60)")
    access = parser.add_argument_group("transport security and access")
    access.add_argument("--tls-cert", type=pathlib.Path,
                        help="PEM certificate (chain): serve REST and gRPC over TLS; new "
                             "connections get a renewed one without a restart")
    access.add_argument("--tls-key", type=pathlib.Path, help="PEM private key of --tls-cert")
    access.add_argument("--auth-token-file", type=pathlib.Path,
                        help="file of accepted tokens, one per line, re-read when it changes: "
                             "every call but health and /metrics needs 'Authorization: Bearer "
                             "TOKEN' (gRPC: metadata 'authorization')")
    return parser


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid ... value" errors
    return parse


def _rollout_plan(text: str) -> RolloutPlan:
    try:
        return RolloutPlan.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--rollout: ")) from None


_rollout_plan.__name__ = "rollout"


def build_rollouts(plans: list[RolloutPlan], *, repository: Repository,
                   metrics: Metrics) -> dict[str, Rollout]:
    """The rollouts by model; their metrics exist only when there is one."""
    if not plans:
        return {}
    rollout_metrics = RolloutMetrics(metrics.registry)
    return {plan.model: Rollout(plan, repository=repository, metrics=rollout_metrics) for plan in plans}


def check_rollouts(args: argparse.Namespace) -> None:
    """One rollout per model, of a model this server serves."""
    models = [plan.model for plan in args.rollout]
    if len(set(models)) != len(models):
        raise ValueError(f"--rollout: one per model, got {len(models)} for {sorted(models)}")
    unserved = sorted(set(models) - set(args.model)) if args.model else []
    if unserved:
        raise ValueError(f"--rollout: model(s) {unserved} not among --model {args.model}")


def grpc_limit_options(args: argparse.Namespace) -> tuple[tuple[str, int], ...]:
    """The connection limits as grpc core channel arguments."""
    return (("grpc.max_metadata_size", args.max_header_bytes),
            ("grpc.absolute_max_metadata_size", args.max_header_bytes),
            ("grpc.server_handshake_timeout_ms", int(args.header_timeout * 1000)),
            ("grpc.max_connection_idle_ms", int(args.idle_timeout * 1000)),
            ("grpc.max_allowed_incoming_connections", args.max_connections),
            ("grpc.max_concurrent_streams", args.grpc_max_concurrent_streams),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.min_ping_interval_without_data_ms",
             int(args.grpc_min_ping_interval * 1000)),
            ("grpc.http2.max_ping_strikes", 2))


class _HttpServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # serve() owns SIGTERM/SIGINT: they start the drain for HTTP and gRPC together
        yield


def build_router(dataplane: DataPlane, metrics: Metrics) -> Router:
    router = Router()
    KServeRoutes(dataplane).install(router)
    TFServingRoutes(dataplane).install(router)
    SageMakerRoutes(dataplane).install(router)

    async def metrics_page(request: Request) -> Response:
        return Response(200, metrics.exposition(),
                        content_type=prometheus_client.CONTENT_TYPE_LATEST.encode())

    router.add("GET", r"/metrics", metrics_page)
    return router


async def load_then_poll(repository: Repository, interval: float) -> None:
    try:
        await repository.poll()
    except Exception:  # readiness stays false; the next polls retry
        log.exception("loading the model repository %s failed", repository.root)
    else:
        ready = sorted(name for name, model in repository.models.items() if model.ready)
        log.info("ready: %d of %d model(s) serving: %s", len(ready), len(repository.models),
                 ", ".join(ready) or "none")
    await repository.poll_forever(interval)


async def serve(args: argparse.Namespace, config: ServingConfig) -> int:
    metrics = Metrics()
    repository = Repository(root=args.repository,
                            engine=engine_module.Engine(cache_dir=args.cache_dir),
                            settings_for=config.for_model, metrics=metrics, only=args.model)
    rollouts = build_rollouts(args.rollout, repository=repository, metrics=metrics)
    dataplane = DataPlane(repository=repository, metrics=metrics, rollouts=rollouts)
    tokens = None if args.auth_token_file is None else TokenFile(args.auth_token_file)
    certificate = None if args.tls_cert is None else CertificatePair(args.tls_cert, args.tls_key)
    app = HttpApp(router=build_router(dataplane, metrics), max_request_bytes=args.max_request_bytes,
                  body_timeout=args.body_timeout, max_in_flight=args.max_concurrent_requests,
                  tokens=tokens)
    limits = ConnectionLimits(idle_timeout=args.idle_timeout, header_timeout=args.header_timeout,
                              max_header_bytes=args.max_header_bytes,
                              max_connections=args.max_connections)
    http = _HttpServer(uvicorn.Config(
        app, host=args.host, port=args.http_port, lifespan="off", access_log=False,
        log_level="warning", timeout_graceful_shutdown=args.drain_timeout,
        http=functools.partial(LimitedHttpToolsProtocol, limits=limits,
                               over_capacity_app=app.over_capacity),
        timeout_keep_alive=args.idle_timeout, proxy_headers=False,
        ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key))
    grpc_server, grpc_port = build_server(
        dataplane=dataplane, host=args.host, port=args.grpc_port,
        max_message_bytes=args.max_request_bytes, options=grpc_limit_options(args),
        max_concurrent_rpcs=args.max_concurrent_requests,
        credentials=None if certificate is None else certificate.grpc_credentials(),
        interceptors=() if tokens is None else (TokenInterceptor(tokens),))
    if grpc_port == 0:
        log.error("cannot listen for gRPC on %s:%s", args.host, args.grpc_port)
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    await grpc_server.start()
    http_task = asyncio.create_task(http.serve())
    while not http.started:
        if http_task.done():  # could not bind the port: uvicorn has logged why
            await grpc_server.stop(0)
            return 1
        await asyncio.sleep(0.01)
    log.info("listening: HTTP %s:%s, gRPC %s:%s", args.host, args.http_port, args.host,
             grpc_port)

    # a SIGTERM while the first models are still loading stops at once, without waiting for them
    poller = asyncio.create_task(load_then_poll(repository, args.poll_interval))
    if certificate is not None:  # renewed certificates are picked up as often as new versions
        reloader = asyncio.create_task(certificate.keep_current(http.config.ssl, args.poll_interval))
    await stop.wait()
    log.info("stopping: readiness false, draining in-flight requests (up to %ss)",
             args.drain_timeout)
    dataplane.draining = True
    poller.cancel()
    if certificate is not None:
        reloader.cancel()
    http.should_exit = True
    await asyncio.gather(grpc_server.stop(args.drain_timeout), http_task)
    await asyncio.gather(*(rollout.close() for rollout in rollouts.values()))
    await repository.close()
    log.info("stopped")
    return 0


def check_access_files(args: argparse.Namespace) -> None:
    """Refuse a half TLS pair, an unreadable file or an empty token file before listening."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together: give both or neither")
    if args.tls_cert is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.tls_cert,
                                                                                args.tls_key)
        except ssl.SSLError as error:
            raise ValueError(f"--tls-cert {args.tls_cert} / --tls-key {args.tls_key}: not a PEM "
                             f"certificate and its private key ({error.reason})") from None
    if args.auth_token_file is not None:
        read_tokens(args.auth_token_file)


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        policy = VersionPolicy.parse(json.loads(args.version_policy))
        defaults = ModelSettings(engine=engine_module.EngineSettings(
            device=args.device, performance_hint=args.performance_hint,
            inference_precision=args.inference_precision), policy=policy)
        if args.config is not None and not args.config.is_file():
            raise ValueError(f"--config {args.config}: no such file")
        check_access_files(args)
        check_rollouts(args)
        config = load_config(args.config, defaults=defaults)  # fail before listening
    except (ValueError, json.JSONDecodeError) as error:
        parser.error(str(error))
    except OSError as error:
        parser.error(f"{error.filename}: {error.strerror}")
    try:
        import uvloop
    except ImportError:  # plain asyncio works too, a little slower
        return asyncio.run(serve(args, config))
    return uvloop.run(serve(args, config))
