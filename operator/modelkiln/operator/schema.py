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
from typing import Any, NamedTuple

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
    if not isinstance(obj, dict):
        return [f"<nil>: Invalid value: {_show(_type_name(obj))}: an InferenceModel must be an object "
                f"with apiVersion, kind, metadata and spec"]
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
    errors += name_errors(metadata["name"])
    obj = with_defaults(obj)
    schema = _open_api_schema()
    unknown = _unknown_fields(obj, schema, "")
    if unknown:
        # The API server's strict decoding refuses unknown fields before validating anything.
        return errors + unknown
    problems = _check(obj, schema, "")
    errors += [problem.message for problem in problems]
    if any(problem.blocking for problem in problems):
        # Like the API server: rules may rely on types, bounds and required fields; with one of
        # those broken they are not run, and it says so.
        return errors + [RULES_SKIPPED]
    return errors + _rule_errors(obj, schema, "")


# The API server's own check of metadata.name (IsDNS1123Subdomain), with its words: local mode
# uses the name as a directory under --repository, so "../x" must be refused here too.
DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_DNS1123_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN + r"\Z")
DNS1123_SUBDOMAIN_MAX = 253


def name_errors(name: Any) -> list[str]:
    """Why the API server would refuse `name` as metadata.name, one message each."""
    if not isinstance(name, str):
        go_type = {"integer": "number", "boolean": "bool"}.get(_type_name(name), _type_name(name))
        return [f"metadata.name: Invalid value: {_show(name)}: cannot unmarshal {go_type} "
                f"into Go struct field ObjectMeta.metadata.name of type string"]
    errors = []
    where = f"metadata.name: Invalid value: {_show(name)}: "
    if len(name) > DNS1123_SUBDOMAIN_MAX:
        errors.append(f"{where}must be no more than {DNS1123_SUBDOMAIN_MAX} characters")
    if not _DNS1123_SUBDOMAIN.match(name):
        errors.append(f"{where}a lowercase RFC 1123 subdomain must consist of lower case "
                      f"alphanumeric characters, '-' or '.', and must start and end with an "
                      f"alphanumeric character (e.g. 'example.com', regex used for validation "
                      f"is '{DNS1123_SUBDOMAIN}')")
    return errors


RULES_SKIPPED = ("<nil>: Invalid value: null: some validation rules were not checked because the object "
                 "was invalid; correct the existing errors to complete validation")


class _Problem(NamedTuple):
    message: str
    blocking: bool  # the API server skips the CEL rules after such an error


def _children(value: Any, schema: dict, path: str):
    """(child, its schema or None when unknown, its path) for each child of `value`."""
    if isinstance(value, dict) and path != "metadata":  # the API server checks metadata itself
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            yield item, sub, _join(path, key)
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield item, schema["items"], f"{path}[{index}]"


def _unknown_fields(value: Any, schema: dict, path: str) -> list[str]:
    found = []
    for item, sub, item_path in _children(value, schema, path):
        found += _unknown_fields(item, sub, item_path) if sub is not None else [f'unknown field "{item_path}"']
    return found


def _check(value: Any, schema: dict, path: str) -> list[_Problem]:
    where = path or "<nil>"
    type_error = _type_error(value, schema, where)
    if type_error:
        return [_Problem(type_error, blocking=True)]
    problems = _bound_problems(value, schema, where)
    if isinstance(value, dict) and path != "metadata":
        problems += [_Problem(f"{_join(path, key)}: Required value", blocking=True)
                     for key in schema.get("required", []) if key not in value]
    for item, sub, item_path in _children(value, schema, path):
        problems += _check(item, sub, item_path)
    return problems


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


def _bound_problems(value: Any, schema: dict, where: str) -> list[_Problem]:
    problems = []

    def add(message: str, *, blocking: bool = False) -> None:
        problems.append(_Problem(f"{where}: {message}", blocking))

    if "enum" in schema and value not in schema["enum"]:
        add(f"Unsupported value: {_show(value)}: supported values: {', '.join(_show(v) for v in schema['enum'])}",
            blocking=True)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            add(f"Invalid value: {_show(value)}: {where} in body should be greater than or equal to {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            add(f"Invalid value: {_show(value)}: {where} in body should be less than or equal to {schema['maximum']}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value.encode()) > schema["maxLength"]:
            add(f"Too long: may not be more than {schema['maxLength']} bytes", blocking=True)
        if "pattern" in schema and not re.search(schema["pattern"], value):
            add(f"Invalid value: {_show(value)}: {where} in body should match '{schema['pattern']}'")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            add(f"Invalid value: {len(value)}: {where} in body should have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            add(f"Too many: {len(value)}: must have at most {schema['maxItems']} items", blocking=True)
    if isinstance(value, dict) and "maxProperties" in schema and len(value) > schema["maxProperties"]:
        add(f"Too many: {len(value)}: must have at most {schema['maxProperties']} items", blocking=True)
    return problems


def _rule_errors(value: Any, schema: dict, path: str) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            passed = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as exc:
            passed, detail = False, f"{exc.args[0]} evaluating rule: {rule.get('message') or rule['rule']}"
        else:
            detail = rule.get("message") or f"failed rule: {rule['rule']}"
        if not passed:
            where = (path + rule.get("fieldPath", "")).lstrip(".") or "<nil>"
            errors.append(f"{where}: Invalid value: {_show(schema.get('type', 'object'))}: {detail}")
    for item, sub, item_path in _children(value, schema, path):
        errors += _rule_errors(item, sub, item_path)
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
