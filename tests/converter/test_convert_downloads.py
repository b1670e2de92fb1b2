"""Downloads from a hostile source are bounded: size cap, deadline, redirects, metadata addresses.

Each source is a real HTTP server (hostile_sources.py) on loopback; the metadata addresses are
tried only inside a private network namespace (isolated_network.py), from which nothing can leave.
Every refusal is one line naming the redacted URL and the limit, and leaves nothing behind: no
version or staging directory in the repository, no partial download in the scratch space.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from conftest import version_dirs
from hostile_sources import DRIP_SECONDS, HostileServer

FAST_RETRIES = {"MODELKILN_FETCH_RETRIES": "3", "MODELKILN_FETCH_BACKOFF": "0.05"}
CAP_HINT = "raise it with --max-download-bytes N (in a cluster, spec.source.maxBytes)"
LINK_LOCAL_HINT = ("is a link-local or cloud metadata address, refused unless --allow-link-local is given "
                   "(in a cluster, spec.source.allowLinkLocal: true)")


@pytest.fixture
def hostile():
    servers = []

    def start(**kwargs) -> HostileServer:
        servers.append(HostileServer(**kwargs).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def download(convert, repo, tmp_path):
    """`modelkiln convert` of a source, with a scratch directory; checks that a refusal leaves nothing."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def run(source: str, *args: str):
        result = convert("--source", source, "--output", repo / "m", "--precision", "FP32",
                         "--scratch", scratch, *args, env=FAST_RETRIES)
        assert list(scratch.iterdir()) == []
        if result.returncode:
            assert version_dirs(repo / "m") == []
        return result

    return run


def test_a_trickling_source_is_cut_at_the_deadline(download, hostile):
    server = hostile()
    result = download(f"{server.url}/drip", "--download-timeout", str(DRIP_SECONDS + 2))
    assert result.returncode == 1   # a slow source stays slow: not retried by the Job either
    received = re.fullmatch(
        rf"cannot download {server.url}/drip: not finished within the download deadline of {DRIP_SECONDS + 2} s "
        r"\((\d+) bytes received\); give it more time with --download-timeout SECONDS "
        r"\(in a cluster, spec\.source\.timeoutSeconds\)", result.cause)
    assert received and int(received.group(1)) < 10**6


@pytest.mark.parametrize("path", ["/endless", "/chunked"])
def test_a_source_without_a_length_is_cut_at_the_size_cap(download, hostile, path):
    server = hostile()
    result = download(f"{server.url}{path}", "--max-download-bytes", "300000")
    assert result.returncode == 1
    assert result.cause == (f"cannot download {server.url}{path}: more than 300000 bytes received, "
                            f"over the size cap of 300000 bytes; {CAP_HINT}")
    assert len(server.requests) == 1


def test_a_source_announcing_more_than_the_cap_is_refused_before_its_body(download, hostile):
    server = hostile()
    secret = f"{server.url.replace('http://', 'http://reader:pa55word@')}/announces-huge?X-Amz-Signature=s3cr3t"
    result = download(secret)   # the default cap: 20 GiB
    assert result.cause == (f"cannot download http://***@{server.url.removeprefix('http://')}/announces-huge?***: "
                            f"the server announces {10**12} bytes, over the size cap of {20 * 2**30} bytes; "
                            f"{CAP_HINT}")
    assert "pa55word" not in result.stdout + result.stderr and "s3cr3t" not in result.stdout


def test_redirects_are_followed_without_the_credentials(download, hostile):
    target, origin = hostile(), hostile()
    user = origin.url.replace("http://", "http://reader:pa55word@")
    result = download(f"{user}/redirect?to={target.url}/model.onnx", "--format", "onnx")
    assert result.summary["version"] == 1
    assert origin.requests[0]["authorization"] is not None
    assert target.requests == [{"path": "/model.onnx", "authorization": None}]


