"""Model sources that misbehave: a real http.server that trickles, never ends, lies or redirects.

Used by test_convert_downloads.py on loopback and by isolated_network.py inside a private network
namespace. Paths:
  /model.onnx        the digits model, with its Content-Length
  /drip              announces a megabyte and sends one byte every DRIP_SECONDS
  /endless           no Content-Length: zeros until the client hangs up
  /chunked           chunked transfer encoding: zeros until the client hangs up
  /announces-huge    a Content-Length of a terabyte
  /redirect?to=URL   302 to URL
  /loop              302 to itself
"""

from __future__ import annotations

import http.server
import pathlib
import socket
import ssl
import threading
import time
import urllib.parse

DIGITS = pathlib.Path(__file__).resolve().parents[2] / "examples" / "digits"
MODEL_BYTES = (DIGITS / "model.onnx").read_bytes()
DRIP_SECONDS = 5
ZEROS = bytes(64 * 1024)


class HostileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 tls: tuple[pathlib.Path, pathlib.Path] | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), HostileHandler)
        if tls:     # (certificate, key)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        host, port = self.server_address[:2]
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> HostileServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class HostileHandler(http.server.BaseHTTPRequestHandler):
    server: HostileServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.server.requests.append({"path": self.path, "authorization": self.headers.get("Authorization")})
        self.close_connection = True
        path, _, query = self.path.partition("?")
        try:
            if path == "/model.onnx":
                self.answer(200, {"Content-Length": len(MODEL_BYTES)})
                self.wfile.write(MODEL_BYTES)
            elif path == "/drip":
                self.answer(200, {"Content-Length": 10**6})
                for _ in range(10**6):
                    time.sleep(DRIP_SECONDS)
                    self.wfile.write(b"\0")
                    self.wfile.flush()
            elif path == "/endless":
                self.answer(200, {})
                while True:
                    self.wfile.write(ZEROS)
            elif path == "/chunked":
                self.answer(200, {"Transfer-Encoding": "chunked"})
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(ZEROS), ZEROS))
            elif path == "/announces-huge":
                self.answer(200, {"Content-Length": 10**12})
            elif path == "/redirect":
                self.answer(302, {"Location": urllib.parse.parse_qs(query)["to"][0], "Content-Length": 0})
            elif path == "/loop":
                self.answer(302, {"Location": "/loop", "Content-Length": 0})
            else:
                self.send_error(404)
        except (ConnectionError, ssl.SSLError):
            pass    # the converter hung up: what the endless answers wait for

    def answer(self, status: int, headers: dict) -> None:
        self.send_response(status)
        for name, value in {**headers, "Connection": "close"}.items():
            self.send_header(name, str(value))
        self.end_headers()

    def log_message(self, *args) -> None:
        pass
