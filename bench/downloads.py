"""What the bounded download costs: client CPU per MiB over loopback, side by side, in one run.

The converter streams http(s) sources with http.client, one receive at a time so that the
deadline and the size cap hold while streaming (sources.download). Next to it, with the same
server and file: a plain urllib loop reading 1 MiB at a time (what the converter did before the
limits) and the SHA-256 every source is checked with afterwards. CPU time of this process only:
the server runs in another, so the numbers hold on a busy machine. Run from the repository root:

    PYTHONPATH=runtime:operator python bench/downloads.py [--mib 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Callable

from modelkiln.runtime.conversion import downloads, sources

SERVER = """
import functools, http.server, ssl, sys
directory, port, scheme = sys.argv[1], int(sys.argv[2]), sys.argv[3]
http.server.SimpleHTTPRequestHandler.log_message = lambda *args: None
server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", port), functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory))
if scheme == "https":
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(f"{directory}/cert.pem", f"{directory}/key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def urllib_loop(url: str, destination: pathlib.Path, tls: ssl.SSLContext) -> None:
    with urllib.request.urlopen(url, context=tls) as response, destination.open("wb") as out:
        while chunk := response.read(downloads.CHUNK_BYTES):
            out.write(chunk)


def bounded(url: str, destination: pathlib.Path, tls: ssl.SSLContext) -> None:
    sources.download(url, destination=destination, tls=tls, limits=downloads.DownloadLimits(), progress=io.StringIO())


def serve(directory: pathlib.Path, scheme: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(directory), str(port), scheme])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return server, f"{scheme}://127.0.0.1:{port}/blob.bin"


def cpu_ms_per_mib(runs: dict[str, Callable[[], None]], *, mib: int, rounds: int) -> dict[str, float]:
    """The best CPU time per MiB of each run, taking turns so that a busy spell hits them alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.process_time()
            run()
            best[name] = min(best[name], time.process_time() - started)
    return {name: seconds * 1e3 / mib for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the file served (MiB)")
    parser.add_argument("--rounds", type=int, default=5, help="best of N")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = pathlib.Path(temporary)
        (work / "blob.bin").write_bytes(os.urandom(args.mib << 20))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")],
                       check=True, capture_output=True)
        tls = ssl.create_default_context(cafile=str(work / "cert.pem"))
        out = work / "out"
        out.mkdir()
        sha = cpu_ms_per_mib({"sha256": lambda: sources.sha256_of(work / "blob.bin")}, mib=args.mib,
                             rounds=args.rounds)["sha256"]
        print(f"{args.mib} MiB, best of {args.rounds}; client CPU per MiB; sha256 of the file: {sha:.2f} ms")
        print("scheme  urllib 1 MiB reads  sources.download  download/urllib  download/sha256")
        for scheme in ("http", "https"):
            server, url = serve(work, scheme)
            try:
                times = cpu_ms_per_mib({name: lambda f=f: f(url, out / "blob.bin", tls)
                                        for name, f in (("urllib", urllib_loop), ("bounded", bounded))},
                                       mib=args.mib, rounds=args.rounds)
            finally:
                server.terminate()
                server.wait()
                shutil.rmtree(out)
                out.mkdir()
            print(f"{scheme:6}  {times['urllib']:15.2f} ms  {times['bounded']:13.2f} ms  "
                  f"{times['bounded'] / times['urllib']:14.2f}x  {times['bounded'] / sha:14.2f}x")


if __name__ == "__main__":
    main()
