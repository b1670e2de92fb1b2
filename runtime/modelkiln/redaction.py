"""URIs as they may be shown: without credentials and without presigned signatures.

A model's URI may carry `user:password@` or a query string holding a signature (a presigned
object-store URL). Both the converter and the operator show URIs (log lines, causes, the model's
status and Events, `modelkiln up`), so both use these functions; this module imports nothing of
either room.
"""

from __future__ import annotations

import re
import urllib.parse

# A URI inside free text: a scheme, `://`, then up to whitespace or a quote, without the
# punctuation that ends a sentence or a clause after it ("cannot download URI: ...").
_URI_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>:;,.)]")


def redacted(uri: str) -> str:
    """`uri` without user:password@ (shown as ***@) and without its query string (shown as ?***)."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", parts.fragment))


def scrubbed(text: str) -> str:
    """`text` with every URI in it redacted: for messages whose words came from elsewhere."""
    return _URI_IN_TEXT.sub(lambda match: redacted(match.group()), text)
