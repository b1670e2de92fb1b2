"""Per-model serving settings: command-line defaults, overridden per model by a config file.

The file (JSON or YAML) looks like `{"models": {"digits": {"device": "CPU",
"performanceHint": "LATENCY", "inferencePrecision": "f32", "versionPolicy": {"latest": 1}}}}`.
It is read and checked once at start: a typo fails the start with the key it did not expect.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field, replace

import yaml

from modelkiln.runtime.engine import EngineSettings
from modelkiln.runtime.versions import VersionPolicy

MODEL_KEYS = {"device": "device", "performanceHint": "performance_hint",
              "inferencePrecision": "inference_precision"}


@dataclass(frozen=True)
class ModelSettings:
    engine: EngineSettings = EngineSettings()
    policy: VersionPolicy = VersionPolicy()


@dataclass(frozen=True)
class ServingConfig:
    """The defaults from the flags and the per-model overrides from the config file."""

    defaults: ModelSettings = ModelSettings()
    per_model: dict[str, ModelSettings] = field(default_factory=dict)

    def for_model(self, name: str) -> ModelSettings:
        return self.per_model.get(name, self.defaults)


def load_config(path: pathlib.Path | None, *, defaults: ModelSettings) -> ServingConfig:
    """Read a config file over the defaults; raises ValueError naming the bad key or value."""
    if path is None:
        return ServingConfig(defaults=defaults)
    text = path.read_text()
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: not valid JSON/YAML: {error}") from None
    models = (document or {}).get("models", {}) if isinstance(document, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f'{path}: expected {{"models": {{NAME: {{...}}}}}}')
    per_model = {}
    for name, options in models.items():
        if not isinstance(options, dict):
            raise ValueError(f"{path}: models.{name}: expected a mapping, got {options!r}")
        unknown = set(options) - set(MODEL_KEYS) - {"versionPolicy"}
        if unknown:
            raise ValueError(f"{path}: models.{name}: unknown key(s) {sorted(unknown)}; "
                             f"expected {sorted(MODEL_KEYS) + ['versionPolicy']}")
        engine = replace(defaults.engine, **{MODEL_KEYS[k]: v for k, v in options.items()
                                             if k in MODEL_KEYS})
        policy = (VersionPolicy.parse(options["versionPolicy"]) if "versionPolicy" in options
                  else defaults.policy)
        per_model[name] = ModelSettings(engine=engine, policy=policy)
    return ServingConfig(defaults=defaults, per_model=per_model)
