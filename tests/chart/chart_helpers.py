"""Helpers for the chart tests (and e2e/test_e2e_helm.py): helm on the chart of this checkout, rendered objects by
kind, and the metric names the dashboard and docs/metrics.md use, compared with a live /metrics page."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

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


DASHBOARD = ROOT / "dashboards" / "modelkiln.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
_METRIC = re.compile(r"\bmodelkiln_[a-z_]+\b")
_GROUPING = re.compile(r"\bby \(([^)]*)\)")


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variable queries."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    queries += [var["query"]["query"] for var in dashboard["templating"]["list"] if var["type"] == "query"]
    return queries


def documented_metrics() -> set[str]:
    """The metric names in the tables of docs/metrics.md (first column)."""
    return {m.group(1) for m in re.finditer(r"^\| `(modelkiln_[a-z_]+)` \|", METRICS_DOC.read_text(), re.MULTILINE)}


def live_series(exposition: str) -> dict[str, set[str]]:
    """Sample name -> label names, from a /metrics page (parsed by prometheus-client)."""
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def unknown_names_and_labels(queries: list[str], series: dict[str, set[str]], *, prefix: str) -> list[str]:
    """What the queries use under `prefix` that the live series lack: metric names, and grouping labels."""
    problems = []
    for query in queries:
        names = {name for name in _METRIC.findall(query) if name.startswith(prefix)}
        if not names:
            continue
        problems += [f"{name} (in {query})" for name in sorted(names - series.keys())]
        labels = set().union(*(series.get(name, set()) for name in names))
        for group in _GROUPING.findall(query):
            problems += [f"label {label} of {sorted(names)}" for label in (g.strip() for g in group.split(","))
                         if label not in labels]
    return problems


def documented_families(series: dict[str, set[str]], *, prefix: str) -> set[str]:
    """The live metrics under `prefix` as docs/metrics.md names them: counters with `_total`,
    histograms without their `_bucket`/`_count`/`_sum` series; `_created` series left out."""
    families = set()
    for name in series:
        if not name.startswith(prefix) or name.endswith("_created"):
            continue
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        families.add(base if f"{base}_bucket" in series else name)
    return families
