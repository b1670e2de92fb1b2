"""Helpers for the chart tests: helm on the chart of this checkout, rendered objects by kind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelkiln"
KUBE_VERSION = "1.34.4"  # the e2e control plane's (e2e/build-control-plane.sh)

sys.path.insert(0, str(ROOT / "e2e"))
import control_plane as cp  # noqa: E402,F401  (e2e/: the build script's runner, shared with the e2e suite)


class Helm:
    """The helm binary, run on the chart of this checkout."""

    def __init__(self, binary: Path, work_dir: Path) -> None:
        self.binary = binary
        self.work_dir = work_dir

    def run(self, *args: str, values: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
        extra = []
        if values is not None:
            path = self.work_dir / f"values-{len(list(self.work_dir.iterdir()))}.yaml"
            path.write_text(yaml.safe_dump(values))
            extra = ["-f", str(path)]
        result = subprocess.run([str(self.binary), *args, *extra], capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def template(self, values: dict | None = None, *, release: str = "modelkiln", namespace: str = "modelkiln-system",
                 api_versions: tuple[str, ...] = (), check: bool = True) -> subprocess.CompletedProcess:
        flags = [f"--api-versions={v}" for v in api_versions]
        return self.run("template", release, str(CHART), "-n", namespace, f"--kube-version={KUBE_VERSION}", *flags,
                        values=values, check=check)

    def render(self, values: dict | None = None, **kwargs) -> list[dict]:
        """The objects `helm template` renders (hooks and tests included, CRDs not)."""
        return [obj for obj in yaml.safe_load_all(self.template(values, **kwargs).stdout) if obj]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    (found,) = by_kind(objects, kind)
    return found
