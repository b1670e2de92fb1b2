"""Optional dependencies: which pip extra brings a missing module, said in one line.

`pip install modelkiln` brings only what every command needs; serving, conversion, object
storage, INT8, the independent verification reference, PyTorch and the operator each come with
an extra (pyproject.toml). A command that meets a missing module names the extra to install
instead of ending in a traceback. Shared by both rooms, so it imports nothing of either.
"""

from __future__ import annotations

# The modules of the optional features, by the extra that brings them.
FEATURE_EXTRAS = {"obstore": "storage", "nncf": "int8", "onnxruntime": "verify", "torch": "torch",
                  "kopf": "operator", "kubernetes": "operator", "celpy": "operator"}
# What serving and conversion import (the serve and runtime extras): missing one, a command
# needs its own extra.
BASE_MODULES = frozenset({"openvino", "grpc", "google", "uvicorn", "httptools", "orjson", "simdjson", "onnx", "PIL"})
COMMAND_EXTRAS = {"serve": "serve", "devices": "serve", "convert": "runtime", "up": "runtime", "operator": "operator"}


def extra_for(error: BaseException, *, command: str) -> str | None:
    """The extra that brings the module `error` found missing in `command`, or None when it is
    not a missing module that an extra brings (a bug, worth its traceback)."""
    if not isinstance(error, ModuleNotFoundError):
        return None
    module = (error.name or "").partition(".")[0]
    if module in FEATURE_EXTRAS:
        return FEATURE_EXTRAS[module]
    return COMMAND_EXTRAS.get(command) if module in BASE_MODULES else None


def needs(what: str, extra: str) -> str:
    """The one line: `what` needs `extra`, and the command that installs it."""
    return f"{what} needs the {extra} extra: pip install 'modelkiln[{extra}]'"
