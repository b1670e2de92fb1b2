"""`modelkiln devices`: the inference devices OpenVINO finds on this machine.

`modelkiln up` asks this in a subprocess before serving, so that a model meant for a GPU or NPU
is refused on a machine without one instead of being moved silently to the CPU.
"""

from __future__ import annotations

import argparse

import openvino as ov


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="modelkiln devices",
        description="List the OpenVINO devices on this machine, one per line with its full name.")
    parser.parse_args(argv)
    core = ov.Core()
    for device in core.available_devices:
        print(f"{device}\t{core.get_property(device, 'FULL_DEVICE_NAME')}")
    return 0
