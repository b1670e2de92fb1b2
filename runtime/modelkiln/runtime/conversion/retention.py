"""Retention: after a publish, the versions nobody will serve again are removed from the repository.

Every conversion adds a version; without this the repository claim only grows. A version is kept
when any of these holds, and removed (under the repository lock, renamed to a hidden `.tmp-*`
name first, so a serving pod's poll sees it gone at once, never half deleted) otherwise:

- the serving pods' version policy selects it (`--version-policy`; without one, pods serve
  exactly the version this conversion published, which is kept);
- a serving pod uses it now (`--keep-version`: the operator passes the version of the artifact
  its Deployment serves while this Job runs, which may be an older one reused after a revert);
- it is newer than the published version (another converter's, which pods may roll to next);
- it is among the `--keep-versions` N newest of the others (N >= 1).

Why no running pod loses its files: serving pods never choose versions themselves beyond their
policy, and their policy is either an explicit `versionPolicy`, which the converter applies to the
same directory listing (so it keeps exactly what the pods select), or `specific: [V]` with V the
artifact the operator rolled them to, which is `--keep-version` until this Job's version replaces
it. Pods with `latest: K` that have not yet loaded the new version still serve the previous K
highest; all but the lowest are selected now, and the lowest is the newest of the others, kept
because N >= 1. A version is only removed after a successful publish; a change of the policy
alone removes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import shutil
import tempfile

from modelkiln.runtime.conversion import publish
from modelkiln.runtime.conversion.errors import ConversionFailed
from modelkiln.runtime.versions import VersionPolicy

DEFAULT_KEEP = 2
# Arguments that decide what stays in the repository, not what the artifact is.
OPTIONS = ("keep_versions", "version_policy", "keep_version")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-versions", type=int, default=DEFAULT_KEEP, metavar="N",
                        help="after publishing, keep the N newest versions besides those the version policy "
                             f"serves (default {DEFAULT_KEEP}, at least 1); older ones are removed")
    parser.add_argument("--version-policy", metavar="JSON",
                        help='the serving pods\' version policy, e.g. {"latest": 2} (default: exactly the '
                             "version published)")
    parser.add_argument("--keep-version", type=int, action="append", default=[], metavar="V",
                        help="a version serving pods use now: never removed (repeatable)")


def policy_of(args: argparse.Namespace) -> VersionPolicy | None:
    if args.keep_versions < 1:
        raise ConversionFailed(f"--keep-versions must be at least 1 (got {args.keep_versions}): the version "
                               "served until now must stay while pods roll over to the new one")
    if args.version_policy is None:
        return None
    try:
        return VersionPolicy.parse(json.loads(args.version_policy))
    except ValueError as error:
        raise ConversionFailed(f"--version-policy: {error}") from None


def kept_versions(available: list[int], *, published: int, policy: VersionPolicy | None, keep: int,
                  in_use: set[int]) -> set[int]:
    """The versions of `available` that stay (see the module's docstring for why each does)."""
    present = set(available)
    served = policy.select(present) if policy else {published}
    protected = served | (in_use & present) | {v for v in present if v >= published}
    others = sorted(present - protected)
    return protected | set(others[-keep:])


def apply(args: argparse.Namespace, *, model_dir: pathlib.Path, published: int) -> dict:
    """Remove the versions of `model_dir` that are not kept; what was kept and removed."""
    policy = policy_of(args)
    with publish.repository_lock(model_dir):
        available = publish.versions(model_dir)
        kept = kept_versions(available, published=published, policy=policy, keep=args.keep_versions,
                             in_use=set(args.keep_version))
        removed = [version for version in available if version not in kept]
        for version in removed:
            hidden = tempfile.mkdtemp(prefix=f"{publish.STAGING_PREFIX}removed-{version}-", dir=model_dir)
            (model_dir / str(version)).rename(pathlib.Path(hidden) / str(version))
            with contextlib.suppress(OSError):
                shutil.rmtree(hidden)
    if removed:
        print(f"removed versions {', '.join(map(str, removed))} of {model_dir}: neither served nor among the "
              f"{args.keep_versions} newest others", flush=True)
    return {"keepVersions": args.keep_versions, "kept": sorted(kept), "removed": removed}
