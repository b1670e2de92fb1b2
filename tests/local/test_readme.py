"""The README's two commands are the ones that work: the first reaches a real prediction, and
CI runs exactly the second."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import signal
import subprocess
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
