"""The two rooms stay apart: the operator never pulls in OpenVINO, the runtime never kopf."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = pathlib.Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken" in result.stdout


def test_cli_lists_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "modelkiln.cli", "--help"],
                            capture_output=True, text=True, check=True)
    for name in ("up", "convert", "serve", "predict", "operator"):
        assert f"  {name} " in result.stdout


def test_unknown_subcommand_is_refused_with_the_choices():
    result = subprocess.run([sys.executable, "-m", "modelkiln.cli", "deploy"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown command 'deploy'" in result.stderr and "serve" in result.stderr