def test_a_redirect_from_https_to_http_is_refused(download, hostile, self_signed):
    plain, secure = hostile(), hostile(tls=self_signed)
    result = download(f"{secure.url}/redirect?to={plain.url}/model.onnx", "--ca-file", str(self_signed[0]))
    assert result.returncode == 1
    assert result.cause == (f"cannot download {secure.url}/redirect?***: it redirects from https to "
                            f"{plain.url}/model.onnx; a redirect to plain http is refused")
    assert plain.requests == []


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/model.onnx"])
def test_a_redirect_to_another_scheme_is_refused(download, hostile, target):
    server = hostile()
    result = download(f"{server.url}/redirect?to={target}")
    assert result.returncode == 1
    assert result.cause == (f"cannot download {server.url}/redirect?***: it redirects to {target}; "
                            "only http:// and https:// redirects are followed")


def test_a_redirect_loop_ends_after_ten_hops(download, hostile):
    server = hostile()
    result = download(f"{server.url}/loop")
    assert result.cause == f"cannot download {server.url}/loop: more than 10 redirects"
    assert len(server.requests) == 11


def test_limits_must_be_positive(download):
    assert download("http://127.0.0.1:9/m.onnx", "--max-download-bytes", "0").cause == \
        "--max-download-bytes must be at least 1 (got 0)"
    assert download("http://127.0.0.1:9/m.onnx", "--download-timeout", "0").cause == \
        "--download-timeout must be a number of seconds above 0 (got 0.0)"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare(1) for a private network namespace")
def test_link_local_and_metadata_addresses_are_refused_on_every_hop_unless_allowed():
    cases = {
        "literal": ["--source", "http://169.254.169.254/model.onnx"],
        "name": ["--source", "http://metadata.google.internal/model.onnx"],
        "ipv6": ["--source", "http://[fd00:ec2::254]/model.onnx?token=s3cr3t"],
        "redirect": ["--source", "http://127.0.0.1:8080/redirect?to=http://169.254.169.254/model.onnx"],
        "allowed": ["--source", "http://169.254.169.254/model.onnx", "--allow-link-local"],
    }
    scenario = pathlib.Path(__file__).with_name("isolated_network.py")
    # server and converter in one private network namespace: nothing can reach a real address
    run = subprocess.run(["unshare", "--net", "--mount", sys.executable, str(scenario), json.dumps(cases)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    refused = {name: case for name, case in outcome["cases"].items() if name != "allowed"}
    assert {name: case["stderr"].strip() for name, case in refused.items()} == {
        "literal": f"modelkiln convert: cannot download http://169.254.169.254/model.onnx: 169.254.169.254 "
                   f"{LINK_LOCAL_HINT}",
        "name": f"modelkiln convert: cannot download http://metadata.google.internal/model.onnx: "
                f"metadata.google.internal (169.254.169.254) {LINK_LOCAL_HINT}",
        "ipv6": f"modelkiln convert: cannot download http://[fd00:ec2::254]/model.onnx?***: fd00:ec2::254 "
                f"{LINK_LOCAL_HINT}",
        "redirect": f"modelkiln convert: cannot download http://127.0.0.1:8080/redirect?***: it redirects to "
                    f"http://169.254.169.254/model.onnx, and 169.254.169.254 {LINK_LOCAL_HINT}",
    }
    for case in refused.values():
        assert case["returncode"] == 1 and case["repository"] == [] and case["scratch"] == []
    allowed = outcome["cases"]["allowed"]
    assert allowed["returncode"] == 0 and allowed["repository"] == ["1"], allowed["stderr"]
    # the refused ones never reached a metadata server: its only request is the allowed one's
    assert outcome["metadataRequests"] == {"169.254.169.254": [{"path": "/model.onnx", "authorization": None}],
                                           "fd00:ec2::254": []}
    assert [r["path"] for r in outcome["redirectingRequests"]] == [
        "/redirect?to=http://169.254.169.254/model.onnx"]
