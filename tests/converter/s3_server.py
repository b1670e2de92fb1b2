"""A real S3 server for tests: moto's standalone server (`python -m moto.server`) in its own process.

With `auth=True` it checks signatures and IAM policies like S3 does (moto's IAM authentication,
enabled after the few unauthenticated calls that create the reader's user and key); without,
signatures are not checked, but an anonymous request is allowed only by a bucket policy that
allows it (`allow_anonymous_reads`): a public bucket. `FlakyProxy` stands in front of
one and answers the first GETs of objects with 503, as an overloaded S3 does.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import boto3

# Unauthenticated calls before moto enforces IAM: the calls of `S3Server.start` that make the user.
SETUP_CALLS = 3


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class S3Server:
    def __init__(self, *, host: str = "127.0.0.1", auth: bool = False) -> None:
        self.host, self.auth = host, auth
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.process: subprocess.Popen | None = None
        self.key_id, self.secret = "setup", "setup"     # any key works until IAM is enforced

    def start(self) -> S3Server:
        env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS)} if self.auth else {})}
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"moto server on {self.url} did not start") from None
                time.sleep(0.1)
        if self.auth:
            iam = boto3.client("iam", **self.client_options())
            iam.create_user(UserName="reader")
            key = iam.create_access_key(UserName="reader")["AccessKey"]
            iam.put_user_policy(UserName="reader", PolicyName="s3", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
            self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        return self

    def client_options(self) -> dict:
        return {"endpoint_url": self.url, "aws_access_key_id": self.key_id,
                "aws_secret_access_key": self.secret, "region_name": "us-east-1"}

    def s3(self):
        return boto3.client("s3", **self.client_options())

    def put(self, bucket: str, objects: dict[str, bytes]) -> None:
        s3 = self.s3()
        if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        for key, body in objects.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)

    def allow_anonymous_reads(self, bucket: str) -> None:
        """The bucket policy of a public bucket: anyone may get its objects and list it."""
        self.s3().put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
             "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}))

    def credentials(self) -> dict[str, str]:
        """The variables a Secret (or a shell) gives the converter to read this server."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret}

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(timeout=30)


class FlakyProxy(http.server.ThreadingHTTPServer):
    """Forwards to `target` (host, port), but answers the first `failures` object GETs with 503,
    and cuts the bodies of the next `cuts` ones in half (the connection dies)."""

    daemon_threads = True

    def __init__(self, target: tuple[str, int], *, failures: int = 0, cuts: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.target, self.failures, self.cuts = target, failures, cuts
        self.answered: list[int] = []
        self.ranges: list[str | None] = []      # the Range header of each object GET
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: FlakyProxy
    protocol_version = "HTTP/1.1"

    def forward(self) -> None:
        if self.command == "GET" and "?" not in self.path and self.server.failures > 0:
            self.server.failures -= 1
            self.reply(503, {"Content-Type": "application/xml"},
                       b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(*self.server.target, timeout=60)
        upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
        response = upstream.getresponse()
        object_get = self.command == "GET" and "?" not in self.path
        if object_get:
            self.server.ranges.append(self.headers.get("Range"))
        cut = object_get and self.server.cuts > 0
        self.server.cuts -= cut
        self.reply(response.status, dict(response.getheaders()), response.read(), cut=cut)
        upstream.close()

    def reply(self, status: int, headers: dict, body: bytes, cut: bool = False) -> None:
        self.server.answered.append(status)
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(name, value)
        # a HEAD's Content-Length is the object's size, which the client reads
        length = headers.get("Content-Length", "0") if self.command == "HEAD" else str(len(body))
        self.send_header("Content-Length", length)
        self.end_headers()
        if cut:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = forward  # noqa: N815 - the http.server API

    def log_message(self, *args) -> None:
        pass
