"""The InferenceModel schema, read from the CRD, enforced without an API server.

The CRD in `crds/` is the single source of truth. The local mode (`modelkiln up`) has no API
server to validate and default what a user wrote, so this module does what the API server does
with the same schema: structural checks (types, enums, required, bounds, unknown fields), the
CEL rules (`x-kubernetes-validations`, evaluated with cel-python) and defaulting. Messages use
the API server's wording, prefixed with the field path, so a mistake reads the same on a laptop
and in a cluster.
"""

from __future__ import annotations

import copy
import functools
import json
import pathlib
import re
from typing import Any

import celpy
import yaml

CRD_FILE = "modelkiln.io_inferencemodels.yaml"
GROUP = "modelkiln.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceModel"
PLURAL = "inferencemodels"

_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float),
               "integer": int}


def crd_path() -> pathlib.Path:
    """The CRD file: packaged next to this module in a wheel, in `crds/` of a checkout."""
    here = pathlib.Path(__file__).resolve().parent
    for candidate in (here / "crds" / CRD_FILE, here.parents[2] / "crds" / CRD_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{CRD_FILE} is neither in {here / 'crds'} nor in the repository's crds/")


@functools.cache
def _crd_text() -> str:
    return crd_path().read_text()


def load_crd() -> dict:
    """The CustomResourceDefinition as a new dict."""
    return yaml.safe_load(_crd_text())


@functools.cache
def _open_api_schema() -> dict:
    crd = load_crd()
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
    return version["schema"]["openAPIV3Schema"]


def with_defaults(obj: dict) -> dict:
    """A new dict: `obj` with the schema's defaults applied, as the API server stores it."""
    result = copy.deepcopy(obj)
    _apply_defaults(result, _open_api_schema())
    return result


def _apply_defaults(value: Any, schema: dict) -> None:
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key, sub in properties.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            sub = properties.get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                _apply_defaults(item, sub)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _apply_defaults(item, schema["items"])


def validate(obj: dict) -> list[str]:
    """Every reason the API server would refuse `obj` (an InferenceModel), one message each.

    Defaults are applied first, as the API server does before validating.
    """
    errors = []
    if obj.get("apiVersion") != API_VERSION:
        errors.append(f"apiVersion: Unsupported value: {_show(obj.get('apiVersion'))}: "
                      f"supported values: {_show(API_VERSION)}")
    if obj.get("kind") != KIND:
        errors.append(f"kind: Unsupported value: {_show(obj.get('kind'))}: supported values: {_show(KIND)}")
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        errors.append("metadata.name: Required value: name or generateName is required")
        return errors
    errors += _check(with_defaults(obj), _open_api_schema(), "")
    return errors


def _check(value: Any, schema: dict, path: str) -> list[str]:
    where = path or "<nil>"
    type_error = _type_error(value, schema, where)
    if type_error:
        return [type_error]
    errors = _bound_errors(value, schema, where)
    if isinstance(value, dict) and path != "metadata":  # the API server checks metadata itself
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{_join(path, key)}: Required value")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                errors += _check(item, properties[key], _join(path, key))
            elif isinstance(extra, dict):
                errors += _check(item, extra, _join(path, key))
            else:
                errors.append(f'unknown field "{_join(path, key)}"')
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += _check(item, schema["items"], f"{where}[{index}]")
    # A rule tripping over a child that is already reported wrong would only repeat the news.
    errors += _rule_errors(value, schema, path, quiet_eval_errors=bool(errors))
    return errors


def _type_error(value: Any, schema: dict, where: str) -> str | None:
    if schema.get("x-kubernetes-int-or-string"):
        expected: tuple[type, ...] = (int, str)
        name = "integer or string"
    elif "type" in schema:
        expected = _JSON_TYPES[schema["type"]]
        expected = expected if isinstance(expected, tuple) else (expected,)
        name = schema["type"]
    else:
        return None
    if isinstance(value, bool) and bool not in expected or not isinstance(value, expected):
        return (f"{where}: Invalid value: {_show(_type_name(value))}: "
                f"{where} in body must be of type {name}: {_show(_type_name(value))}")
    return None


def _bound_errors(value: Any, schema: dict, where: str) -> list[str]:
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_show(v) for v in schema["enum"])
        errors.append(f"{where}: Unsupported value: {_show(value)}: supported values: {supported}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: Invalid value: {_show(value)}: "
                          f"{where} in body should be greater than or equal to {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: Invalid value: {_show(value)}: "
                          f"{where} in body should be less than or equal to {schema['maximum']}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value.encode()) > schema["maxLength"]:
            errors.append(f"{where}: Too long: may not be more than {schema['maxLength']} bytes")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: Invalid value: {_show(value)}: "
                          f"{where} in body should match '{schema['pattern']}'")
    if isinstance(value, list) and "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{where}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
    if isinstance(value, dict) and "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(f"{where}: Too many: {len(value)}: must have at most {schema['maxProperties']} items")
    return errors


def _rule_errors(value: Any, schema: dict, path: str, *, quiet_eval_errors: bool) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            passed = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as exc:
            if quiet_eval_errors:
                continue
            passed, detail = False, f"rule evaluation error: {exc.args[0]}"
        else:
            detail = rule.get("message") or f"failed rule: {rule['rule']}"
        if not passed:
            where = (path + rule.get("fieldPath", "")).lstrip(".") or "<nil>"
            errors.append(f"{where}: Invalid value: {_show(schema.get('type', 'object'))}: {detail}")
    return errors


@functools.cache
def _program(rule: str) -> celpy.Runner:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    for name, kind in (("boolean", bool), ("integer", int), ("number", float), ("string", str),
                       ("array", list), ("object", dict)):
        if isinstance(value, kind):
            return name
    return "null"


def _show(value: Any) -> str:
    """A value the way the API server prints it in an error (Go's %#v for JSON values)."""
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
