"""Retention: after a publish, versions no pod will serve are removed; served and recent ones stay."""

from __future__ import annotations

import pytest

from conftest import DIGITS, version_dirs


def publish(convert, repo, key: str, *extra: str):
    """Publish the digits model as a new artifact `key` (a new version each time)."""
    return convert("--source", DIGITS / "model.onnx", "--output", repo / "m", "--precision", "FP32",
                   "--artifact-key", key, *extra)


def test_the_newest_versions_stay_and_the_version_pods_serve_is_never_removed(convert, repo):
    for key in ("k1", "k2", "k3"):
        publish(convert, repo, key)
    assert version_dirs(repo / "m") == ["1", "2", "3"]   # the published one and the 2 (default) newest others
    # pods still serve version 2 (the operator says so): kept although older than the newest other
    fourth = publish(convert, repo, "k4", "--keep-versions", "1", "--keep-version", "2")
    assert fourth.summary["retention"] == {"keepVersions": 1, "kept": [2, 3, 4], "removed": [1]}
    fifth = publish(convert, repo, "k5", "--keep-versions", "1")
    assert fifth.summary["retention"] == {"keepVersions": 1, "kept": [4, 5], "removed": [2, 3]}
    assert "removed versions 2, 3 of" in fifth.stdout
    assert version_dirs(repo / "m") == ["4", "5"]    # nothing half removed or hidden left behind


@pytest.mark.parametrize("policy, kept", [('{"latest": 2}', ["2", "3", "4"]),     # 3, 4 served; 2 the newest other
                                          ('{"specific": [1]}', ["1", "3", "4"])])  # 1 served, 4 published, 3 other
def test_the_version_policy_keeps_what_it_serves(convert, repo, policy, kept):
    for key in ("k1", "k2", "k3", "k4"):
        result = publish(convert, repo, key, "--version-policy", policy, "--keep-versions", "1")
    assert version_dirs(repo / "m") == kept
    assert result.summary["retention"]["kept"] == [int(v) for v in kept]


def test_a_reused_artifact_removes_nothing(convert, repo):
    for key in ("k1", "k2", "k3"):
        publish(convert, repo, key, "--keep-versions", "5")
    again = publish(convert, repo, "k1", "--keep-versions", "1")
    assert again.summary["reused"] and "retention" not in again.summary
    assert version_dirs(repo / "m") == ["1", "2", "3"]


@pytest.mark.parametrize("arguments, cause", [
    (["--keep-versions", "0"], "--keep-versions must be at least 1 (got 0): the version served until now must stay "
                               "while pods roll over to the new one"),
    (["--version-policy", '{"newest": 1}'], '--version-policy: version policy {\'newest\': 1}: expected '
                                            '{"latest": N}, {"specific": [versions]} or {"all": {}}'),
])
def test_wrong_retention_arguments_fail_before_converting(convert, repo, arguments, cause):
    result = publish(convert, repo, "k1", *arguments)
    assert result.cause == cause
    assert version_dirs(repo / "m") == []
