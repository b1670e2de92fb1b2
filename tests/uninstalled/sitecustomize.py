"""Run at start-up by every Python process that has this directory on PYTHONPATH: the packages
named in MODELKILN_TEST_UNINSTALLED (comma-separated) cannot be imported, as if the extra that
brings them were not installed. Subprocesses inherit it (`up` runs `convert` and `serve`)."""

import os
import sys
from importlib.abc import MetaPathFinder


class Uninstalled(MetaPathFinder):
    def __init__(self, packages: set[str]) -> None:
        self.packages = packages

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.packages:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None     # everything else is found as usual


PACKAGES = {name for name in os.environ.get("MODELKILN_TEST_UNINSTALLED", "").split(",") if name}
if PACKAGES:
    sys.meta_path.insert(0, Uninstalled(PACKAGES))
