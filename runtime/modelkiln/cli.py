"""The `modelkiln` command: a thin dispatcher over the subcommands.

Each subcommand lives in its own room (control plane or data plane) and owns its argument
parser, so `modelkiln serve --help` explains every option. They are imported only when run:
the operator image has no OpenVINO, and `modelkiln --help` stays instant.
"""

from __future__ import annotations

import importlib
import sys

from modelkiln import extras, telemetry

# name -> (module with `main(argv) -> int`, one-line summary)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("modelkiln.operator.local", "convert and serve InferenceModel YAML on this machine"),
    "convert": ("modelkiln.runtime.conversion.convert", "convert a model to OpenVINO IR and publish a version"),
    "serve": ("modelkiln.runtime.serving.serve", "serve a model repository (KServe v2, TF-Serving, SageMaker)"),
    "predict": ("modelkiln.runtime.predict", "send an input to a running endpoint and print the result"),
    "devices": ("modelkiln.runtime.devices", "list the inference devices OpenVINO finds on this machine"),
    "operator": ("modelkiln.operator.main", "run the Kubernetes operator"),
}


def usage() -> str:
    lines = ["usage: modelkiln COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    lines += ["", "Run `modelkiln COMMAND --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"modelkiln: unknown command {name!r}; expected one of: {', '.join(SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    telemetry.off()  # before a subcommand imports openvino or nncf
    try:
        return importlib.import_module(SUBCOMMANDS[name][0]).main(rest)
    except ModuleNotFoundError as error:
        extra = extras.extra_for(error, command=name)
        if extra is None:
            raise
        print(extras.needs(f"modelkiln {name}", extra), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
