"""What may name a model or a version, and how a name a client sent is shown back.

Every protocol hands the model name and version string it received to the repository's
lookups, which check them here, so one place decides what is a malformed name (400) as opposed
to one that is merely not served (404). Anything a client sent is shown in messages and log
lines through `shown`: escaped (a CR/LF cannot forge a log line) and cut (a megabyte name is not
echoed whole into logs, error bodies or gRPC trailers).
"""

from __future__ import annotations

import re

from modelkiln.runtime.errors import InvalidInput

SHOWN_CHARS = 80
# A model is a directory of the repository: a file name has at most 255 bytes (NAME_MAX).
MAX_MODEL_NAME = 255
# ASCII digits only: "²".isdigit() is True but int("²") raises. int64, as TF-Serving and OVMS.
_VERSION = re.compile(r"[0-9]{1,19}\Z")
MAX_VERSION = 2**63 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` with everything escaped, cut to about `limit` characters with an ellipsis."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "..."
    text = repr(value)
    return text if len(text) <= limit + 2 else text[:limit] + "..."


def version_number(text: str) -> int | None:
    """The version a string names (ASCII digits, within int64), or None when it names none."""
    if not _VERSION.match(text):
        return None
    number = int(text)
    return number if number <= MAX_VERSION else None


def check_model_name(name: str) -> None:
    """Refuse a name no model directory can have; a plausible one is looked up (404 if absent)."""
    if not name or len(name) > MAX_MODEL_NAME or _CONTROL.search(name):
        raise InvalidInput(f"model name {shown(name)} ({len(name)} characters) is not valid: "
                           f"expected 1 to {MAX_MODEL_NAME} characters without control "
                           f"characters")


def parse_version(name: str, version: str) -> int:
    """The number of a version a client named; a malformed one is a 400 naming it."""
    number = version_number(version)
    if number is None:
        raise InvalidInput(f"model {shown(name)}: version {shown(version)} is not valid: "
                           f"expected a version number (ASCII digits, at most {MAX_VERSION})")
    return number
