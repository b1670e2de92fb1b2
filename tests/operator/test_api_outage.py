"""The operator while the API server does not answer (restarting, upgraded): it waits and goes on.

kopf retries its own requests with `handlers.EndlessBackoffs`; the resync round stops at the first
model that gets no answer instead of logging an error for each. The API server here is a port
nobody listens on (connection refused); a real restart runs in e2e/test_e2e_faults.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import itertools
import logging
import socket

import kopf
import kubernetes

from modelkiln.operator import handlers, kube
from modelkiln.operator.config import OperatorConfig

CONFIG = OperatorConfig(namespace="modelkiln-system", device_pools_configmap="pools", server_image="server:1",
                        converter_image="converter:1", repository_claim="models", resync_seconds=1)


def unreachable_api() -> kube.Kube:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return kube.Kube(kubernetes.client.ApiClient(kubernetes.client.Configuration(host=f"https://127.0.0.1:{port}")))


def test_kopf_retries_a_failed_api_request_for_as_long_as_it_takes():
    backoffs = handlers.EndlessBackoffs()
    assert sum(itertools.islice(backoffs, 100)) > 900  # kopf's default gives up after 54 s
    assert list(itertools.islice(backoffs, 3)) == [1, 1, 2]  # each request starts from the first


def test_a_resync_round_stops_at_the_first_model_the_api_server_does_not_answer(caplog, make_model):
    models = {}
    for name in ("digits", "letters", "faces"):
        model = make_model()
        model["metadata"].update(namespace="vision", name=name, resourceVersion="1")
        models["vision", name] = [model]
    indexes = {handlers.MODELS_INDEX: models, handlers.UNREADY_NODES_INDEX: {},
               **{child.plural: {} for child in handlers.WATCHED_CHILDREN}}
    memo = kopf.Memo(api=unreachable_api(), config=CONFIG)
    resync = handlers._Resync(handler_context=contextvars.copy_context())

    async def two_rounds():
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            task = asyncio.create_task(handlers._resync_forever(resync=resync, memo=memo, indexes=indexes,
                                                                interval=0.2, executor=executor))
            await asyncio.sleep(0.5)
            task.cancel()

    with caplog.at_level(logging.WARNING, logger="modelkiln.operator"):
        asyncio.run(two_rounds())
    lines = [r.getMessage() for r in caplog.records if r.name == "modelkiln.operator"]
    assert len(lines) == 2, lines
    assert all(line.startswith("resync: the API server https://127.0.0.1:") and "does not answer" in line
               and line.endswith("the round stops here (the next one retries)") for line in lines), lines
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
