"""The serving pods' /metrics pages, read by the operator while a rollout is analysed.

Straight from each pod (its IP, the HTTP port), not through the Service: every pod's counters are
needed, not one pod's. A pod that does not answer in time is left out of this analysis round.
"""

from __future__ import annotations

import concurrent.futures
import ssl
import urllib.request

from modelkiln.operator.serving import HTTP_PORT

TIMEOUT_SECONDS = 3


def _unverified() -> ssl.SSLContext:
    # The serving certificate names the Service, not a pod IP; the page holds only counters.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _page(url: str, context: ssl.SSLContext | None) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS, context=context) as response:
            return response.read().decode()
    except (OSError, ValueError):
        return None


def fetch(pods: list[dict], *, tls: bool) -> list[str]:
    """The /metrics pages of the Running pods among `pods` that answered."""
    ips = [pod["status"]["podIP"] for pod in pods
           if pod.get("status", {}).get("phase") == "Running" and pod["status"].get("podIP")]
    urls = [f"{'https' if tls else 'http'}://{f'[{ip}]' if ':' in ip else ip}:{HTTP_PORT}/metrics" for ip in ips]
    if not urls:
        return []
    context = _unverified() if tls else None
    with concurrent.futures.ThreadPoolExecutor(min(8, len(urls))) as pool:
        return [page for page in pool.map(lambda url: _page(url, context), urls) if page is not None]
