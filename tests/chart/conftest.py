"""Fixtures for the chart tests: helm, built like the e2e binaries, and `helm template` as objects.

helm comes from the Go module proxy, built by e2e/build-control-plane.sh into the same cache as
the control plane (at collection, so the build does not count against a test's timeout). Without
Go the tests that need helm are skipped with one line, except in CI, where they fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chart_helpers import Helm, cp

HERE = Path(__file__).resolve().parent

_state: dict[str, object] = {}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    wanted = [item for item in items if Path(str(item.fspath)).is_relative_to(HERE) and "helm" in item.fixturenames]
    if not wanted:
        return
    helm_dir = cp.binaries_for_tests(wanted, what="chart tests", needs="helm")
    if helm_dir is not None:
        _state["helm"] = helm_dir / "helm"


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Helm:
    return Helm(_state["helm"], tmp_path_factory.mktemp("helm-values"))
