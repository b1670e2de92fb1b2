"""Publishing a converted model as a new integer version of the repository, atomically.

Everything is written into a hidden `.tmp-*` sibling (which the runtime ignores) and renamed
into place, so a serving pod never sees half a version and a failed or killed conversion
leaves no version directory behind. Converters that race on one model (two Jobs, a retried
Job, `modelkiln up` next to the cluster) take an exclusive lock on `MODEL/.lock` only for the
moment of choosing the number and renaming; a converter finding its artifact key already
published reuses that version instead of publishing a twin. Staging left by a converter that
was killed outright (OOM, SIGKILL) is removed by a later publish once it is a day old.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Iterator

from modelkiln.runtime.names import version_number

METADATA = "modelkiln.json"
LOCK = ".lock"
STAGING_PREFIX = ".tmp-"
# A staging directory untouched this long belongs to a converter that was killed (OOM, SIGKILL).
ABANDONED_AFTER_SECONDS = 24 * 3600


def versions(model_dir: pathlib.Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    # what the runtime serves: other directories ("²", "1.5") are not versions, here either
    return sorted(number for p in model_dir.iterdir()
                  if p.is_dir() and (number := version_number(p.name)) is not None)


def read_metadata(version_dir: pathlib.Path) -> dict | None:
    try:
        return json.loads((version_dir / METADATA).read_text())
    except (OSError, ValueError):
        return None


def find_published(model_dir: pathlib.Path, artifact_key: str) -> dict | None:
    """The metadata of the version holding `artifact_key`, if one does."""
    for version in reversed(versions(model_dir)):
        metadata = read_metadata(model_dir / str(version))
        if metadata and metadata.get("artifactKey") == artifact_key:
            return metadata
    return None


@contextlib.contextmanager
def staging_directory(model_dir: pathlib.Path) -> Iterator[pathlib.Path]:
    """A fresh `.tmp-*` directory next to the versions (same filesystem: rename is atomic)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)     # gone already when it was published


@contextlib.contextmanager
def repository_lock(model_dir: pathlib.Path) -> Iterator[None]:
    with (model_dir / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def publish_version(*, model_dir: pathlib.Path, staging: pathlib.Path, metadata: dict) -> tuple[dict, bool]:
    """Rename `staging` into the next version, unless its artifact key won the race elsewhere.

    Returns the published metadata and whether an existing version was reused.
    """
    with repository_lock(model_dir):
        remove_abandoned_staging(model_dir, keep=staging)
        existing = find_published(model_dir, metadata["artifactKey"])
        if existing:
            return existing, True
        version = (versions(model_dir) or [0])[-1] + 1
        metadata = {**metadata, "version": version}
        sync_files(staging)     # the weights reach the disk before the version becomes visible
        write_durably(staging / METADATA, json.dumps(metadata, indent=2) + "\n")
        staging.chmod(0o755)    # mkdtemp's 0700 would hide the version from serving pods run as another user
        os.rename(staging, model_dir / str(version))
        sync_directory(model_dir)
    return metadata, False


def remove_abandoned_staging(model_dir: pathlib.Path, *, keep: pathlib.Path) -> None:
    now = time.time()
    for path in model_dir.glob(STAGING_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if path != keep and now - path.stat().st_mtime > ABANDONED_AFTER_SECONDS:
                shutil.rmtree(path)


def sync_files(directory: pathlib.Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_durably(path: pathlib.Path, text: str) -> None:
    with path.open("w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())


def sync_directory(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
