"""`modelkiln COMMAND --help` explains every option it lists."""

import re
import subprocess
import sys

import pytest

from modelkiln.cli import SUBCOMMANDS


def options_without_help(text: str) -> list[str]:
    """Option lines with no explanation on the same line nor an indented line under them."""
    lines = text.splitlines()
    missing = []
    for line, following in zip(lines, lines[1:] + [""]):
        if re.match(r"^  -", line) and not re.match(r"^  -\S.*?\S {2,}\S", line) \
                and not re.match(r"^ {6,}\S", following):
            missing.append(line.strip())
    return missing


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_option_is_explained(command):
    result = subprocess.run([sys.executable, "-m", "modelkiln.cli", command, "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: modelkiln {command}")
    assert options_without_help(result.stdout) == []
