"""One redaction rule for URLs, used in every message, MLflow param and tag, report and record.

A URL may carry secrets in two places: its user information (``user:password@``) and its query string
(signed URLs: ``X-Amz-Signature=...``, ``token=...``). Both are dropped wherever a URL is shown or stored;
the secret itself stays only in the setting or environment variable that holds it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()]+")


def redact_url(url: str) -> str:
    """``url`` without user information, query string or fragment; text that is not a URL is unchanged."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # an unparsable netloc: keep only what cannot hold a secret
        return url.split("://", 1)[0] + "://(redacted)"
    if not (parts.username or parts.password or parts.query or parts.fragment):
        return url
    netloc = (parts.hostname or "") + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (error messages quote URLs)."""
    return _URL.sub(lambda match: redact_url(match.group(0)), text)
