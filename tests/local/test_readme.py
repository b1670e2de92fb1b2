"""The README's two commands are the ones that work: the first reaches a real prediction, and
CI runs exactly the second."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands_and_ci_runs_the_second():
    commands = readme_commands()
    assert len(commands) == 2
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == [commands[1]]


def test_first_command_prints_real_predictions_while_serving(tmp_path):
    env = {**os.environ, "MODELKILN_REPOSITORY": str(tmp_path / "repository")}
    process = subprocess.Popen(shlex.split(readme_commands()[0]), cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    deadline = time.monotonic() + 600
    try:
        while "Press Ctrl-C" not in "".join(lines):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        output = "".join(lines)
        correct = re.search(r"(\d+)/(\d+) correct", output)
        assert correct, output
        assert int(correct.group(1)) / int(correct.group(2)) > 0.9
        assert re.search(r"input  0: predicted \d   true \d", output)
    finally:
        process.send_signal(signal.SIGTERM)  # `./dev` execs `modelkiln up`
        assert process.wait(timeout=60) == 0


def readme_block_after(heading: str, fence: str) -> str:
    section = (ROOT / "README.md").read_text().split(heading, 1)[1]
    return re.search(rf"```{fence}\n(.*?)```", section, re.S).group(1)


def test_calling_the_endpoint_examples_work_as_written(start_up, tmp_path):
    """Every curl, predict and tritonclient line of 'Calling the endpoint', run for real."""
    up = start_up("-f", str(ROOT / "examples" / "digits" / "fp32.yaml"),
                  repository=tmp_path / "repository")
    try:
        up.wait_for("Serving.")
        ports = {"localhost:8080": f"localhost:{up.http_port}",
                 "localhost:8081": f"localhost:{up.grpc_port}"}
        shell, python = (readme_block_after("## Calling the endpoint", fence)
                         for fence in ("sh", "python"))
        for old, new in ports.items():
            shell, python = shell.replace(old, new), python.replace(old, new)
        env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", shell], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert '"model_name":"digits"' in ran.stdout and '"predictions"' in ran.stdout
        assert '"ready":true' in ran.stdout and "row 0: argmax" in ran.stdout
        ran = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True,
                             timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.count(".") >= 10  # ten probabilities
    finally:
        assert up.stop() == 0
