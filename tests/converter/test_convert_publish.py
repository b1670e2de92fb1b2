"""Publishing: one version per artifact key, safe against a racing converter, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from conftest import DIGITS, metadata, version_dirs

from modelkiln.runtime.conversion import publish


def test_same_artifact_converted_twice_publishes_one_version(convert, repo):
    args = ("--source", DIGITS / "model.onnx", "--output", repo / "digits", "--precision", "FP16")
    first = convert(*args).summary
    second = convert(*args)

    first.pop("retention")      # what a new publish removed; a reuse removes nothing
    assert second.summary == {**first, "reused": True}
    assert "is already version 1" in second.stdout and "converting" not in second.stdout
    assert json.loads(second.termination_log)["reused"] is True
    assert version_dirs(repo / "digits") == ["1"]


def test_operator_artifact_key_decides_identity(convert, repo):
    first = convert("--source", DIGITS / "model.onnx", "--output", repo / "digits", "--precision", "FP32",
                    "--artifact-key", "abc123").summary
    other = convert("--source", DIGITS / "model.onnx", "--output", repo / "digits", "--precision", "FP32",
                    "--artifact-key", "def456").summary
    again = convert("--source", DIGITS / "model.onnx", "--output", repo / "digits", "--precision", "FP32",
                    "--artifact-key", "abc123").summary

    assert (first["version"], other["version"], again["version"]) == (1, 2, 1)
    assert again["reused"] and metadata(repo / "digits" / "2")["artifactKey"] == "def456"


def start_converter(repo, key: str, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "modelkiln.cli", "convert", "--source", str(DIGITS / "model.onnx"),
         "--output", str(repo / "digits"), "--precision", "INT8", "--calibration", str(DIGITS / "calibration.npz"),
         "--artifact-key", key, "--termination-log", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def test_two_converters_racing_on_one_artifact_publish_one_version(repo, tmp_path):
    racers = [start_converter(repo, "same-key", tmp_path / f"log-{i}") for i in range(2)]
    summaries = []
    for racer in racers:
        out, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err
        summaries.append(json.loads(out.strip().splitlines()[-1]))

    assert [s["version"] for s in summaries] == [1, 1]
    assert sorted(s["reused"] for s in summaries) == [False, True]
    assert version_dirs(repo / "digits") == ["1"]
    assert metadata(repo / "digits" / "1")["artifactKey"] == "same-key"


def test_two_converters_racing_on_different_artifacts_get_distinct_complete_versions(repo, tmp_path):
    racers = [start_converter(repo, f"key-{i}", tmp_path / f"log-{i}") for i in range(2)]
    for racer in racers:
        racer.communicate(timeout=300)
        assert racer.returncode == 0

    assert version_dirs(repo / "digits") == ["1", "2"]
    assert {metadata(repo / "digits" / v)["artifactKey"] for v in ("1", "2")} == {"key-0", "key-1"}
    for version in ("1", "2"):
        assert metadata(repo / "digits" / version)["version"] == int(version)
        assert (repo / "digits" / version / "model.bin").stat().st_size > 0


def test_converter_that_loses_the_race_after_converting_reuses_the_winner(tmp_path):
    model_dir = tmp_path / "digits"
    with publish.staging_directory(model_dir) as winner, publish.staging_directory(model_dir) as loser:
        for staging in (winner, loser):
            (staging / "model.xml").write_text("<net/>")
        published, reused = publish.publish_version(model_dir=model_dir, staging=winner,
                                                    metadata={"artifactKey": "k", "precision": "FP32"})
        again, reused_again = publish.publish_version(model_dir=model_dir, staging=loser,
                                                      metadata={"artifactKey": "k", "precision": "FP32"})

    assert (published["version"], reused, again["version"], reused_again) == (1, False, 1, True)
    assert version_dirs(model_dir) == ["1"]     # the loser's staging directory is gone
    assert oct((model_dir / "1").stat().st_mode & 0o777) == "0o755"


def test_publishing_removes_staging_left_by_a_killed_converter_but_not_a_live_one(tmp_path):
    model_dir = tmp_path / "digits"
    abandoned, live = model_dir / ".tmp-killed", model_dir / ".tmp-running"
    for directory in (abandoned, live):
        directory.mkdir(parents=True)
        (directory / "model.bin").write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(abandoned, (two_days_ago, two_days_ago))

    with publish.staging_directory(model_dir) as staging:
        (staging / "model.xml").write_text("<net/>")
        publish.publish_version(model_dir=model_dir, staging=staging, metadata={"artifactKey": "k"})

    assert version_dirs(model_dir) == [".tmp-running", "1"]


def test_directories_that_are_not_versions_do_not_stop_a_publish(convert, repo):
    for name in ("²", "abc", "1.5"):  # "²".isdigit() is True, int("²") raises
        (repo / "digits" / name).mkdir(parents=True)
    summary = convert("--source", DIGITS / "model.onnx", "--output", repo / "digits",
                      "--precision", "FP32").summary
    assert summary["version"] == 1 and publish.versions(repo / "digits") == [1]
