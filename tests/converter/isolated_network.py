"""Conversions run inside a private network namespace that holds cloud metadata addresses.

Run as root under `unshare --net --mount` (test_convert_downloads.py does): only a loopback
interface exists, so no packet can leave the machine whatever the converter does. This brings it
up with 169.254.169.254 and fd00:ec2::254 on it, makes metadata.google.internal resolve to
169.254.169.254 (a hosts file bound over /etc/hosts in this mount namespace only), serves the
model on port 80 of both metadata addresses and a redirecting source on 127.0.0.1:8080, runs
`modelkiln convert ARGS` for each case given as JSON on argv[1] ({name: [args, ...]}) and prints
one JSON object: per case its exit code, stderr and what is left in its repository and scratch
directories, and the requests each metadata server received.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

from hostile_sources import HostileServer

METADATA_ADDRESSES = ("169.254.169.254", "fd00:ec2::254")


def isolate(work: pathlib.Path) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in METADATA_ADDRESSES:
        subprocess.run(["ip", "addr", "add", address, "dev", "lo"], check=True)
    hosts = work / "hosts"
    hosts.write_text("127.0.0.1 localhost\n169.254.169.254 metadata.google.internal\n")
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)


def convert(args: list[str], work: pathlib.Path) -> dict:
    repository, scratch = work / "repo", work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "modelkiln.cli", "convert", *args, "--output", str(repository / "m"),
         "--precision", "FP32", "--scratch", str(scratch), "--termination-log", str(work / "log")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "MODELKILN_FETCH_RETRIES": "2", "MODELKILN_FETCH_BACKOFF": "0.05"})
    return {"returncode": result.returncode, "stderr": result.stderr,
            "repository": sorted(p.name for p in (repository / "m").iterdir() if p.name != ".lock")
            if (repository / "m").exists() else [],
            "scratch": sorted(p.name for p in scratch.iterdir())}


def main() -> None:
    cases = json.loads(sys.argv[1])
    with tempfile.TemporaryDirectory() as directory:
        work = pathlib.Path(directory)
        isolate(work)
        servers = {address: HostileServer(address, 80).start() for address in METADATA_ADDRESSES}
        redirecting = HostileServer("127.0.0.1", 8080).start()
        outcomes = {name: convert(args, work / name) for name, args in cases.items()}
        print(json.dumps({"cases": outcomes,
                          "metadataRequests": {a: s.requests for a, s in servers.items()},
                          "redirectingRequests": redirecting.requests}))


if __name__ == "__main__":
    main()
