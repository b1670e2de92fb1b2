"""Fixtures for the serving runtime's tests (the helpers they use are in runtime_helpers.py)."""

from __future__ import annotations

import pathlib

import pytest
from runtime_helpers import Server, image_graph, mixed_graph, mlp_graph, publish, serving

MAX_REQUEST_BYTES = 1_000_000  # small, so that the limit is cheap to cross


@pytest.fixture
def start_server(tmp_path):
    """Start servers on a repository; every one is stopped at the end of the test."""
    servers = []

    def start(repository: pathlib.Path, *extra: str) -> Server:
        server = Server(repository, *extra, log=tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def model_repository(tmp_path_factory) -> pathlib.Path:
    repository = tmp_path_factory.mktemp("repository")
    publish(repository, "mlp", 1, mlp_graph())
    publish(repository, "mixed", 1, mixed_graph())
    publish(repository, "image", 1, image_graph())
    return repository


@pytest.fixture(scope="module")
def served(model_repository, tmp_path_factory) -> Server:
    """The mlp and mixed models served by one server for the whole module."""
    with serving(model_repository, "--max-request-bytes", str(MAX_REQUEST_BYTES),
                 log=tmp_path_factory.mktemp("logs") / "server.log") as server:
        yield server
