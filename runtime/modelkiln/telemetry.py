"""No telemetry, from any ModelKiln process.

OpenVINO's model conversion API (ovc, which `import openvino` loads) and NNCF report usage to
Google Analytics through the `openvino_telemetry` package unless the user opted out: on by
default, with a client ID written to ~/intel, and each event posted from a process forked off a
worker thread (one of those crashed inside pytest). Its only opt-out is a consent file in $HOME,
which a pod's emptyDir HOME loses, and `opt_in_out --opt_out` itself posts an event. When the
package cannot be imported, both fall back to their built-in no-op stubs; `off()` makes it so.
"""

from __future__ import annotations

import sys

PACKAGE = "openvino_telemetry"


def off() -> None:
    """Make `openvino_telemetry` unimportable in this process. Call it before anything imports
    openvino or nncf: once imported, the package has already been consulted."""
    if sys.modules.get(PACKAGE) is not None:
        raise RuntimeError(f"{PACKAGE} was imported before modelkiln.telemetry.off(): "
                           "call it before importing openvino or nncf")
    sys.modules[PACKAGE] = None
